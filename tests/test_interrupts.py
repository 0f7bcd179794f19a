"""Stopping a run: SIGINT, SIGTERM and a write that fails (disk full) stop it promptly and cleanly.

Clean means: the summary is printed, the exit code says why (130, 143, 1), no ``*.partial``
file is left, every PNG present decodes completely, and the manifest is valid JSON (or, when the
disk refuses it too, the previous run's manifest is left as it was).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_MODEL_SOURCE, record_of
from PIL import Image
from typer.testing import CliRunner

import featviz.sinks.layout
from featviz.cli.app import app

# A model whose forward takes 0.1 s: the run lasts seconds whatever the machine, and the main
# thread spends most of it inside the model, where an interrupt is most likely to land.
SLOW_MODEL_SOURCE = TINY_MODEL_SOURCE.replace(
    "    def forward(self, x):\n",
    "    def forward(self, x):\n        import time\n\n        time.sleep(0.1)\n",
)
IMAGES = 40
SUMMARY = (
    r"(interrupted: )?(?P<done>\d+) done, (?P<failed>\d+) failed, 0 skipped"
    r"(, (?P<left>\d+) not done)? in \d+\.\d s "
    r"\((\d+\.\d\d images/s|\d+\.\d s/image)\); outputs in out; manifest "
)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of small photos and the slow model, in the working folder."""
    monkeypatch.chdir(tmp_path)
    assert "time.sleep(0.1)" in SLOW_MODEL_SOURCE
    Path("slow_model.py").write_text(SLOW_MODEL_SOURCE)
    Path("tiny_model.py").write_text(TINY_MODEL_SOURCE)
    Path("in").mkdir()
    for index in range(IMAGES):
        Image.new("RGB", (48, 36), (index * 6, 100, 200 - index * 5)).save(f"in/{index:02d}.png")
    return tmp_path


def assert_clean(out: Path) -> dict:
    """No partial file, every PNG complete, every record's outputs there; returns the manifest."""
    for folder, _, names in os.walk(out):
        for name in names:
            assert not name.endswith(".partial"), f"{folder}/{name}"
            if name.endswith(".png"):
                with Image.open(Path(folder) / name) as image:
                    image.load()
    for record in out.glob("records/*/*/cam-*.json"):
        assert all(Path(output).exists() for output in json.loads(record.read_text())["outputs"])
    manifest = json.loads((out / "manifest.json").read_text())
    for image in manifest["images"]:  # what the manifest says was done is on disk
        assert bool(record_of(out, Path(image["input"]).stem)) == (image["error"] is None)
    return manifest


