"""Turning any tapped output into (N, C, h, w) feature maps: one place, decided once per layer.

A layer's output comes in one of three layouts, recognised from its shapes in the meta-device
trace (layers/catalog.py), never from the model's name:

- ``nchw``: (N, C, h, w), convolutional networks; nothing to do.
- ``nhwc``: (N, h, w, C), channels last: Swin stages, timm blocks that work NHWC. Permuted.
- ``tokens``: (N, T, C) with T = prefix + h·w, vision transformers. The ``prefix`` tokens
  (class, distillation, registers: always at the front) are dropped and the rest laid on the
  patch grid of *this* input, h × w, non-square too.
- ``ncthw``: (N, C, t, h, w), video networks' 3-D convolutions; ``nthwc``: (N, t, h, w, C),
  channels last (Video Swin). Their t frames are stacked top to bottom into one (N, C, t·h, w)
  map: every CAM method's sums and means over positions are then over (t, h, w), exactly the
  3-D method, and ``frames`` tells how to cut a map back into its t frames.
- ``thw_tokens``: (N, P + t·h·w, C) tokens of a video transformer whose blocks return their
  (t, h, w) beside them (MViT's ``(x, thw)``: its pooling changes thw from stage to stage, so
  no input size tells it). The P prefix tokens (the class token) are dropped and the rest laid
  on the t frames of h × w, stacked like ``ncthw``'s.

Activations and gradients go through the same ``to_nchw``: it only selects and reorders
elements, so the gradient of the converted tensor is the converted gradient.

How a layout is recognised, from the output shape at a square input S × S (``a``) and, when the
model accepts one, at a wider input S × S' (``b``):
- with both: the dimensions that grow with the width are the spatial ones. 4-D: the last one
  grows → nchw, the third grows while the last stays → nhwc; 3-D: the token count grows and
  the width of each token stays → tokens, with the prefix that fits both grids.
- with one (models that accept a single size): 4-D (N, h, w, C) → nhwc when (h, w) has the
  input's aspect and (w, C) has not, else nchw;
  3-D: T − P is a square h² for a small prefix P, with S a multiple of h.
A 4-D output whose third side equals a token count of the same trace is split by attention
head, not a map: (N, heads, T, d) queries, keys or values (timm's ``q_norm``), or (N, heads,
T, T) attention probabilities. 5-D outputs are judged like 4-D ones on their last three sides
(their time side never grows with the width). An output that comes with its (t, h, w) is
``thw_tokens`` when it is (N, P + t·h·w, C), and no map otherwise (MViT's pooling layers
return their tokens split by attention head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from featviz.errors import RunError

if TYPE_CHECKING:
    import torch

Kind = Literal["nchw", "nhwc", "tokens", "ncthw", "nthwc", "thw_tokens"]
MAX_PREFIX = 64  # class + distillation + register tokens; ViTs with registers use 4–16


@dataclass(frozen=True)
class Layout:
    kind: Kind
    prefix: int = 0
    # ``thw_tokens``: the (t, h, w) the layer returned beside its tokens in the trace.
    thw: tuple[int, int, int] | None = None

    def grid(self, shape: tuple[int, ...], input_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of an output of ``shape`` for an input of ``input_hw`` = (H, W)."""
        if self.kind == "nchw":
            return shape[2], shape[3]
        if self.kind == "nhwc":
            return shape[1], shape[2]
        if self.kind == "ncthw":
            return shape[2] * shape[3], shape[4]
        if self.kind == "nthwc":
            return shape[1] * shape[2], shape[3]
        if self.kind == "thw_tokens":
            t, h, w = self.thw
            return t * h, w
        return token_grid(shape[1] - self.prefix, input_hw)

    def frames(self, shape: tuple[int, ...]) -> int:
        """How many frames (t) a map of an output of ``shape`` stacks: 1 but for video."""
        if self.kind == "ncthw":
            return shape[2]
        if self.kind == "thw_tokens":
            return self.thw[0]
        return shape[1] if self.kind == "nthwc" else 1

    def to_nchw(self, output: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        """The (N, C, h, w) view of a tapped output (a copy only where a permute needs one)."""
        if self.kind == "nchw":
            return output
        if self.kind == "nhwc":
            return output.permute(0, 3, 1, 2)
        if self.kind == "nthwc":
            output = output.permute(0, 4, 1, 2, 3)
        if self.kind in ("ncthw", "nthwc"):
            return output.flatten(2, 3)
        if self.kind == "thw_tokens":
            self._check_count(output.shape)
        h, w = self.grid(tuple(output.shape), input_hw)
        patches = output[:, self.prefix :]
        return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], h, w)

    def from_nchw(self, maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) maps back into this layout, shaped like the layer's output ``like``
        (whose prefix tokens are kept)."""
        if self.kind == "nchw":
            return maps
        if self.kind == "nhwc":
            return maps.permute(0, 2, 3, 1)
        if self.kind == "ncthw":
            return maps.unflatten(2, like.shape[2:4])
        if self.kind == "nthwc":
            return maps.unflatten(2, like.shape[1:3]).permute(0, 2, 3, 4, 1)
        tokens = like.clone()
        tokens[:, self.prefix :] = maps.flatten(2).transpose(1, 2)
        return tokens

    def describe(self, shape: tuple[int, ...], input_hw: tuple[int, int]) -> str:
        """How ``featviz layers`` shows the layer: ``197×768 tokens → 14×14``."""
        dims = "×".join(str(d) for d in shape[1:])
        if self.kind == "nchw":
            return dims
        h, w = self.grid(shape, input_hw)
        if self.kind == "nhwc":
            return f"{dims} channels-last → {shape[3]}×{h}×{w}"
        prefix = f", {self.prefix} prefix" if self.prefix else ""
        if self.kind in ("ncthw", "nthwc", "thw_tokens"):
            frames = self.frames(shape)
            last = {"nthwc": " channels-last", "thw_tokens": f" tokens{prefix}"}.get(self.kind, "")
            plural = "s" if frames != 1 else ""
            return f"{dims}{last} → {frames} frame{plural} of {h // frames}×{w}"
        return f"{dims} tokens{prefix} → {h}×{w}"

    def _check_count(self, shape: torch.Size) -> None:
        """A ``thw_tokens`` output has as many tokens as in the trace, or its thw is stale."""
        t, h, w = self.thw
        if shape[1] != self.prefix + t * h * w:
            raise RunError(
                f"a layer returned {shape[1]} tokens where the model's trace had "
                f"{self.prefix} + {t}×{h}×{w}: its input is not the size it was traced at",
                hint="feed clips of the traced size (--input-size and the model's CLIP_LENGTH)",
            )


def as_maps(layout: Layout | None, output: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """A tapped output as (N, C, h, w) maps: through its ``layout``; one value per channel
    (N, C), a Linear's, which has none, as maps of one position (N, C, 1, 1)."""
    if layout is None:
        return output[:, :, None, None]
    return layout.to_nchw(output, input_hw)


