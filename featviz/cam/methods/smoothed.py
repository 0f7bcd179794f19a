"""Methods that average many perturbed forwards of each image: SS-CAM and IS-CAM (Score-CAM's
masked inputs with noise added to the masks, or scaled up step by step) and Smooth Grad-CAM++
(Grad-CAM++'s derivatives averaged over noisy copies of the input).

Notation as in gradient.py; X the normalised input (N, 3, H, W); M_k = U(minmax(A_k)), the
channel min-max scaled at the layer's resolution ((A_k − min) / (max − min + 1e-8)), then
upsampled bilinearly to the input (U), as torchcam 0.5 builds it; on a video model's clips,
the channel's (t, h, w) map min-max scaled over all its frames, then brought to the clip's
(T, H, W) trilinearly. Noise is drawn from each image's own generator
(``CamContext.generator``): the same maps for the same image and ``--seed``, whatever else is
in the batch. Extra forwards run in chunks of ``batch_size`` rows, each row one perturbed copy
of one image.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from featviz.cam.base import CamMethod
from featviz.cam.context import CamContext, forward_for_cam
from featviz.layers.outputs import logits_of
from featviz.tasks.base import replaying

_MASK_EPS = 1e-8  # torchcam's: a constant channel gives an all-zero mask


class _MaskedScoreCam(CamMethod):
    """α = softmax_k(mean over the S perturbations of S^c(X ∘ mask)); L = ReLU(Σ_k α_k A_k).

    Subclasses say how perturbation s of channel k's mask is made (``_masked``). Every extra
    forward yields every class's score, so the (N, K, classes) means are cached per layer: a
    second target for the same images costs nothing.
    """

    SAMPLES: ClassVar[int]

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        scores = ctx.cached((self.name, layer), lambda: self._mean_scores(ctx, layer))
        index = targets.view(-1, 1, 1).expand(-1, scores.shape[1], 1)
        return torch.softmax(scores.gather(2, index).squeeze(2), dim=1)

    def _mean_scores(self, ctx: CamContext, layer: str) -> torch.Tensor:
        """(N, K, classes): each channel's masked scores averaged over the perturbations."""
        activations = ctx.activation(layer)
        low = activations.amin(dim=(2, 3), keepdim=True)
        scaled = (activations - low) / (
            activations.amax(dim=(2, 3), keepdim=True) - low + _MASK_EPS
        )
        n, k = scaled.shape[:2]
        inputs = ctx.inputs.detach()
        total = torch.zeros(n, k, ctx.num_classes, device=inputs.device)
        rows = torch.arange(self.SAMPLES * k, device=inputs.device)  # sample-major, then channel
        with torch.no_grad():
            for i in range(n):
                generator = ctx.generator(i)
                for chunk in rows.split(self.batch_size):
                    channels = chunk % k
                    masks = ctx.at_input(layer, scaled[i, channels])
                    masked = self._masked(inputs[i], masks, chunk // k, generator)
                    with replaying(torch.full_like(chunk, i)):
                        logits, _ = logits_of(ctx.model(masked))
                    total[i].index_add_(0, channels, logits.float())
        return total / self.SAMPLES

    def _masked(
        self,
        image: torch.Tensor,
        masks: torch.Tensor,
        samples: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """(B, 3, H, W) inputs: ``image`` (3, H, W) under each row's perturbed mask (B, H, W),
        rows of perturbation ``samples`` (B,); a clip's (B, 3, T, H, W) under (B, T, H, W)."""
        raise NotImplementedError


class SsCam(_MaskedScoreCam):
    """SS-CAM (Wang et al. 2020): mask M_k + δ, δ ~ N(0, σ²) per input pixel, fresh for each of
    ``SAMPLES`` = 35 draws, σ = ``SIGMA`` = 2, as torchcam's defaults. Noise for image i is drawn
    in the order of the rows: draw s, then channel k, one (H, W) field each."""

    name = "sscam"
    SAMPLES = 35
    SIGMA = 2.0

    def _masked(self, image, masks, samples, generator):
        noise = torch.randn(masks.shape, generator=generator, device=masks.device)
        return image * (masks + self.SIGMA * noise)[:, None]


class IsCam(_MaskedScoreCam):
    """IS-CAM (Naidu et al. 2020) as torchcam computes it: for s = 1…S (``SAMPLES`` = 10), the
    input X ∘ M_k scaled by c_s = Σ_{j≤s} j/S (1/S, 3/S, …, (S+1)/2); no noise: deterministic."""

    name = "iscam"
    SAMPLES = 10

    def _masked(self, image, masks, samples, generator):
        steps = (samples + 1).to(masks.dtype)
        coefficient = steps * (steps + 1) / (2 * self.SAMPLES)  # Σ_{j=1..s} j / S
        return coefficient.view(-1, *(1,) * masks.dim()) * image * masks[:, None]


class SmoothGradCamPlusPlus(CamMethod):
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++'s eq. 19 with the derivatives
    averaged over ``SAMPLES`` = 4 noisy copies X + δ, δ ~ N(0, σ²), σ = ``SIGMA`` = 0.3 on the
    normalised input (torchcam's defaults):

    D_p = mean_s (g_s)^p for p = 1, 2, 3;  a_kij = D2 / (2·D2 + (Σ_ab A_kab)·D3), 0 where that
    is 0;  w_k = Σ_ij a_kij·ReLU(D1_kij);  L = ReLU(Σ_k w_k A_k), A the clean image's.

    With σ = 0 this is gradcam++. torchcam 0.5 differs in three places, all kept out here: its
    denominator sums A·D3 over positions, its ReLU takes the last sample's gradient rather than
    the mean, and its map multiplies the last noisy copy's activations.
    """

    name = "smoothgradcam++"
    SAMPLES = 4
    SIGMA = 0.3

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        key = ("smoothgradcam++", layer, *targets.tolist())
        d1, d2, d3 = ctx.cached(key, lambda: self._moments(ctx, layer, targets))
        activation_sum = ctx.activation(layer).sum(dim=(2, 3), keepdim=True)
        denominator = 2 * d2 + activation_sum * d3
        nonzero = denominator != 0
        alpha = torch.where(nonzero, d2 / torch.where(nonzero, denominator, 1), 0)
        return (alpha * d1.clamp(min=0)).sum(dim=(2, 3))

    def _moments(
        self, ctx: CamContext, layer: str, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each (N, K, h, w): the mean over the noisy copies of g, g² and g³."""
        inputs = ctx.inputs.detach()
        n = len(inputs)
        shape = (self.SAMPLES, *inputs.shape[1:])
        noise = torch.stack(  # (N, S, 3, H, W): image i's draws from its own generator
            [torch.randn(shape, generator=ctx.generator(i), device=inputs.device) for i in range(n)]
        )
        noisy = (inputs[:, None] + self.SIGMA * noise).flatten(0, 1)
        images = torch.arange(n, device=inputs.device).repeat_interleave(self.SAMPLES)
        moments = None
        for chunk in torch.arange(len(noisy), device=inputs.device).split(self.batch_size):
            with replaying(images[chunk]):
                noisy_ctx = forward_for_cam(
                    ctx.model, noisy[chunk], [layer], ctx.calls, layouts=ctx.layouts
                )
                g = noisy_ctx.gradients(targets[images[chunk]])[layer]
            powers = torch.stack([g, g * g, g * g * g])  # (3, B, K, h, w)
            if moments is None:
                moments = torch.zeros(3, n, *g.shape[1:], device=g.device)
            moments.index_add_(1, images[chunk], powers)
        return tuple(moments / self.SAMPLES)