def assert_accounted(out: Path, manifest: dict) -> None:
    """Every input is in exactly one of the manifest's lists, and what it counts as done is
    exactly what has a record on disk: nothing finished goes uncounted."""
    counts = manifest["counts"]
    recorded = len(list(out.glob("records/*/*/cam-*.json")))
    assert counts["done"] == recorded, (counts, recorded)
    listed = [image["input"] for image in manifest["images"]]
    listed += manifest["cut_off"] + manifest["not_attempted"]
    assert sorted(listed) == [f"in/{index:02d}.png" for index in range(IMAGES)]
    assert counts["cut_off"] == len(manifest["cut_off"])
    assert counts["not_attempted"] == len(manifest["not_attempted"]) > 0


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_promptly_and_cleanly(
    workspace: Path, signum: signal.Signals, code: int
) -> None:
    command = [
        sys.executable,
        "-m",
        "featviz",
        "cam",
        "-m",
        "slow_model.py:build",
        "--input-size",
        "32",
        "--batch-size",
        "2",
        "in",
        "-o",
        "out",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    watchdog = threading.Timer(60, process.kill)  # never hang the test run
    watchdog.start()
    try:
        first = process.stdout.readline()
        assert first.startswith("in/00.png: class "), process.stderr.read()
        process.send_signal(signum)
        signalled = time.perf_counter()
        process.wait(timeout=30)
        stopped_after = time.perf_counter() - signalled
        rest, stderr = process.stdout.read(), process.stderr.read()
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == code, stderr
    assert stopped_after < 5, f"took {stopped_after:.1f} s to stop"
    [summary] = stderr.splitlines()  # the summary and nothing else: no traceback
    match = re.fullmatch(SUMMARY + r"out/manifest\.json", summary)
    assert match and summary.startswith("interrupted: "), summary
    done = int(match["done"])
    printed = 1 + len(rest.splitlines())
    assert printed <= done < IMAGES and int(match["left"]) == IMAGES - done
    manifest = assert_clean(workspace / "out")
    assert manifest["interrupted"] is True
    assert manifest["counts"]["done"] == done
    # Issue 21.4: the manifest said done: 4 while 8 records existed (writes running when the
    # signal came finished after the tally had stopped counting).
    reason = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
    assert manifest["outcome"] == {"status": "interrupted", "reason": reason}
    assert_accounted(workspace / "out", manifest)
    gallery = (workspace / "out" / "gallery" / "data.js").read_text()
    assert gallery.count('"name":') == done
    assert (workspace / "out" / "index.html").is_file()


def test_sigterm_while_waiting_for_decodes_stops_and_restores_the_handler(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: the main thread waits in a future's result() for slow decodes when the
    signal comes (sent from a decode thread, once the run is under way)."""
    import featviz.inputs.decode

    real_decode = featviz.inputs.decode.decode
    decodes = iter(range(IMAGES))
    signalled: list[float] = []

    def slow_decode(*args: object, **kwargs: object):
        if next(decodes) == 6:
            signalled.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(featviz.inputs.decode, "decode", slow_decode)
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, record)
    try:
        result = CliRunner().invoke(
            app,
            [
                "cam",
                "-m",
                "tiny_model.py:build",
                "--input-size",
                "32",
                "--batch-size",
                "2",
                "in",
                "-o",
                "out",
            ],
        )
        stopped_after = time.perf_counter() - signalled[0]
        assert signal.getsignal(signal.SIGTERM) is record  # featviz gave it back
        os.kill(os.getpid(), signal.SIGTERM)  # and it is the one that runs now
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 143, result.stderr
    assert stopped_after < 3, f"took {stopped_after:.1f} s"  # 40 images take 6 s
    assert re.fullmatch(SUMMARY + r"out/manifest\.json", result.stderr.strip())
    assert result.stderr.startswith("interrupted: ")
    assert received == [signal.SIGTERM]
    assert assert_clean(workspace / "out")["interrupted"] is True


# --- write errors ---------------------------------------------------------------------------


class FailingDisk:
    """``open`` for featviz.sinks.layout: after ``allowed`` writes every file written fails halfway
    with ``error``, as a full disk would (the first half of the bytes does reach the file);
    with ``pictures_only``, only PNG files fail (the manifest still fits)."""

    def __init__(self, allowed: int, error: int, pictures_only: bool = False) -> None:
        self.allowed = allowed
        self.error = error
        self.pictures_only = pictures_only
        self.lock = threading.Lock()

    def fails(self, file) -> bool:
        """featviz.sinks.layout opens its temporaries' descriptors: which file is it?"""
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else str(file)
        return not self.pictures_only or ".png." in name

    def __call__(self, file, mode: str = "r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115
        if "w" not in mode or not self.fails(file):
            return handle
        with self.lock:
            self.allowed -= 1
            failing = self.allowed < 0
        return _HalfWrite(handle, self.error) if failing else handle


class _HalfWrite:
    def __init__(self, handle, error: int) -> None:
        self.handle = handle
        self.error = error

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize(
    ("error", "reason"), [(errno.ENOSPC, "the disk is full"), (errno.EIO, "Input/output error")]
)
def test_a_write_error_names_the_file_and_stops_cleanly(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, error: int, reason: str
) -> None:
    args = [
        "cam",
        "-m",
        "tiny_model.py:build",
        "--input-size",
        "32",
        "--batch-size",
        "2",
        "in",
        "-o",
        "out",
        "--no-gallery",  # the file layout's writes only: the failing one is counted
    ]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = Path("out/manifest.json").read_bytes()
    with monkeypatch.context() as disk:
        disk.setattr(
            featviz.sinks.layout, "open", FailingDisk(allowed=9, error=error), raising=False
        )
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    summary, failure = result.stderr.splitlines()
    match = re.fullmatch(
        SUMMARY + rf"not written \(cannot write 'out/runs/[^']+-cam-\d+\.json': {reason}\)",
        summary,
    )
    assert match and int(match["done"]) < IMAGES, summary
    assert re.fullmatch(
        r"Error: cannot write 'out/(records/)?tiny_model/\d\d/"
        rf"(cam-[0-9a-f]+\.json|cam/gradcam/features/\d\.png)': {reason}",
        failure,
    ), failure
    assert Path("out/manifest.json").read_bytes() == before  # the last good one, untouched
    assert_clean(workspace / "out")


def test_a_full_disk_is_in_the_manifest_with_what_was_never_attempted(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21.4: on a full disk the manifest said interrupted: false, done: 1 and no error,
    though 39 inputs were never tried."""
    disk = FailingDisk(allowed=3, error=errno.ENOSPC, pictures_only=True)
    monkeypatch.setattr(featviz.sinks.layout, "open", disk, raising=False)
    args = ["cam", "-m", "tiny_model.py:build", "--input-size", "32", "--batch-size", "2"]
    result = CliRunner().invoke(app, [*args, "in", "-o", "out", "--no-gallery"])
    assert result.exit_code == 1
    manifest = json.loads(Path("out/manifest.json").read_text())
    assert manifest["interrupted"] is False
    assert manifest["outcome"]["status"] == "stopped"
    picture = r"'out/tiny_model/\d\d/cam/gradcam/features/\d\.png'"
    assert re.fullmatch(f"cannot write {picture}: the disk is full", manifest["outcome"]["reason"])
    failures = [image["error"] for image in manifest["images"] if image["error"]]
    assert failures and all(
        re.fullmatch(rf"in/\d\d\.png: cannot write {picture}: the disk is full", failure)
        for failure in failures
    ), failures
    assert manifest["counts"]["done"] == 3 and manifest["counts"]["failed"] == len(failures)
    assert_accounted(workspace / "out", manifest)


def test_a_manifest_that_cannot_be_written_fails_the_run(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The folder's marker, the model folder's two claims and 2 images × (overlay + record) = 7
    # writes succeed, the run's manifest fails
    monkeypatch.setattr(
        featviz.sinks.layout, "open", FailingDisk(allowed=7, error=errno.ENOSPC), raising=False
    )
    result = CliRunner().invoke(
        app,
        [
            "cam",
            "-m",
            "tiny_model.py:build",
            "--input-size",
            "32",
            "in/00.png",
            "in/01.png",
            "-o",
            "out",
            "--quiet",
            "--no-gallery",
        ],
    )
    assert result.exit_code == 1
    [error] = result.stderr.splitlines()
    assert re.fullmatch(
        r"Error: cannot write 'out/runs/[^']+-cam-\d+\.json': the disk is full", error
    )
    assert not Path("out/manifest.json").exists()
    assert not [name for name in os.listdir("out") if name.endswith(".partial")]


def test_a_bug_mid_run_still_writes_the_manifest_and_the_summary(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featviz.run.jobs.cam import CamJob

    real_process = CamJob.process
    batches = iter(range(IMAGES))

    def failing_on_the_third_batch(self, batch, inputs):
        if next(batches) == 2:
            raise ValueError("a bug")
        return real_process(self, batch, inputs)

    monkeypatch.setattr(CamJob, "process", failing_on_the_third_batch)
    result = CliRunner().invoke(
        app,
        [
            "cam",
            "-m",
            "tiny_model.py:build",
            "--input-size",
            "32",
            "--batch-size",
            "2",
            "in",
            "-o",
            "out",
        ],
    )
    assert result.exit_code == 1
    summary, error, hint = result.stderr.splitlines()
    match = re.fullmatch(SUMMARY + r"out/manifest\.json", summary)
    assert match and not summary.startswith("interrupted"), summary
    assert error == "Error: internal error: ValueError: a bug"
    assert hint == "Hint: rerun with FEATVIZ_DEBUG=1 for the traceback, and please report it"
    manifest = assert_clean(workspace / "out")
    assert manifest["counts"]["done"] == int(match["done"]) <= 4  # two batches of two went well


def test_a_signal_inside_a_shielded_block_waits_for_its_end() -> None:
    from featviz.run.interrupts import Terminated, handled, shielded

    reached_end = False
    with handled(), pytest.raises(Terminated), shielded():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler has run by now, and only noted the signal
        reached_end = True
    assert reached_end
    with handled(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # outside a shield the signal raises at once


def test_a_run_logged_to_a_file_says_it_is_alive(workspace: Path) -> None:
    """Issue 21.15: with stderr not a terminal, a long run wrote nothing for minutes."""
    result = subprocess.run(
        [sys.executable, "-m", "featviz", "cam", "-m", "slow_model.py:build", "--input-size",
         "32", "--batch-size", "2", "in", "-o", "out"],
        capture_output=True, text=True, env={**os.environ, "FEATVIZ_PROGRESS_EVERY": "0.5"},
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    *lines, summary = result.stderr.splitlines()
    assert re.fullmatch(SUMMARY + r"out/manifest\.json", summary), summary
    assert len(lines) >= 2, lines
    progress = (
        r"progress: (?P<done>\d+)/40 images \(\d+ %\), \d+\.\d\d images/s, \d+ s in"
        r"(, about \d+ s left)?"
    )
    assert all(re.fullmatch(progress, line) for line in lines), lines
    done = [int(re.fullmatch(progress, line)["done"]) for line in lines]
    assert done == sorted(done) and done[-1] > done[0]


def test_slow_runs_count_seconds_per_image() -> None:
    from featviz.sinks.manifest import speed

    assert speed(3, 10.0) == "3.3 s/image"
    assert speed(10, 5.0) == "2.00 images/s"
    assert speed(0, 5.0) == "0.00 images/s"
