"""What every CAM method shares: the method base class and the map helpers (normalise,
upsample, heatmap, fuse). The forward they all read is in cam/context.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from featviz.cam.registry import ATTENTION, INPUT, MethodInfo, method_info
from featviz.errors import UsageError

if TYPE_CHECKING:
    from featviz.cam.context import CamContext
from featviz.layers.grids import resized


def logits_match(predicted: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether two (N, classes) score tensors agree up to float32 summation-order noise.

    Reordered float32 sums differ by ~1e-6 relative; a structurally different computation
    (another layer, a different pooling) differs by far more than the 1e-3 allowed here. The
    tolerance is relative to the largest score only: random-init networks can have scores of
    1e-8, where any absolute floor would let every computation pass.
    """
    reference = reference.detach().float()
    if predicted.shape != reference.shape:
        return False
    atol = 1e-3 * float(reference.abs().max())
    return torch.allclose(predicted.detach().float(), reference, rtol=1e-3, atol=atol)


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, and 0 where the denominator is 0 (never NaN or inf from 0/0)."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator / torch.where(nonzero, denominator, 1), 0)


def video_refusal(name: str) -> UsageError:
    """What a method that does not take clips (``CamMethod.takes_clips``) says to a video
    model."""
    return UsageError(
        f"--method {name} does not take video clips yet",
        hint="the layer methods do (gradcam, layercam, scorecam…), and the gradient and "
        "occlusion methods at the pixels (saliency, integratedgradients, occlusion…)",
    )


class CamMethod:
    """A CAM method: a class sets ``name`` and overrides ``_weights`` or ``_map``.

    ``_weights`` returns (N, K) channel weights and the base sums Σ_k w_k A_k; methods whose map
    is not a channel-weighted sum override ``_map`` instead. The base applies the method's ReLU
    (``relu = False`` keeps the signed map, hirescam) and returns float32. What a method needs
    and whether it is class-specific is said once, in its registry entry (``info``).
    """

    name: ClassVar[str]
    relu: ClassVar[bool] = True
    # Its backward passes switch what the ReLUs send back (guided backpropagation): the batch's
    # forward then runs with switchable ReLUs (featviz.layers.relus) and serves it too.
    relu_rules: ClassVar[bool] = False
    # It works on (N, 3, H, W) pictures only (its relevance rules or token scores are not
    # written for clips): a video model's (N, 3, T, H, W) clips are refused before the run
    # rather than failing clip by clip.
    images_only: ClassVar[bool] = False

    @property
    def info(self) -> MethodInfo:
        return method_info(self.name)

    @property
    def takes_clips(self) -> bool:
        """Whether a video model's (N, 3, T, H, W) clips can be explained: a pixel-level
        method's map is then (N, T, H, W), every voxel's."""
        return not self.images_only

    def __init__(self, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise UsageError(f"the CAM batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size

    def layers_for(self, layers: list[str]) -> list[str]:
        """The layers this method makes maps of when ``layers`` were asked for: those, or the
        pseudo-layer ``ATTENTION`` (``info.needs_attention``) or ``INPUT`` (``info.pixel_level``:
        one map at the input's resolution, whatever the layers)."""
        if self.info.needs_attention:
            return [ATTENTION]
        return [INPUT] if self.info.pixel_level else list(layers)

    def compute(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        """The (N, h, w) float32 map of ``layer`` for ``targets`` (N,), one class per image.

        At layer resolution (the input's for the pseudo-layer ``INPUT``), after the method's own
        ReLU and before any normalisation; a map of zeros (nothing found) is a valid answer.
        ``layer`` is one that ``layers_for`` returned.
        """
        if ctx.inputs.dim() != 4 and not self.takes_clips:  # --method all on a video model
            raise video_refusal(self.name)
        if layer not in (ATTENTION, INPUT):
            ctx.check_layer(layer)
        targets = ctx.check_targets(targets)
        maps = self._map(ctx, layer, targets)
        if self.relu:
            maps = maps.clamp(min=0)
        return maps.float()

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        weights = self._weights(ctx, layer, targets)
        return torch.einsum("nk,nkhw->nhw", weights, ctx.activation(layer))

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must override _weights or _map")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, batch_size={self.batch_size})"


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """(N, h, w) maps (a clip's (N, t, h, w)) → ReLU, then each map min-max scaled to [0, 1];
    a constant map → zeros."""
    maps = maps.float().clamp(min=0)
    flat = maps.flatten(1)
    per_map = (-1,) + (1,) * (maps.ndim - 1)
    low = flat.amin(dim=1).view(per_map)
    span = flat.amax(dim=1).view(per_map) - low
    return safe_divide(maps - low, span)


def heatmap(layer_map: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """One (h, w) map at layer resolution → the (H, W) heatmap in [0, 1] over an image of
    ``size`` = (H, W): upsampled bilinearly first, then normalised, so the colours use the
    whole range at the image's own resolution. A video layer's (t, h, w) map → the (T, H, W)
    heatmaps of its clip's frames, ``size`` = (T, H, W), upsampled in time too and
    normalised over the whole clip (a frame where nothing happens stays dark)."""
    # In place: at a photo's full resolution each temporary would cost 4 bytes a pixel.
    values = resized(layer_map[None], size)[0].clamp_(min=0)
    low, high = values.min(), values.max()
    span = high - low
    if span == 0:
        return values.zero_()
    return values.sub_(low).div_(span)


def fuse(heatmaps: list[torch.Tensor]) -> torch.Tensor:
    """Several layers' (H, W) heatmaps of one image and class → their element-wise maximum."""
    return torch.stack(heatmaps).amax(dim=0)
