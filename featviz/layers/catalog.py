"""Which layers a model has, what they output, and which one a CAM should use by default.

A ``ModelTrace`` (made by tracing.trace_model, one shapes-only forward) lists every module with
its output shape and layout; everything here reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from featviz.errors import UsageError, closest
from featviz.layers.layouts import Layout


@dataclass(frozen=True)
class LayerInfo:
    """One module as seen in a traced forward.

    ``shape`` is the output shape (batch of one) of the module's last call, or None when the
    module did not run or did not return a tensor (a tuple's first tensor counts); ``pooled``:
    the output comes from a pooling layer, or is the very tensor a pooling layer inside this
    module returned; ``layout``: how the output becomes (N, C, h, w) maps, None when it is not
    a map of the image (class scores, attention matrices).
    """

    name: str
    type_name: str
    shape: tuple[int, ...] | None
    params: int
    calls: int
    order: int
    pooled: bool
    layout: Layout | None = None
    grid: tuple[int, int] | None = None

    @property
    def spatial(self) -> bool:
        """Usable for feature maps and CAM: a map with more than one position in a frame (a
        video layer's frames of 1 × 1 are pooled over space)."""
        if self.grid is None or self.layout is None or self.shape is None:
            return False
        return self.grid[0] // self.layout.frames(self.shape) * self.grid[1] > 1

    @property
    def channels(self) -> int:
        """How many channels its maps have: dim 1 of an (N, C, …) output or of a Linear's
        (N, C), the last dim of a channels-last or token one."""
        if self.layout is None or self.layout.kind in ("nchw", "ncthw"):
            return self.shape[1]
        return self.shape[-1]

    @property
    def per_channel(self) -> bool:
        """One value per channel and image: a Linear's (N, C) output (class scores, an
        embedding) or a global pool's (N, C, 1, 1); what ``featviz top`` ranks images by as
        it ranks them by a map's maximum."""
        if self.shape is None:
            return False
        if self.layout is None:
            return len(self.shape) == 2
        return self.grid == (1, 1) and self.layout.frames(self.shape) == 1


@dataclass(frozen=True)
class ModelTrace:
    """All modules of a model, in ``named_modules`` order, with their traced outputs.

    ``num_classes``: the width of the model's (N, classes) scores (of its per-pixel logits for
    a segmentation model), None when its output is not one (see scores.logits_of).
    ``input_hw``: the traced input size. ``size_step``: the model also runs at the traced
    height × (width + step), so at multiples of ``size_step`` (any size when it is
    tracing.FREE_STEP); None: at the traced size only. ``attention_inputs``: for each
    attention module call, in order, the module whose output it read.
    """

    layers: tuple[LayerInfo, ...]
    num_classes: int | None
    input_hw: tuple[int, int]
    size_step: int | None
    attention_inputs: tuple[str, ...]
    # What the output is: None class scores; "segmentation" (N, classes, H, W) logits
    # (featviz.tasks); "detection" boxes (featviz.tasks.detection).
    task: str | None = None
    # (conv, batch norm) pairs whose conv output only that batch norm reads (layers/folding.py).
    foldable: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> LayerInfo:
        return next(layer for layer in self.layers if layer.name == name)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def calls(self) -> dict[str, int]:
        return {layer.name: layer.calls for layer in self.layers}

    def layouts(self) -> dict[str, Layout]:
        return {layer.name: layer.layout for layer in self.layers if layer.layout is not None}

    @property
    def patch_stride(self) -> int:
        """Input pixels per token of the first token layer (a ViT's patch size), else 1."""
        for layer in self.cam_candidates():
            if layer.layout.kind == "tokens" and self.input_hw[0] % layer.grid[0] == 0:
                return self.input_hw[0] // layer.grid[0]
        return 1

    def attention_prefix(self) -> int:
        """The prefix tokens in front of the patch tokens that every attention module reads.

        Raises UsageError unless every attention reads tokens laid on the patch grid (the
        rollout methods need global self-attention: a ViT's, not a CNN's or Swin's windows).
        """
        feeding = [self.get(name) for name in self.attention_inputs]
        if not feeding or any(f.layout is None or f.layout.kind != "tokens" for f in feeding):
            raise UsageError(
                "the attention methods need global self-attention over the patch tokens (ViT, "
                "DeiT, BEiT…); this model has none featviz can read (a CNN has none, Swin's "
                "is windowed)",
                hint="use --method gradcam, which works on any layer",
            )
        return feeding[-1].layout.prefix

    def cam_candidates(self) -> list[LayerInfo]:
        """Spatial layers in execution order."""
        ran = [layer for layer in self.layers if layer.spatial]
        return sorted(ran, key=lambda layer: layer.order)

    def default_cam_layer(self, class_token: bool | None = None) -> str:
        """The layer whose map explains the class best, by default.

        The output of the last stage: the last spatial output that is not pooled (the
        outermost of the modules producing that very tensor, ``layer4.2.relu`` → ``layer4.2``
        → ``layer4``: the name a user reads in the model's structure). Except when that is a
        token layer whose head reads a class token (``class_token``; None: assumed when there
        are prefix tokens): the class token depends on the patch tokens of the last block's
        output not at all (their gradients are zero); the input of the last attention, where
        the class token gathers from the patches, is taken instead.
        """
        usable = [layer for layer in self.cam_candidates() if not layer.pooled]
        if not usable:
            raise UsageError(
                "this model has no layer with a spatial output (feature maps or patch tokens) "
                "to compute a CAM on",
                hint="`featviz layers --model MODEL` shows what it has",
            )
        if self.task == "segmentation":
            return _segmentation_layer(usable, self.num_classes)
        if self.task == "detection":
            return _detection_layer(usable)
        last = usable[-1]
        reads_class = bool(last.layout.prefix) if class_token is None else class_token
        if last.layout.kind == "tokens" and reads_class and self.attention_inputs:
            feeding = self.get(self.attention_inputs[-1])
            if feeding.spatial:
                return feeding.name
        if last.layout.kind == "thw_tokens" and reads_class:
            return _before_last_block(usable, last)
        return last.name


def _before_last_block(usable: list[LayerInfo], last: LayerInfo) -> str:
    """A video transformer's (MViT's) default when its head reads the class token: the output
    of the block before the last, which the last block's attention gathers into the class
    token (the last block's patch tokens, and the final norm's, reach the head not at all).
    Its blocks are the outermost items of a module list among its token layers: ``blocks.14``,
    not ``blocks.14.mlp.0`` nor ``norm``."""
    tokens = [layer.name for layer in usable if layer.layout.kind == "thw_tokens"]
    items = [name for name in tokens if name.rpartition(".")[2].isdigit()]
    blocks = [name for name in items if not any(name.startswith(f"{o}.") for o in items)]
    return blocks[-2] if len(blocks) > 1 else last.name


def _segmentation_layer(usable: list[LayerInfo], classes: int | None) -> str:
    """A segmentation model's default: the end of its encoder, where pytorch-grad-cam's
    tutorial taps torchvision's models: the last layer of a ``backbone`` when there is one,
    else the last layer at the coarsest resolution (before a decoder upsamples) that is not
    the per-pixel logits."""
    backbone = [layer for layer in usable if layer.name.startswith("backbone.")]
    if backbone:
        return backbone[-1].name
    coarsest = min(layer.grid[0] * layer.grid[1] for layer in usable)
    deepest = [layer for layer in usable if layer.grid[0] * layer.grid[1] == coarsest]
    # Not the per-pixel logits themselves (as many channels as classes): features before them.
    features = [layer for layer in deepest if layer.shape and layer.shape[1] != classes]
    return (features or deepest)[-1].name


def _detection_layer(usable: list[LayerInfo]) -> str:
    """A detector's default: the last layer of its backbone's body (``backbone.body.layer4``
    of a torchvision R-CNN, the outermost module of that output as for a classifier), the
    features every head reads; the FPN after it outputs a dict of levels, not one map.
    Without such a body: the last layer at the coarsest resolution."""
    for prefix in ("backbone.body.", "backbone.features.", "backbone."):
        body = [
            layer
            for layer in usable
            if layer.name.startswith(prefix) or layer.name == prefix.rstrip(".")
        ]
        if body:
            return body[-1].name
    coarsest = min(layer.grid[0] * layer.grid[1] for layer in usable)
    return [layer for layer in usable if layer.grid[0] * layer.grid[1] == coarsest][-1].name


def resolve_layers(
    trace: ModelTrace, patterns: list[str], *, spatial_only: bool, per_channel: bool = False
) -> list[str]:
    """Turn names and glob patterns into module names, in execution order.

    ``*`` matches within one dotted segment (``layer4.*`` → ``layer4.0`` … ``layer4.2``), ``**``
    across segments. An exact name that is not spatial is refused when ``spatial_only``; layers a
    glob matches that are not spatial are left out silently (``features.*`` includes ReLUs and
    pools, which are spatial, but a glob over a classifier would catch Linear layers too).
    ``per_channel``: layers with one value per channel (``LayerInfo.per_channel``) are
    welcome too.
    """

    def usable(info: LayerInfo) -> bool:
        return not spatial_only or info.spatial or (per_channel and info.per_channel)

    chosen: list[str] = []
    for pattern in patterns:
        if pattern in trace.names:
            info = trace.get(pattern)
            if not usable(info):
                raise _not_spatial(trace, info, per_channel)
            chosen.append(pattern)
            continue
        if any(char in pattern for char in "*?["):
            regex = _glob_regex(pattern)
            matches = [
                layer.name
                for layer in trace.layers
                if regex.fullmatch(layer.name) and usable(layer)
            ]
            if matches:
                chosen.extend(matches)
                continue
            raise UsageError(
                f"no {'spatial ' if spatial_only else ''}layer matches '{pattern}'",
                hint=_layers_hint(trace, pattern),
            )
        raise UsageError(f"unknown layer '{pattern}'", hint=_layers_hint(trace, pattern))
    order = {layer.name: layer.order for layer in trace.layers}
    return sorted(dict.fromkeys(chosen), key=lambda name: order[name])


def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": ".*", "*": "[^.]*", "?": "[^.]"}
    return re.compile("".join(table.get(part, re.escape(part)) for part in parts))


def _layers_hint(trace: ModelTrace, wrong: str) -> str:
    near = closest(wrong, trace.names)
    listing = "`featviz layers --model MODEL`"
    return f"{near}; list them all with {listing}" if near else f"list the layers with {listing}"


def _not_spatial(trace: ModelTrace, info: LayerInfo, per_channel: bool = False) -> UsageError:
    shape = "no tensor output" if info.shape is None else f"output shape {list(info.shape)}"
    candidates = [layer.name for layer in trace.cam_candidates() if not layer.pooled][-3:]
    if per_channel:
        what = "no feature maps, patch tokens or one value per channel to rank images by"
    else:
        what = "no spatial output (feature maps or patch tokens) to draw"
    return UsageError(
        f"layer '{info.name}' ({info.type_name}, {shape}) has {what}",
        hint=f"try one of the last spatial layers: {', '.join(candidates)}",
    )