def token_grid(count: int, input_hw: tuple[int, int]) -> tuple[int, int]:
    """The h × w = ``count`` grid whose aspect is closest to the input's (H, W)."""
    height, width = input_hw
    pairs = [(h, count // h) for h in range(1, math.isqrt(count) + 1) if count % h == 0]
    pairs += [(w, h) for h, w in pairs]
    return min(pairs, key=lambda hw: abs(math.log((hw[0] / hw[1]) / (height / width))))


def detect(
    a: tuple[int, ...] | None,
    b: tuple[int, ...] | None,
    size_a: tuple[int, int],
    size_b: tuple[int, int] | None,
    token_counts: set[int],
    thw: tuple[int, int, int] | None = None,
) -> Layout | None:
    """The layout of an output of shape ``a`` at input ``size_a`` (and ``b`` at ``size_b``
    when the model ran there too), or None when it is not a feature map at all.

    ``token_counts``: the token counts of the trace's token layers at ``size_a``, which tell
    attention matrices from maps; ``thw``: the (t, h, w) the layer returned beside its output.
    """
    if a is None:
        return None
    if thw is not None:
        prefix = a[1] - math.prod(thw) if len(a) == 3 else -1
        return Layout("thw_tokens", prefix, tuple(thw)) if 0 <= prefix <= MAX_PREFIX else None
    if len(a) == 4:
        if a[2] in token_counts:
            return None  # (N, heads, T, d) per-head queries…, (N, heads, T, T) attention
        if b is not None and len(b) == 4 and a != b:
            if a[3] != b[3] and a[1] == b[1]:
                return Layout("nchw")
            if a[2] != b[2] and a[3] == b[3]:
                return Layout("nhwc")
            return None  # everything grows: not a map of the image
        if _fits(a[1], a[2], size_a) and not _fits(a[2], a[3], size_a):
            return Layout("nhwc")
        return Layout("nchw")
    if len(a) == 5:
        return _video_layout(a, b, size_a)
    if len(a) == 3:
        prefix = token_prefix(a, b, size_a, size_b)
        return None if prefix is None else Layout("tokens", prefix)
    return None


def _video_layout(
    a: tuple[int, ...], b: tuple[int, ...] | None, size_a: tuple[int, int]
) -> Layout | None:
    """The layout of a 5-D output: (N, C, t, h, w) or channels-last (N, t, h, w, C)."""
    if b is not None and len(b) == 5 and a != b:
        if a[4] != b[4] and a[1] == b[1]:
            return Layout("ncthw")
        if a[3] != b[3] and a[4] == b[4]:
            return Layout("nthwc")
        return None
    if _fits(a[2], a[3], size_a) and not _fits(a[3], a[4], size_a):
        return Layout("nthwc")
    return Layout("ncthw")


def _fits(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether an h × w grid can be the input ``size`` = (H, W) seen at some stride: no larger,
    and the same aspect up to the rounding of one cell."""
    height, width = size
    if not (0 < h <= height and 0 < w <= width):
        return False
    return abs(height * w / width - h) <= 1 or abs(width * h / height - w) <= 1


def token_prefix(
    a: tuple[int, ...],
    b: tuple[int, ...] | None,
    size_a: tuple[int, int],
    size_b: tuple[int, int] | None,
) -> int | None:
    """The number of prefix tokens of an (N, T, C) output, or None when it is not a token map.

    With two input sizes: the patch stride p and prefix P with T = P + (H/p)·(W/p) at both
    (floor or ceil, for patch embeddings with and without padding). With one square size S:
    the smallest P for which T − P = h² with S a multiple of h.
    """
    count = a[1]
    if b is not None:
        if len(b) != 3 or b[2] != a[2] or b[1] == count:
            return None
        for stride in range(1, min(size_a) + 1):
            for rounding in (math.floor, math.ceil):
                grid_a = rounding(size_a[0] / stride) * rounding(size_a[1] / stride)
                grid_b = rounding(size_b[0] / stride) * rounding(size_b[1] / stride)
                prefix = count - grid_a
                if grid_a > 1 and 0 <= prefix <= MAX_PREFIX and b[1] - grid_b == prefix:
                    return prefix
        return None
    side = size_a[0]
    for prefix in range(min(MAX_PREFIX, count - 4) + 1):
        h = math.isqrt(count - prefix)
        if h * h == count - prefix and h > 1 and side % h == 0:
            return prefix
    return None
