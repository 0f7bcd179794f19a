"""One forward per batch that every CAM method reads: activations, scores, gradients, attention.

``forward_for_cam`` runs a batch once with the tapped layers turned into autograd leaves (see
featviz.layers.taps) and returns a ``CamContext``. Methods read activations and gradients from it as
(N, K, h, w) maps whatever the layer's layout (featviz.layers.layouts): tokens and channels-last
outputs are converted the same way for both. ``CamContext.gradients`` answers
d(score)/d(activation) for every tapped layer and every image in ONE ``torch.autograd.grad``
call, a different target class per image: in eval mode the images of a batch do not interact,
so the gradient of the summed scores holds each image's own gradient. Parameters stay frozen
(the caller freezes them), so no weight gradient is ever computed.

With ``attention=True`` the forward also records every self-attention matrix
(featviz.layers.attention) for the rollout methods; gradients with respect to them are then
gradients of the model's own tensors, which needs the graph from the input on (the input becomes the
leaf). ``input_gradients=True`` (the pixel-level methods) makes the input a leaf too, and the same
one backward then also answers d(score)/d(input): the taps keep the graph through to the input
when their outputs already require gradients (featviz.layers.taps).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from featviz.errors import RunError, UsageError
from featviz.layers.attention import AttentionCapture
from featviz.layers.grids import upsample, upsample_clip
from featviz.layers.layouts import Layout
from featviz.layers.outputs import logits_of
from featviz.layers.relus import ReluSwitch, switchable_relus
from featviz.layers.taps import LayerTaps

T = TypeVar("T")
_NCHW = Layout("nchw")


@dataclass(eq=False)
class CamContext:
    """One forward of a batch, and what methods computed from it.

    ``inputs`` (N, 3, H, W) as the network saw them (a video model's clips: (N, 3, T, H, W));
    ``logits`` (N, classes) pre-softmax scores, still attached to the graph;
    ``activations[layer]`` the tapped outputs as the layer returned them (autograd leaves, or
    tensors that depend on an earlier tapped leaf), ``layouts[layer]`` how they become maps;
    ``attentions`` the (N, heads, T, T) attention matrices in execution order when they were
    captured, over ``token_prefix`` prefix tokens and the patch tokens;
    ``class_token``: the head reads the first prefix token (else it averages the patches).
    Drop the context when the batch is done: it keeps the graph alive.
    """

    model: nn.Module
    inputs: torch.Tensor
    logits: torch.Tensor
    activations: dict[str, torch.Tensor]
    layers: list[str]
    calls: Mapping[str, int] | None = None
    layouts: Mapping[str, Layout] = field(default_factory=dict)
    attentions: list[torch.Tensor] = field(default_factory=list)
    # What each block holding those attention matrices returned, in the order the blocks ran:
    # (block name, (N, T, D) tokens in the graph, the index of its attention in ``attentions``).
    blocks: list[tuple[str, torch.Tensor, int]] = field(default_factory=list)
    token_prefix: int = 1
    class_token: bool = True
    # Each image's seed for the methods that draw noise (from --seed and the image's position in
    # the run, never its place in the batch): ``generator(i)``.
    seeds: tuple[int, ...] = ()
    # The lowest and highest value each input channel can take (pixel 0 and 255 normalised),
    # for the methods that need the input's box (lrp); None: each image's own range.
    pixel_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # The input is a leaf of the graph and ``input_gradient`` answers d(score)/d(input).
    input_gradients: bool = False
    # The forward ran with switchable ReLUs (featviz.layers.relus): a backward of its graph
    # inside ``relus.rule_of(GUIDED)`` gives guided gradients.
    relus: ReluSwitch | None = None
    _memo: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @property
    def input_hw(self) -> tuple[int, int]:
        return tuple(self.inputs.shape[-2:])

    def generator(self, i: int) -> torch.Generator:
        """A fresh generator for image ``i``'s noise, on the inputs' device: the same numbers
        for the same image and seed, whatever else is in its batch."""
        seed = self.seeds[i] if self.seeds else 0
        return torch.Generator(device=self.inputs.device).manual_seed(seed)

    def pixel_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C) lowest and highest possible value of every image's input channels:
        ``pixel_bounds``, or else each image's own minimum and maximum per channel."""
        n, c = self.inputs.shape[:2]
        if self.pixel_bounds is None:
            flat = self.inputs.detach().float().flatten(2)
            return flat.amin(dim=2), flat.amax(dim=2)
        low, high = (
            torch.tensor(bound, dtype=torch.float32, device=self.inputs.device).expand(n, c)
            for bound in self.pixel_bounds
        )
        return low, high

    def layout(self, layer: str) -> Layout:
        return self.layouts.get(layer, _NCHW)

    def activation(self, layer: str) -> torch.Tensor:
        """The tapped activations of ``layer`` as (N, K, h, w) maps, detached, float32."""
        self.check_layer(layer)
        raw = self.activations[layer].detach().float()
        return self.layout(layer).to_nchw(raw, self.input_hw)

    def at_input(self, layer: str, maps: torch.Tensor) -> torch.Tensor:
        """(B, h, w) maps of ``layer`` brought to the input's pixels: (B, H, W) bilinearly;
        for clips, a video layer's stacked frames (layers/layouts.py) cut into (B, t, h, w)
        and brought to the clip's (B, T, H, W) trilinearly."""
        if self.inputs.dim() == 4:
            return upsample(maps, self.input_hw)
        frames = self.layout(layer).frames(tuple(self.activations[layer].shape))
        return upsample_clip(maps.unflatten(1, (frames, -1)), tuple(self.inputs.shape[2:]))

    def as_layer_output(self, layer: str, maps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) maps back in ``layer``'s own layout, for images ``rows`` (B,): what the
        layers after it read (prefix tokens taken from those images' own outputs)."""
        like = self.activations[layer].detach()[rows]
        return self.layout(layer).from_nchw(maps.to(like.dtype), like)

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
        if targets.is_inference():  # an index saved for backward must be a normal tensor
            with torch.inference_mode(False):
                targets = targets.clone()
        return targets.long()

    def gradients(self, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """d(logits[n, targets[n]])/d(activations) per layer, (N, K, h, w) maps each, cached."""
        grads, _, _ = self._all_gradients(targets)
        return grads

    def attention_gradients(self, targets: torch.Tensor) -> list[torch.Tensor]:
        """d(logits[n, targets[n]])/d(A_b) for every captured attention matrix, cached."""
        _, grads, _ = self._all_gradients(targets)
        return grads

    def input_gradient(self, targets: torch.Tensor) -> torch.Tensor:
        """d(logits[n, targets[n]])/d(inputs), (N, 3, H, W) float32, from the same backward as
        the layers' gradients; needs a context built with ``input_gradients=True``."""
        if not self.input_gradients:
            raise ValueError("this context was built with input_gradients=False")
        _, _, grad = self._all_gradients(targets)
        return grad

    def _all_gradients(
        self, targets: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
        targets = self.check_targets(targets)

        def picked(logits: torch.Tensor) -> torch.Tensor:
            return logits[torch.arange(len(targets), device=targets.device), targets]

        return self.cached(("gradients", *targets.tolist()), lambda: self._gradients(picked))

    def score_gradients(
        self, key: Hashable, score: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """d(score(logits)[n])/d(activations) per layer, (N, K, h, w) maps each, cached by ``key``.

        ``score`` maps the (N, classes) logits, still in the graph, to one (N,) score per image
        (a contrast of classes, say); like ``gradients``, one backward serves every layer.
        """
        grads, _, _ = self.cached(("score gradients", key), lambda: self._gradients(score))
        return grads

    def _gradients(
        self, score: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
        names = list(self.activations)
        wanted = [self.activations[name] for name in names] + list(self.attentions)
        if self.input_gradients:
            wanted.append(self.inputs)
        if not all(t.requires_grad for t in wanted):
            raise ValueError("this context was built with gradients=False")
        grads = (None,) * len(wanted)
        # Picking the scores is part of the graph: it must not run under the caller's
        # inference_mode or no_grad.
        with torch.inference_mode(False), torch.enable_grad():
            if self.logits.requires_grad:  # else no tapped layer is on the path to the scores
                grads = torch.autograd.grad(
                    score(self.logits).sum(),
                    wanted,
                    retain_graph=True,  # a second target for the same batch reuses the graph
                    allow_unused=True,
                )
        for name, grad in zip(names, grads):
            if grad is None:
                raise RunError(
                    f"the class scores do not depend on the output of layer '{name}', so it has "
                    "no gradient",
                    hint="pick a layer on the path to the output; `featviz layers --model "
                    "MODEL` lists them",
                )
        maps = {
            name: self.layout(name).to_nchw(grad.detach().float(), self.input_hw)
            for name, grad in zip(names, grads)
        }
        attention = [
            torch.zeros_like(a) if g is None else g.detach()
            for a, g in zip(self.attentions, grads[len(names) : len(names) + len(self.attentions)])
        ]
        pixels = None
        if self.input_gradients:
            grad = grads[-1]
            # None: the scores do not depend on the input at all (a constant model).
            pixels = torch.zeros_like(self.inputs) if grad is None else grad.detach()
            pixels = pixels.float()
        return maps, attention, pixels


def forward_for_cam(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str],
    calls: Mapping[str, int] | None = None,
    *,
    layouts: Mapping[str, Layout] | None = None,
    gradients: bool = True,
    attention: bool = False,
    input_gradients: bool = False,
    relu_rules: bool = False,
    token_prefix: int = 1,
    class_token: bool = True,
) -> CamContext:
    """Forward ``x`` (N, 3, H, W) once with gradients reaching ``layers``; hooks are gone after.

    ``calls`` (from ``ModelTrace.calls()``) says how often each layer runs per forward, so a
    module that runs several times is tapped at its last call; ``layouts`` (from
    ``ModelTrace.layouts()``) how each layer's output becomes maps (default: (N, C, h, w)).
    ``gradients=False``: no graph is kept, for methods that never ask for gradients (memory
    then stays that of inference). ``attention``: also capture the attention matrices. When
    the scores are not the model's whole output (a tuple, a dict's ``logits``), a warning says
    which part was taken. ``input_gradients``: the input becomes a leaf, for
    ``CamContext.input_gradient`` (with ``gradients`` only); ``relu_rules``: the ReLU modules
    run switchable (``CamContext.relus``, with ``input_gradients`` only). ``token_prefix``: the
    prefix tokens in front of the patch tokens that the attention matrices cover;
    ``class_token``: whether the head reads the first of them.
    """
    layouts = dict(layouts or {})
    # Grad mode even when the caller is under inference_mode: CAM needs the graph after the taps.
    with torch.inference_mode(False), torch.set_grad_enabled(gradients):
        if x.is_inference():
            x = x.clone()
        input_gradients = gradients and input_gradients
        if gradients and (attention or input_gradients):
            # The attention matrices of every block, or the input itself, in the graph.
            x = x.detach().requires_grad_()
        capture = AttentionCapture(model) if attention else None
        relus = switchable_relus(model) if input_gradients and relu_rules else nullcontext()
        with LayerTaps(model, layers, calls=calls, grad=gradients) as taps, relus as switch:
            if capture is None:
                output = taps.run(x)
            else:
                with capture:
                    output = taps.run(x)
    logits = _class_scores(output, x.shape[0])
    _check_maps(taps, layouts)
    return CamContext(
        model=model,
        inputs=x,
        logits=logits,
        activations=dict(taps.outputs),
        layers=list(taps.layers),
        calls=calls,
        layouts=layouts,
        attentions=[] if capture is None else list(capture.maps),
        blocks=[] if capture is None else list(capture.blocks),
        token_prefix=token_prefix,
        class_token=class_token,
        input_gradients=input_gradients,
        relus=switch,
    )


def _class_scores(output: Any, images: int) -> torch.Tensor:
    """The (N, classes) scores in the model's ``output``; a warning says which part of it they
    are when they are not the whole output (a tuple's, a dict's ``logits``)."""
    logits, source = logits_of(output)
    if source != "output":
        warnings.warn(
            f"the model returns a {type(output).__name__}: featviz explains {source}",
            stacklevel=3,  # where forward_for_cam was called
        )
    if logits.ndim != 2 or logits.shape[0] != images:
        raise RunError(
            f"the model's {source} has shape {list(logits.shape)}; a CAM needs class scores of "
            f"shape [N, classes] for N = {images} images"
        )
    return logits


def _check_maps(taps: LayerTaps, layouts: Mapping[str, Layout]) -> None:
    """Every tapped layer ran, and its output is maps: (N, C, h, w), or tokens its layout
    turns into maps."""
    for name in taps.layers:
        if name not in taps.outputs:
            raise RunError(f"layer '{name}' did not run during the forward pass")
        if name not in layouts and taps.outputs[name].ndim != 4:
            raise UsageError(
                f"layer '{name}' has output shape {list(taps.outputs[name].shape)}; a CAM needs "
                "feature maps or patch tokens",
                hint="`featviz layers --model MODEL` lists the spatial layers",
            )
