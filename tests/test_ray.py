"""``--ray``: the same run on a local Ray cluster's actors — the same bytes, every image once,
also when an actor's process is killed mid-run, across runs with --skip-existing, and cleanly
stopped by Ctrl-C. One local Ray (2 CPUs) serves the whole module."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
from conftest import TINY_MODEL_SOURCE
from PIL import Image
from typer.testing import CliRunner

from featviz import explain, load
from featviz.cli.app import app

IMAGES = 48


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, list[str]]:
    """(the module's folder, the options of a 48-image cam run of the tiny model)."""
    root = tmp_path_factory.mktemp("ray")
    (root / "tiny.py").write_text(TINY_MODEL_SOURCE)
    rng = np.random.default_rng(0)
    (root / "in").mkdir()
    for i in range(IMAGES):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "in" / f"im{i:02d}.png")
    options = ["cam", "-m", f"{root / 'tiny.py'}:build", "--input-size", "64", str(root / "in")]
    return root, [*options, "--batch-size", "4", "-q"]


@pytest.fixture(scope="module")
def plain(job) -> dict[str, bytes]:
    """The pictures of the same run without Ray."""
    root, options = job
    assert cli(*options, "-o", root / "plain").exit_code == 0
    return pictures(root / "plain")


def cli(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def pictures(out: Path) -> dict[str, bytes]:
    """Every file in the model's folder, by its path there."""
    folder = out / "tiny"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}


def listed_once(out: Path) -> dict:
    """The manifest, after checking that it lists every input exactly once, done."""
    manifest = json.loads((out / "manifest.json").read_bytes())
    inputs = sorted(Path(image["input"]).name for image in manifest["images"])
    assert inputs == [f"im{i:02d}.png" for i in range(IMAGES)]
    assert not [image for image in manifest["images"] if image["error"]]
    return manifest


def test_the_same_bytes_as_a_plain_run(cluster, job, plain):
    root, options = job
    on_ray = cli(*options, "-o", root / "ray", "--ray", "local", "--ray-actors", "2")
    assert on_ray.exit_code == 0, on_ray.output
    assert len(plain) == IMAGES
    assert pictures(root / "ray") == plain
    manifest = listed_once(root / "ray")
    assert manifest["counts"]["done"] == IMAGES
    assert manifest["request"]["run"]["ray"] == {
        "address": "local",
        "actors": 2,
        "cpus": 1.0,
        "gpus": 0.0,
    }
    assert len(list((root / "ray" / "records").rglob("cam-*.json"))) == IMAGES
    assert (root / "ray" / "index.html").is_file()


@pytest.fixture(scope="module")
def top_run(job) -> tuple[list[str], dict[Path, bytes]]:
    """(the options of a top run over the same images, the files its plain run writes)."""
    root, _ = job
    options = ["top", "-m", f"{root / 'tiny.py'}:build", "--input-size", "64", "-q"]
    options += ["-l", "features.*", "-k", "3", "--batch-size", "4", str(root / "in")]
    assert cli(*options, "-o", root / "top-plain").exit_code == 0
    written = top_files(root / "top-plain")
    assert len(written) == 4 * 2 + (4 + 4 + 6 + 6)  # per layer a JSON, an overview
    return options, written


def top_files(out: Path) -> dict[Path, bytes]:
    """Every file top wrote under ``out``/top, by its path there."""
    folder = out / "top"
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_top_on_ray_writes_the_plain_runs_files_byte_for_byte(cluster, job, top_run):
    """Each actor ranks its chunks; the driver merges them into what one run writes."""
    root, _ = job
    options, plain_files = top_run
    on_ray = cli(*options, "-o", root / "top-ray", "--ray", "local", "--ray-actors", "2")
    assert on_ray.exit_code == 0, on_ray.output
    assert top_files(root / "top-ray") == plain_files
    assert listed_once(root / "top-ray")["counts"]["done"] == IMAGES


def _actor_running_a_chunk() -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline"]):
        if (process.info["cmdline"] or [""])[0].startswith("ray::ClusterActor.run"):
            return process
    return None


