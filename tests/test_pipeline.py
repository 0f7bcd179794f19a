"""The streaming engine and the disk: bounded memory, batching, atomic writes, resumability."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path, PurePath

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.errors import InputError, RunError
from featviz.inputs.discover import ImageSource
from featviz.inputs.loaded import LoadedImage
from featviz.run.pipeline import PipelineConfig, PipelineStats, run
from featviz.sinks.layout import write_atomic
from featviz.sinks.results import ImageResult


class FakeJob:
    """Loads 'images' whose shape depends on their number; records every batch."""

    def __init__(self, shapes: int = 3, fail_every: int = 0) -> None:
        self.shapes = shapes
        self.fail_every = fail_every
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def finished(self, source: ImageSource) -> ImageResult | None:
        return None

    def load(self, source: ImageSource) -> LoadedImage:
        number = int(source.path.name)
        if self.fail_every and number % self.fail_every == 0:
            raise InputError(f"{number}: broken")
        return LoadedImage(source, np.zeros(1), np.zeros((3, 8, 8 + number % self.shapes)))

    def assemble(self, batch: list[LoadedImage]) -> None:
        return None

    def process(self, batch: list[LoadedImage], inputs: None):
        assert len({item.tensor.shape for item in batch}) == 1  # one shape per batch
        self.batches.append([item.source.path.name for item in batch])
        return [
            lambda item=item: ImageResult(item.source, outputs=[item.source.path.name])
            for item in batch
        ]


def _sources(count: int):
    for number in range(count):
        yield ImageSource(
            path=Path(str(number)), relative=PurePath(str(number)), display=str(number)
        )


@pytest.mark.parametrize("count", [50, 1000])
def test_images_in_flight_stay_bounded_whatever_the_input_length(count: int) -> None:
    config = PipelineConfig(batch_size=4)
    stats = PipelineStats()
    job = FakeJob()
    results = list(run(job, _sources(count), config, stats))
    assert sorted(int(r.source.path.name) for r in results) == list(range(count))
    assert stats.max_in_flight <= config.max_in_flight
    assert stats.in_flight == 0
    assert stats.largest_batch == 4
    assert sum(len(b) for b in job.batches) == count


class _AssemblyWatch(FakeJob):
    """Every batch's input is its images' names, put together by ``assemble``; the model's
    work on a batch waits (up to 10 s) until the next batch's input has been assembled."""

    def __init__(self) -> None:
        super().__init__(shapes=1)
        self.assembled: list[threading.Event] = [threading.Event() for _ in range(6)]
        self.threads: set[str] = set()
        self.ahead: list[bool] = []

    def assemble(self, batch: list[LoadedImage]) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.assembled[int(batch[0].source.path.name) // 4].set()
        return [item.source.path.name for item in batch]

    def process(self, batch: list[LoadedImage], inputs: list[str]):
        assert inputs == [item.source.path.name for item in batch]
        number = int(inputs[0]) // 4
        if number + 1 < len(self.assembled):
            self.ahead.append(self.assembled[number + 1].wait(timeout=10))
        return super().process(batch, inputs)


def test_the_next_batch_is_assembled_on_its_own_thread_while_one_runs() -> None:
    """Stacking a batch's tensors (and moving them to a GPU) costs the model's thread about
    a millisecond a batch: a thread of its own does it for batch n + 1 while batch n runs."""
    job = _AssemblyWatch()
    results = list(run(job, _sources(24), PipelineConfig(batch_size=4)))
    assert sorted(int(r.source.path.name) for r in results) == list(range(24))
    assert job.batches == [[str(n) for n in range(b, b + 4)] for b in range(0, 24, 4)]
    assert job.ahead == [True] * 5
    assert job.threads and job.threads == {"featviz-assemble_0"}


def test_failed_loads_are_results_and_the_rest_goes_on() -> None:
    results = list(run(FakeJob(fail_every=5), _sources(20), PipelineConfig(batch_size=3)))
    errors = sorted(r.error for r in results if r.error)
    assert errors == sorted(f"{n}: broken" for n in range(0, 20, 5))
    assert sum(1 for r in results if not r.error) == 16


def test_the_stream_is_consumed_lazily() -> None:
    pulled: list[int] = []

    def counting():
        for source in _sources(10_000):
            pulled.append(1)
            yield source

    stream = run(FakeJob(), counting(), PipelineConfig(batch_size=2))
    next(stream)
    assert len(pulled) < 50
    stream.close()


def test_write_failure_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "deep" / "out.png"
    real_open = open

    class FullDisk:
        def __init__(self, *args: object) -> None:
            self.handle = real_open(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> None:
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("builtins.open", FullDisk)
    with pytest.raises(RunError, match=f"cannot write '{target}': the disk is full"):
        write_atomic(target, b"x" * 1000)
    monkeypatch.undo()
    assert list(target.parent.iterdir()) == []


def test_disk_full_mid_run_stops_cleanly_with_a_valid_manifest(
    tmp_path: Path, tiny_model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(6):
        Image.new("RGB", (40, 30), (index * 40, 0, 0)).save(folder / f"{index}.png")
    out = tmp_path / "out"
    import featviz.sinks.layout as output

    real = output.write_atomic

    def fill_up(path: Path, data: bytes) -> None:
        if "2" in path.relative_to(out).parts[:3]:
            raise RunError(f"cannot write '{path}': the disk is full")
        real(path, data)

    monkeypatch.setattr("featviz.sinks.files.write_atomic", fill_up)
    result = CliRunner().invoke(
        app,
        [
            "cam",
            "-m",
            f"{tiny_model_file}:build",
            "--input-size",
            "32",
            "--batch-size",
            "2",
            str(folder),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 1
    assert "the disk is full" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    # Every image whose write finished, before or after 2.png's failed (how many depends on
    # how far the decoders and the model had got): exactly those have records.
    assert counts["done"] == len(list(out.glob("records/*/*/cam-*.json"))) >= 2
    assert counts["failed"] == 1  # 2.png, whose write met the full disk
    assert counts["done"] + counts["failed"] + counts["cut_off"] + counts["not_attempted"] == 6
    assert manifest["outcome"]["status"] == "stopped"
    assert manifest["outcome"]["reason"].startswith(f"cannot write '{out}/tiny_model/2/cam/")
    assert not list(out.rglob("*.partial"))
    for png in out.glob("tiny_model/*/cam/*/*/*.png"):
        Image.open(png).load()  # every PNG that exists is complete


def test_quiet_run_prints_nothing_and_non_tty_gets_no_progress_bar(
    tmp_path: Path, tiny_model_file: Path
) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    args = [
        "maps",
        "-m",
        f"{tiny_model_file}:build",
        "--input-size",
        "32",
        str(tmp_path / "x.png"),
        "-o",
        str(tmp_path / "out"),
    ]
    quiet = CliRunner().invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    normal = CliRunner().invoke(app, args)
    assert normal.stdout.startswith(f"{tmp_path / 'x.png'} → 2 files in ")
    assert len(normal.stderr.splitlines()) == 1  # the summary, no progress bar
    assert normal.stderr.startswith("1 done, 0 failed, 0 skipped in ")


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (480, 640, 3), (3, 9)])
def test_png_writer_round_trips_exactly_through_pillow(shape: tuple[int, ...]) -> None:
    import io

    from featviz.sinks.encode import encode_png

    pixels = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_png(pixels)))
    assert decoded.mode == ("RGB" if len(shape) == 3 else "L")
    np.testing.assert_array_equal(np.asarray(decoded), pixels)
    with pytest.raises(ValueError, match=r"expected \(H, W\) or \(H, W, 3\) uint8"):
        encode_png(pixels.astype(np.float32))
