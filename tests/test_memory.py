"""Long runs and failed runs leave nothing behind: no hooks on the model, no activations, no
autograd graphs, no growth of the process's memory with the number of images."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePath

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_SOURCE
from PIL import Image

from featviz.inputs.discover import ImageSource
from featviz.model.options import ModelRequest
from featviz.run.pipeline import PipelineStats
from featviz.run.pipeline import run as run_pipeline
from featviz.run.plan import CamRequest, MapsRequest, Plan, RunRequest
from featviz.run.prepare import PreparedRun, prepare
from featviz.sinks.options import OutputRequest

SHAPES = [(40, 30), (30, 40), (48, 24), (40, 30)]  # several shapes: several batch groups


@pytest.fixture
def photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    monkeypatch.chdir(tmp_path)
    Path("tiny_model.py").write_text(TINY_MODEL_SOURCE)
    Path("in").mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for index, (width, height) in enumerate(SHAPES):
        path = Path(f"in/{index}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def prepared(
    command: str, input_size: int = 32, methods: tuple[str, ...] = ("gradcam",)
) -> PreparedRun:
    model = ModelRequest("tiny_model.py:build", input_size=input_size, device="cpu")
    inputs = RunRequest(("in",), batch_size=4)
    output = OutputRequest(Path("out"), gallery=False)
    if command == "maps":
        return prepare(Plan("maps", model, output, MapsRequest(cell_size=8), inputs))
    return prepare(Plan("cam", model, output, CamRequest(methods=methods), inputs))


def many(photos: list[Path], start: int, count: int) -> Iterator[ImageSource]:
    """``count`` inputs cycling through the photos, each with outputs of its own."""
    for number in range(start, start + count):
        path = photos[number % len(photos)]
        yield ImageSource(path=path, relative=PurePath(str(number)), display=str(path))


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_tensors() -> int:
    gc.collect()
    return sum(1 for thing in gc.get_objects() if issubclass(type(thing), torch.Tensor))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_memory_stays_flat_over_a_long_run(photos: list[Path]) -> None:
    run = prepared("cam", input_size=64)
    stats = PipelineStats()
    warm_up = run_pipeline(run.job, many(photos, 0, 20), run.config, stats)  # imports, caches…
    assert all(result.error is None for result in warm_up)
    tensors_before = live_tensors()
    for count, result in enumerate(
        run_pipeline(run.job, many(photos, 20, 300), run.config, stats), 1
    ):
        assert result.error is None, result.error
        if count == 50:
            gc.collect()
            after_50 = resident_bytes()
    gc.collect()
    after_300 = resident_bytes()
    # Keeping each batch's activations and graph would hold ~40 MB more by the end; the
    # allocator's own drift over this run is a few MB.
    assert after_300 - after_50 < 16 * 2**20, f"grew {(after_300 - after_50) / 2**20:.1f} MB"
    assert live_tensors() <= tensors_before
    assert stats.in_flight == 0 and stats.max_in_flight <= run.config.max_in_flight


def hooks_left(model: torch.nn.Module) -> list[str]:
    kinds = ["_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"]
    left = [
        f"{name or 'model'}.{kind}"
        for name, module in model.named_modules()
        for kind in kinds
        if getattr(module, kind)
    ]
    shared = torch.nn.modules.module
    for kind in ["_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"]:
        if getattr(shared, kind):
            left.append(kind)
    return left


class Breakdown(Exception):
    """Stands for anything that ends a forward abruptly."""


def break_on_call(module: torch.nn.Module, call: int, error: BaseException) -> None:
    """Make ``module`` raise ``error`` on its ``call``-th forward, inside the tapped forward."""
    forward = module.forward
    calls = iter(range(1, 1_000_000))

    def breaking(x: torch.Tensor) -> torch.Tensor:
        if next(calls) == call:
            raise error
        return forward(x)

    module.forward = breaking


@pytest.mark.parametrize("command", ["cam", "maps"])
def test_a_batch_the_model_fails_on_fails_alone_and_leaves_no_hook(
    photos: list[Path], command: str
) -> None:
    run = prepared(command)
    break_on_call(run.model.module.features[2], 3, RuntimeError("boom"))
    results = list(replace(run, sources=many(photos, 0, 16)).results())
    failed = [result for result in results if result.error]
    assert len(results) == 16 and len(failed) == 4  # the third batch of four
    for result in failed:  # one line that names the file and the reason
        assert re.fullmatch(
            rf"{result.source.display}: the model cannot run on this input "
            r"\(\d+×\d+ after resizing\): boom",
            result.error,
        ), result.error
    assert hooks_left(run.model.module) == []


@pytest.mark.parametrize("command", ["cam", "maps"])
@pytest.mark.parametrize("error", [KeyboardInterrupt(), Breakdown("a bug")])
def test_a_run_stopped_inside_the_forward_leaves_no_hook(
    photos: list[Path], command: str, error: BaseException
) -> None:
    run = prepared(command)
    assert hooks_left(run.model.module) == []
    break_on_call(run.model.module.features[2], 3, error)
    with pytest.raises(type(error)):
        list(replace(run, sources=many(photos, 0, 16)).results())
    assert hooks_left(run.model.module) == []


def test_images_are_admitted_by_their_pixels_within_the_budget(
    photos: list[Path], tmp_path: Path
) -> None:
    """At 16 bytes a pixel, 1 MB holds two 200×150 photos at once, never three; a photo
    larger than the whole budget still runs, on its own."""
    run = prepared("cam")
    sizes = [(200, 150)] * 7 + [(400, 300)] + [(200, 150)] * 4
    paths = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"big{index}.png"
        Image.new("RGB", size, (index * 20, 90, 40)).save(path)
        paths.append(path)
    sources = [ImageSource(path=p, relative=PurePath(p.stem), display=p.name) for p in paths]
    stats = PipelineStats()
    config = replace(run.config, max_memory=10**6)
    results = list(run_pipeline(run.job, sources, config, stats))
    assert [result.error for result in results] == [None] * len(sizes)
    assert stats.max_in_flight == 2
    lone = 16 * 400 * 300  # 1.92 MB: over the budget, admitted only with nothing in flight
    assert stats.max_reserved == lone and stats.reserved == 0 and stats.costs == {}
    unbounded = PipelineStats()
    list(run_pipeline(run.job, sources, replace(run.config, max_memory=10**12), unbounded))
    assert unbounded.max_in_flight > 2  # the count cap alone lets more in


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux")
def test_a_large_photo_costs_about_16_bytes_a_pixel_at_its_peak(tmp_path: Path) -> None:
    """Peak RSS of whole `featviz cam` processes: a 24-megapixel photo against a tiny one, the
    difference per pixel (before the band-wise overlay and in-place heatmap: about 60)."""
    (tmp_path / "tiny_model.py").write_text(TINY_MODEL_SOURCE)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "small.jpg")
    large = np.kron(rng.integers(0, 256, (75, 100, 3), dtype=np.uint8), np.ones((56, 56, 1)))
    Image.fromarray(large.astype(np.uint8)).save(tmp_path / "large.jpg", quality=85)
    pixels = large.shape[0] * large.shape[1]

    def peak(name: str) -> int:
        command = [
            sys.executable, "-m", "featviz", "cam", "-m", "tiny_model.py:build", "-q",
            "--input-size", "64", name, "-o", f"out-{name}",
        ]  # fmt: skip
        process = subprocess.Popen(command, cwd=tmp_path)
        _, status, usage = os.wait4(process.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return usage.ru_maxrss * 1024

    per_pixel = (peak("large.jpg") - peak("small.jpg")) / pixels
    assert per_pixel < 20, f"{per_pixel:.1f} bytes a pixel"