@contextlib.contextmanager
def one_actor_killed_mid_run() -> Iterator[list[int]]:
    """While the block runs a job on Ray, the first actor caught running a chunk is killed
    (SIGKILL: no clean-up of any kind); the pids killed, checked to be one."""
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            actor = _actor_running_a_chunk()
            if actor is not None:
                with contextlib.suppress(psutil.NoSuchProcess):  # it ended meanwhile
                    actor.kill()
                    killed.append(actor.pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        yield killed
    finally:
        killer.join()
    assert killed, "no actor was caught running a chunk"


def test_an_actor_killed_mid_run_leaves_no_image_lost_or_twice(cluster, job, plain):
    root, options = job
    out = root / "killed"
    with one_actor_killed_mid_run():
        result = cli(*options, "-o", out, "--ray", "local", "--ray-actors", "2")
    assert result.exit_code == 0, result.output
    manifest = listed_once(out)
    assert manifest["counts"]["done"] == IMAGES
    assert pictures(out) == plain


def test_top_with_an_actor_killed_mid_run_ranks_every_image_once(cluster, job, top_run):
    """The killed actor's chunk is ranked again by another: the same files as a plain run,
    whose JSON counts every image once."""
    root, _ = job
    options, plain_files = top_run
    out = root / "top-killed"
    with one_actor_killed_mid_run():
        result = cli(*options, "-o", out, "--ray", "local", "--ray-actors", "2")
    assert result.exit_code == 0, result.output
    assert top_files(out) == plain_files
    assert listed_once(out)["counts"]["done"] == IMAGES


@pytest.fixture(scope="module")
def interrupted(cluster, job) -> tuple[Path, int, dict]:
    """(the folder, the exit code, the manifest) of a run on Ray stopped by Ctrl-C once its
    first image was written."""
    root, options = job
    out = root / "interrupted"

    def interrupt_once_started() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(out.glob("records/**/cam-*.json")):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_started)
    interrupter.start()
    result = cli(*options, "-o", out, "--ray", "local", "--ray-actors", "2")
    interrupter.join()
    return out, result.exit_code, json.loads((out / "manifest.json").read_bytes())


def test_ctrl_c_stops_the_actors_and_names_what_is_left(interrupted):
    out, code, manifest = interrupted
    assert code == 130
    assert manifest["outcome"] == {"status": "interrupted", "reason": "SIGINT"}
    done = [Path(image["input"]).name for image in manifest["images"]]
    left = [Path(name).name for name in manifest["cut_off"] + manifest["not_attempted"]]
    assert sorted(done + left) == [f"im{i:02d}.png" for i in range(IMAGES)]
    assert 0 < len(done) < IMAGES
    assert not list(out.rglob("*.partial"))  # every actor stopped between writes


def test_skip_existing_resumes_on_ray_and_a_bad_image_fails_alone(interrupted, job, plain):
    out, _, first = interrupted
    root, options = job
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    resumed = cli(
        *options, broken, "-o", out, "--ray", "local", "--ray-actors", "1", "--skip-existing"
    )
    assert resumed.exit_code == 1, resumed.output
    assert resumed.output.startswith(f"error: {broken}: ")
    manifest = json.loads((out / "manifest.json").read_bytes())
    counts = manifest["counts"]
    done_before = first["counts"]["done"]
    assert (counts["skipped"], counts["done"]) == (done_before, IMAGES - done_before)
    assert counts["failed"] == 1
    [failed] = [image for image in manifest["images"] if image["error"]]
    assert failed["input"] == str(broken)
    assert pictures(out) == plain


def test_the_ray_data_callable_gives_the_maps_of_explain(cluster, job):
    from ray_data import explain_images  # examples/ray_data.py, the library page's example

    root, _ = job
    folder = root / "few"
    folder.mkdir()
    for i in range(5):
        (folder / f"im{i}.png").write_bytes((root / "in" / f"im{i:02d}.png").read_bytes())
    spec = f"{root / 'tiny.py'}:build"
    rows = explain_images(str(folder), spec, actors=1, batch_size=2, target=["3"])
    expected = explain(load(spec), sorted(folder.iterdir()), target="3")
    assert [Path(row["path"]).name for row in rows] == [f"im{i}.png" for i in range(5)]
    for row, explanation in zip(rows, expected, strict=True):
        assert row["heatmap"].shape == (48, 64)
        np.testing.assert_allclose(row["heatmap"], explanation.heatmap, atol=1e-5)
        assert (row["class_index"], row["label"]) == (3, explanation.label)
        assert row["probability"] == pytest.approx(explanation.probability, abs=1e-6)


def test_ray_options_need_ray():
    result = cli("cam", "--ray-actors", "2", "x.png")
    assert result.exit_code == 2
    assert "Error: Invalid value: --ray-actors goes with --ray (auto, local or an address)" in (
        result.output
    )


def test_tensorboard_does_not_go_with_ray_yet(tmp_path):
    result = cli("cam", "--ray", "local", "--tensorboard", tmp_path / "tb", "x.png")
    assert result.exit_code == 2
    assert result.output.splitlines()[0] == (
        "Error: --tensorboard does not go with --ray yet: each actor would write event files "
        "of its own"
    )


def test_featviz_imports_no_ray():
    code = "import sys, featviz, featviz.cli.app; print('ray' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.stdout.strip() == "False", found.stderr
