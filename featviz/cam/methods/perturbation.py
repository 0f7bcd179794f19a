"""Score-CAM and Ablation-CAM: channel weights from extra forwards instead of gradients.

Both run one extra forward per channel of the tapped layer, K per image, in chunks of
``batch_size`` rows. Each forward yields every class's score, so the (N, K, classes) scores are
cached in the CamContext: a second target class for the same images costs no forward at all.

Ablation-CAM only needs the network AFTER the tapped layer (featviz.cam.suffix): ``torch.fx``
splits the graph at the tapped module's last call and the suffix runs on chunks of ablated
activations. Where fx cannot trace the model (data-dependent control flow, Hugging Face models)
the whole network runs with a hook that swaps in the ablated activations: same weights, slower,
and said so in a warning and in ``AblationCam.fallbacks``.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn

from featviz.cam.base import CamMethod, logits_match, safe_divide
from featviz.cam.context import CamContext
from featviz.cam.suffix import HookedForward, Resume, Split
from featviz.errors import first_line
from featviz.layers.outputs import logits_of
from featviz.tasks.base import replaying

# Score-CAM's mask denominator max − min + ε: a constant channel gives an all-zero mask.
_MASK_EPS = 1e-8
# Ablation-CAM's (S − S_k) / (S + ε), as in the paper.
_ABLATION_EPS = 1e-7


class ScoreCam(CamMethod):
    """M_k = minmax(upsample(A_k)); s_k = S^c(X ∘ M_k); α = softmax_k(s); L = ReLU(Σ_k α_k A_k).

    X is the normalised input, so a masked-out pixel becomes the dataset mean. On a video
    model's clips M_k is the channel's (t, h, w) map brought to the clip's (T, H, W)
    trilinearly and min-max scaled over the whole clip.
    """

    name = "scorecam"

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        scores = ctx.cached(("scorecam", layer), lambda: self._masked_scores(ctx, layer))
        return torch.softmax(_pick(scores, targets), dim=1)

    def _masked_scores(self, ctx: CamContext, layer: str) -> torch.Tensor:
        """(N, K, classes) scores of every image masked by each of its upsampled channels."""
        activations = ctx.activation(layer)
        inputs = ctx.inputs.detach()
        n, k = activations.shape[:2]
        images, channels = _rows(n, k, first=0, device=inputs.device)
        scores = torch.empty(n * k, ctx.num_classes, device=inputs.device)
        with torch.no_grad():
            for start in range(0, n * k, self.batch_size):
                image = images[start : start + self.batch_size]
                masks = ctx.at_input(
                    layer, activations[image, channels[start : start + self.batch_size]]
                )
                every = tuple(range(1, masks.dim()))
                low = masks.amin(dim=every, keepdim=True)
                masks = (masks - low) / (masks.amax(dim=every, keepdim=True) - low + _MASK_EPS)
                with replaying(image):
                    logits, _ = logits_of(ctx.model(inputs[image] * masks[:, None]))
                scores[start : start + len(image)] = logits.float()
        return scores.view(n, k, -1)


class AblationCam(CamMethod):
    """w_k = (S^c − S^c with channel k of A zeroed) / (S^c + ε); L = ReLU(Σ_k w_k A_k).

    ``fallbacks`` maps each layer whose ablations re-run the whole network to the reason.
    """

    name = "ablationcam"

    def __init__(self, *, batch_size: int = 32) -> None:
        super().__init__(batch_size=batch_size)
        self.fallbacks: dict[str, str] = {}
        # One fx split per model and layer for the whole run (None: use the fallback); weak
        # keys, so a model can still be freed.
        self._splits: weakref.WeakKeyDictionary[nn.Module, dict[str, Split | None]] = (
            weakref.WeakKeyDictionary()
        )

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        scores = _pick(ctx.cached(("ablationcam", layer), lambda: self.scores(ctx, layer)), targets)
        original = scores[:, :1]
        return safe_divide(original - scores[:, 1:], original + _ABLATION_EPS)

    def scores(self, ctx: CamContext, layer: str) -> torch.Tensor:
        """(N, 1 + K, classes): scores with nothing ablated, then with channel k zeroed."""
        split = self._split(ctx.model, layer)
        if split is not None:
            try:
                scores = self._ablated_scores(ctx, layer, split.bind(ctx.inputs.detach()))
                if logits_match(scores[:, 0], ctx.logits):
                    return scores
                reason = "the split network does not reproduce the model's scores"
            except Exception as exc:  # any failure of the split: fall back
                reason = f"running the split network failed: {type(exc).__name__}: {exc}"
            self._give_up(ctx.model, layer, reason)
        return self._ablated_scores(
            ctx, layer, HookedForward(ctx.model, ctx.inputs, layer, ctx.calls)
        )

    def _ablated_scores(self, ctx: CamContext, layer: str, resume: Resume) -> torch.Tensor:
        activations = ctx.activation(layer)
        n, k = activations.shape[:2]
        images, channels = _rows(n, k, first=-1, device=activations.device)
        scores = torch.empty(n * (k + 1), ctx.num_classes, device=activations.device)
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                image = images[start : start + self.batch_size]
                channel = channels[start : start + self.batch_size]
                chunk = activations[image]
                ablated = torch.nonzero(channel >= 0).squeeze(1)
                chunk[ablated, channel[ablated]] = 0
                chunk = ctx.as_layer_output(layer, chunk, image)
                with replaying(image):
                    scores[start : start + len(image)] = resume(image, chunk).float()
        return scores.view(n, k + 1, -1)

    def _split(self, model: nn.Module, layer: str) -> Split | None:
        per_model = self._splits.setdefault(model, {})
        if layer not in per_model:
            try:
                per_model[layer] = Split(model, layer)
            except Exception as exc:  # fx raises many kinds on untraceable code
                self._give_up(
                    model,
                    layer,
                    f"torch.fx cannot trace the model: {type(exc).__name__}: {first_line(exc)}",
                )
        return per_model[layer]

    def _give_up(self, model: nn.Module, layer: str, reason: str) -> None:
        self._splits.setdefault(model, {})[layer] = None
        self.fallbacks[layer] = reason
        warnings.warn(
            f"ablationcam: cannot run only the layers after '{layer}' ({reason}); re-running "
            "the whole network for every chunk of ablated channels instead, which is slower",
            RuntimeWarning,
            stacklevel=3,
        )


def _rows(n: int, k: int, *, first: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Image and channel index of every extra forward: for each image, channels first … k−1."""
    channels = torch.arange(first, k, device=device)
    images = torch.arange(n, device=device).repeat_interleave(len(channels))
    return images, channels.repeat(n)


def _pick(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, R, classes) scores → (N, R), each image's own target class."""
    index = targets.view(-1, 1, 1).expand(-1, scores.shape[1], 1)
    return scores.gather(2, index).squeeze(2)
