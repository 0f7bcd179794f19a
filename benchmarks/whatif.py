"""Candidate speed-ups of featviz, measured without editing featviz: each is applied to a
prepared run for the duration of one timed call (a patched function, a converted model), then
undone. ``bench_cam.py`` and ``bench_maps.py`` time them beside featviz as it is.

- ``fast_encode_png``: a complete PNG writer in a few lines of numpy + zlib, which featviz could
  use in place of Pillow's ``Image.save(format="PNG")``: every row gets the "Up" filter (row
  minus the row above, one vectorised subtraction) and the whole image goes to deflate once.
  Pillow instead picks a filter per row adaptively, which costs more than the deflate itself.
  With the stdlib's zlib at level 1: same file sizes as Pillow's level 1, half the time; with
  ISA-L's deflate (the ``isal`` package, wheels for Linux/macOS/Windows) about 8× faster.
- ``channels_last``: oneDNN's convolutions on CPU run faster on NHWC weights (resnet50's forward
  + backward to layer4: about −25 % here); converting the model is enough, inputs follow.
- ``bfloat16``: the forward and backward under ``torch.autocast("cpu", torch.bfloat16)``. Not a
  drop-in fix: it changes the numbers (top-1 classes and maps can differ), so it could only be an
  opt-in option; it shows what CPUs with AVX512-BF16/AMX (this one) leave on the table.

Dropped since: a uint16 overlay (±1 level against the float formula): featviz's overlay now
looks the formula's exact result up in a table (render.blend_table), which is faster still.
Measured and dropped: torch at 1 thread while the pools encode on the other core (resnet50 46 %
slower, alexnet about the same).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UP = 2  # PNG filter type "Up"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def fast_encode_png(image: np.ndarray, compress: Callable[[bytes], bytes] | None = None) -> bytes:
    """(H, W, 3) RGB or (H, W) grey uint8 → PNG bytes, "Up" filter on every row, one IDAT."""
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
    ):
        raise ValueError(f"expected (H, W) or (H, W, 3) uint8, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    rows = np.ascontiguousarray(image).reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = _UP
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    # uint8 arithmetic wraps modulo 256, exactly as PNG's filters are defined
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    colour_type = 2 if image.ndim == 3 else 0
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    data = (compress or (lambda raw: zlib.compress(raw, 1)))(filtered.tobytes())
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def isal_compress() -> Callable[[bytes], bytes] | None:
    """ISA-L's deflate at level 1 (zlib format), or None when ``isal`` is not installed."""
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    return lambda raw: isal_zlib.compress(raw, 1)


@contextmanager
def png_encoder(encode: Callable[[np.ndarray], bytes]) -> Iterator[None]:
    """featviz's cam and maps jobs write PNGs through ``encode`` meanwhile."""
    import featviz.run.jobs.cam
    import featviz.run.jobs.maps

    modules = (featviz.run.jobs.cam, featviz.run.jobs.maps)
    saved = [module.encode_png for module in modules]
    for module in modules:
        module.encode_png = encode
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.encode_png = original


def _is_channels_last(module: Any) -> bool:
    """Whether the module's first 4-D weight is stored NHWC (featviz may already load it so)."""
    import torch

    for parameter in module.parameters():
        if parameter.ndim == 4:
            return parameter.is_contiguous(memory_format=torch.channels_last) and not (
                parameter.is_contiguous()
            )
    return False


@contextmanager
def channels_last(module: Any) -> Iterator[None]:
    """The model's 4-D weights in NHWC meanwhile, then back to how they were (torchvision
    models are safe with it; a model that calls ``.view`` on a conv output is not)."""
    import torch

    was = torch.channels_last if _is_channels_last(module) else torch.contiguous_format
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=was)


@contextmanager
def bfloat16() -> Iterator[None]:
    """Autocast to bfloat16 meanwhile (thread-local: featviz runs the model in the calling
    thread)."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield


def variants(run: Any) -> dict[str, Callable[[], Any]]:
    """Name → context-manager factory, for featviz's prepared ``run``."""
    found: dict[str, Callable[[], Any]] = {
        "PNG: Up filter + stdlib zlib 1": lambda: png_encoder(fast_encode_png),
    }
    fast = isal_compress()
    if fast is not None:
        found["PNG: Up filter + ISA-L 1"] = lambda: png_encoder(
            lambda image: fast_encode_png(image, fast)
        )
    found["model channels_last"] = lambda: channels_last(run.model.module)
    best_png = found.get("PNG: Up filter + ISA-L 1", found["PNG: Up filter + stdlib zlib 1"])

    @contextmanager
    def combined() -> Iterator[None]:
        with best_png(), channels_last(run.model.module):
            yield

    found["both: fastest PNG, channels_last"] = combined

    @contextmanager
    def combined_bf16() -> Iterator[None]:
        with combined(), bfloat16():
            yield

    found["opt-in: both + bfloat16 autocast"] = combined_bf16
    return found
