"""What every CAM method shares: one grad-mode forward per batch, its gradients, the method base.

``forward_for_cam`` runs a batch once with the tapped layers turned into autograd leaves (see
featviz.hooks) and returns a ``CamContext``. Methods read activations and gradients from it;
``CamContext.gradients`` answers d(score)/d(activation) for every tapped layer and every image in
ONE ``torch.autograd.grad`` call, a different target class per image: in eval mode the images of
a batch do not interact, so the gradient of the summed scores holds each image's own gradient.
Parameters stay frozen (the caller freezes them), so no weight gradient is ever computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from featviz.cam.registry import MethodInfo, method_info
from featviz.errors import RunError, UsageError
from featviz.hooks import LayerTaps
from featviz.scores import logits_of

T = TypeVar("T")


@dataclass(eq=False)
class CamContext:
    """One grad-mode forward of a batch, and what methods computed from it.

    ``inputs`` (N, 3, H, W) as the network saw them; ``logits`` (N, classes) pre-softmax scores,
    still attached to the graph; ``activations[layer]`` (N, K, h, w) autograd leaves (or tensors
    that depend on an earlier tapped leaf). Drop the context when the batch is done: it keeps
    the graph from the taps to the logits alive.
    """

    model: nn.Module
    inputs: torch.Tensor
    logits: torch.Tensor
    activations: dict[str, torch.Tensor]
    layers: list[str]
    calls: Mapping[str, int] | None = None
    _memo: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def activation(self, layer: str) -> torch.Tensor:
        """The tapped (N, K, h, w) activations of ``layer``, detached, float32."""
        self.check_layer(layer)
        return self.activations[layer].detach().float()

    def check_layer(self, layer: str) -> None:
        if layer not in self.activations:
            raise ValueError(
                f"layer '{layer}' was not tapped in this forward (tapped: {', '.join(self.layers)})"
            )

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, once per key for this batch (extra forwards reused across targets)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def check_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """``targets`` as an (N,) int64 tensor on the logits' device, every class in range."""
        targets = torch.as_tensor(targets, device=self.logits.device)
        n = self.logits.shape[0]
        if targets.is_floating_point() or targets.shape != (n,):
            raise ValueError(
                f"targets must be an integer tensor of shape ({n},), "
                f"got {targets.dtype} of shape {tuple(targets.shape)}"
            )
        outside = targets[(targets < 0) | (targets >= self.num_classes)]
        if outside.numel():
            raise UsageError(
                f"class {int(outside[0])} is out of range: the model has {self.num_classes} "
                f"classes (0–{self.num_classes - 1})"
            )
        return targets.long()

    def gradients(self, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """d(logits[n, targets[n]])/d(activations) per layer, (N, K, h, w) each, cached."""
        targets = self.check_targets(targets)
        return self.cached(("gradients", *targets.tolist()), lambda: self._gradients(targets))

    def _gradients(self, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        names = list(self.activations)
        grads = (None,) * len(names)
        # Picking the scores is part of the graph: it must not run under the caller's
        # inference_mode or no_grad.
        with torch.inference_mode(False), torch.enable_grad():
            if targets.is_inference():
                targets = targets.clone()
            if not self.activations or not next(iter(self.activations.values())).requires_grad:
                raise ValueError("this context was built with gradients=False")
            if self.logits.requires_grad:
                rows = torch.arange(len(targets), device=targets.device)
                grads = torch.autograd.grad(
                    self.logits[rows, targets].sum(),
                    [self.activations[name] for name in names],
                    retain_graph=True,  # a second target for the same batch reuses the graph
                    allow_unused=True,
                )
        for name, grad in zip(names, grads):
            if grad is None:
                raise RunError(
                    f"the class scores do not depend on the output of layer '{name}', so it has "
                    "no gradient",
                    hint="pick a layer on the path to the output (layers that return a tuple "
                    "are tapped at their first tensor only); `featviz layers --model MODEL` "
                    "lists them",
                )
        return {name: grad.detach() for name, grad in zip(names, grads)}


def forward_for_cam(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str],
    calls: Mapping[str, int] | None = None,
    *,
    gradients: bool = True,
) -> CamContext:
    """Forward ``x`` (N, 3, H, W) once with gradients reaching ``layers``; hooks are gone after.

    ``calls`` (from ``ModelTrace.calls()``) says how often each layer runs per forward, so a
    module that runs several times is tapped at its last call. ``gradients=False``: no graph is
    kept, for methods that never ask for gradients (their memory then stays that of inference).
    When the scores are not the model's whole output (a tuple, a dict's ``logits``), a warning
    says which part was taken.
    """
    # Grad mode even when the caller is under inference_mode: CAM needs the graph after the taps.
    with torch.inference_mode(False), torch.set_grad_enabled(gradients):
        if x.is_inference():
            x = x.clone()
        with LayerTaps(model, layers, calls=calls, grad=gradients) as taps:
            output = taps.run(x)
    logits, source = logits_of(output)
    if source != "output":
        warnings.warn(
            f"the model returns a {type(output).__name__}: featviz explains {source}",
            stacklevel=2,
        )
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise RunError(
            f"the model's {source} has shape {list(logits.shape)}; a CAM needs class scores of "
            f"shape [N, classes] for N = {x.shape[0]} images"
        )
    for name in taps.layers:
        if name not in taps.outputs:
            raise RunError(f"layer '{name}' did not run during the forward pass")
        if taps.outputs[name].ndim != 4:
            raise UsageError(
                f"layer '{name}' has output shape {list(taps.outputs[name].shape)}; a CAM needs "
                "a spatial (N, C, H, W) output",
                hint="`featviz layers --model MODEL` lists the spatial layers",
            )
    return CamContext(
        model=model,
        inputs=x,
        logits=logits,
        activations=dict(taps.outputs),
        layers=list(taps.layers),
        calls=calls,
    )


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


class CamMethod:
    """A CAM method: a class sets ``name`` and overrides ``_weights`` or ``_map``.

    ``_weights`` returns (N, K) channel weights and the base sums Σ_k w_k A_k; methods whose map
    is not a channel-weighted sum override ``_map`` instead. The base applies the method's ReLU
    (``relu = False`` keeps the signed map, hirescam) and returns float32. What a method needs
    and whether it is class-specific is said once, in its registry entry (``info``).
    """

    name: ClassVar[str]
    relu: ClassVar[bool] = True

    @property
    def info(self) -> MethodInfo:
        return method_info(self.name)

    def __init__(self, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise UsageError(f"the CAM batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size

    def compute(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        """The (N, h, w) float32 map of ``layer`` for ``targets`` (N,), one class per image.

        At layer resolution, after the method's own ReLU and before any normalisation; a map of
        zeros (nothing found) is a valid answer.
        """
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
    """(N, h, w) maps → ReLU, then each map min-max scaled to [0, 1]; a constant map → zeros."""
    maps = maps.float().clamp(min=0)
    flat = maps.flatten(1)
    low = flat.amin(dim=1)[:, None, None]
    span = flat.amax(dim=1)[:, None, None] - low
    return safe_divide(maps - low, span)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) → (N, H, W) for ``size`` = (H, W), bilinear with ``align_corners=False``."""
    return F.interpolate(
        maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False
    )[:, 0]


def heatmap(layer_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One (h, w) map at layer resolution → the (H, W) heatmap in [0, 1] over an image of
    ``size`` = (H, W): upsampled bilinearly first, then normalised, so the colours use the
    whole range at the image's own resolution."""
    return normalise(upsample(layer_map[None], size))[0]


def fuse(heatmaps: list[torch.Tensor]) -> torch.Tensor:
    """Several layers' (H, W) heatmaps of one image and class → their element-wise maximum."""
    return torch.stack(heatmaps).amax(dim=0)
