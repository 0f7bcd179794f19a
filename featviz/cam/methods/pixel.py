"""Pixel-level attributions from gradients and perturbations of the input itself.

Each map is at the model input's resolution (the pseudo-layer ``INPUT``) and is the
attribution of the colour channels summed, as captum's visualiser sums them: (N, 3, H, W) →
(N, H, W), and a video model's clips (N, 3, T, H, W) → every voxel's (N, T, H, W). S^c is
the pre-softmax score of each image's own target class c, x the normalised input,
g = ∂S^c/∂x. Saliency and input × gradient read the batch's one backward
(``CamContext.input_gradient``); the others run extra forwards of copies of the images, in
chunks of ``batch_size`` rows whatever image each row copies (one image's 50 integration steps
and the next image's share a chunk).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch

from featviz.cam.base import CamMethod
from featviz.cam.context import CamContext
from featviz.layers.outputs import logits_of
from featviz.tasks.base import replaying

# Integrated gradients: captum's default, 50 Gauss–Legendre nodes on the straight path from the
# baseline 0 (the dataset's mean colour in normalised space).
IG_STEPS = 50
# SmoothGrad (Smilkov et al. 2017): noisy copies, the noise's σ a fraction of the input's range.
SMOOTHGRAD_SAMPLES = 25
SMOOTHGRAD_NOISE = 0.15
# Occlusion: square windows of the model input's pixels set to the baseline 0, every stride;
# on clips, through this many frames every OCCLUSION_FRAME_STRIDE frames.
OCCLUSION_WINDOW = 32
OCCLUSION_STRIDE = 16
OCCLUSION_FRAMES = 4
OCCLUSION_FRAME_STRIDE = 2

# (image index (B,), sample index (B,)) → the (B, 3, H, W) copies those rows run
Copies = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PixelMethod(CamMethod):
    """A pixel-level method: ``_attribution`` returns (N, 3, H, W); the map sums the channels.
    Signed: no ReLU (pictures and scores use the absolute value, see the registry)."""

    relu = False

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return self._attribution(ctx, targets).sum(dim=1)

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must override _attribution")


class Saliency(PixelMethod):
    """|g| per channel (Simonyan et al. 2014; captum's ``Saliency``, ``abs=True``)."""

    name = "saliency"

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        return ctx.input_gradient(targets).abs()


class InputXGradient(PixelMethod):
    """x · g per channel, signed (captum's ``InputXGradient``)."""

    name = "inputxgradient"

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        return ctx.inputs.detach().float() * ctx.input_gradient(targets)


class _SampledGradients(PixelMethod):
    """A method that averages gradients at copies of each image: ``weights`` (S,) per sample."""

    def _weighted_gradients(
        self, ctx: CamContext, targets: torch.Tensor, copies: Copies, weights: torch.Tensor
    ) -> torch.Tensor:
        """Σ_s weights[s]·∂S^c/∂x at copy s of each image: (N, 3, H, W)."""
        inputs = ctx.inputs.detach()
        n, samples = len(inputs), len(weights)
        images = torch.arange(n, device=inputs.device).repeat_interleave(samples)
        sample = torch.arange(samples, device=inputs.device).repeat(n)
        weights = weights.to(inputs.device, torch.float32)
        total = torch.zeros_like(inputs, dtype=torch.float32)
        for start in range(0, n * samples, self.batch_size):
            rows = slice(start, start + self.batch_size)
            grad = gradient_at(ctx, images[rows], copies(images[rows], sample[rows]), targets)
            total.index_add_(0, images[rows], grad * per_row(weights[sample[rows]], grad))
        return total


def per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) values shaped to multiply ``like``'s rows: (B, 1, 1, 1) for pictures, (B, 1, 1, 1,
    1) for clips."""
    return values.view(-1, *(1,) * (like.dim() - 1))


def gradient_at(
    ctx: CamContext, images: torch.Tensor, copies: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """∂S^c/∂copy for (B, 3, H, W) ``copies`` of the batch's images ``images`` (B,), c each
    image's target in ``targets`` (N,): one extra forward and backward, float32."""
    with torch.inference_mode(False), torch.enable_grad():
        leaf = copies.detach().clone().requires_grad_()
        with replaying(images):
            logits, _ = logits_of(ctx.model(leaf))
        picked = logits.gather(1, targets[images][:, None]).sum()
        (grad,) = torch.autograd.grad(picked, leaf)
    return grad.float()


class IntegratedGradients(_SampledGradients):
    """(x − x') · Σ_s w_s·g(x' + α_s(x − x')), baseline x' = 0, Gauss–Legendre α_s and w_s on
    [0, 1] (Sundararajan et al. 2017; captum's defaults)."""

    name = "integratedgradients"

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        nodes, weights = np.polynomial.legendre.leggauss(IG_STEPS)
        inputs = ctx.inputs.detach()
        alphas = torch.tensor(0.5 * (1 + nodes), dtype=inputs.dtype, device=inputs.device)

        def on_path(images: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
            return per_row(alphas[sample], inputs) * inputs[images]

        total = self._weighted_gradients(ctx, targets, on_path, torch.from_numpy(0.5 * weights))
        return inputs.float() * total


class SmoothGrad(_SampledGradients):
    """mean_s g(x + ε_s), ε_s ~ N(0, σ²), σ = 0.15·(max x − min x) per image; the noise is
    drawn from the image's own generator (``--seed`` and its place in the run). Signed."""

    name = "smoothgrad"

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        inputs = ctx.inputs.detach()
        drawn: dict[int, torch.Tensor] = {}

        def noisy(images: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
            wanted = set(images.tolist())
            for i in set(drawn) - wanted:  # rows go image by image: drop the images done
                del drawn[i]
            for i in wanted - set(drawn):
                drawn[i] = smoothgrad_noise(ctx, i)
            noise = torch.stack([drawn[i][s] for i, s in zip(images.tolist(), sample.tolist())])
            return inputs[images] + noise

        weights = torch.full((SMOOTHGRAD_SAMPLES,), 1 / SMOOTHGRAD_SAMPLES)
        return self._weighted_gradients(ctx, targets, noisy, weights)


def smoothgrad_noise(ctx: CamContext, i: int) -> torch.Tensor:
    """Image ``i``'s (SMOOTHGRAD_SAMPLES, 3, H, W) noise: the same for the same image and seed."""
    image = ctx.inputs[i].detach()
    sigma = SMOOTHGRAD_NOISE * float(image.max() - image.min())
    shape = (SMOOTHGRAD_SAMPLES, *image.shape)
    noise = torch.randn(shape, generator=ctx.generator(i), device=image.device, dtype=image.dtype)
    return noise * sigma


class Occlusion(PixelMethod):
    """Σ_w (S^c(x) − S^c(x with window w at 0))·1_w / Σ_w 1_w: each pixel's mean score drop over
    the windows covering it (captum's ``Occlusion`` with one window for all channels; on
    clips, each voxel's, the windows boxes of frames × pixels). The windows' scores for every
    class are cached: a second target costs no forward."""

    name = "occlusion"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        masks = occlusion_windows(tuple(ctx.inputs.shape[2:]), ctx.inputs.device)
        scores = ctx.cached("occlusion", lambda: self._occluded_scores(ctx, masks))
        rows = torch.arange(len(targets), device=scores.device)
        drops = ctx.logits.detach().float()[rows, targets][:, None] - scores[rows, :, targets]
        return torch.einsum("nk,k...->n...", drops, masks) / masks.sum(dim=0)

    def _occluded_scores(self, ctx: CamContext, masks: torch.Tensor) -> torch.Tensor:
        """(N, windows, classes): the scores with each window set to the baseline."""
        inputs = ctx.inputs.detach()
        n, k = len(inputs), len(masks)
        images = torch.arange(n, device=inputs.device).repeat_interleave(k)
        windows = torch.arange(k, device=inputs.device).repeat(n)
        scores = torch.empty(n * k, ctx.num_classes, device=inputs.device)
        with torch.no_grad():
            for start in range(0, n * k, self.batch_size):
                image = images[start : start + self.batch_size]
                kept = 1 - masks[windows[start : start + self.batch_size]]
                with replaying(image):
                    logits, _ = logits_of(ctx.model(inputs[image] * kept[:, None]))
                scores[start : start + len(image)] = logits.float()
        return scores.view(n, k, -1)


def occlusion_windows(size: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(windows, H, W) float masks, 1 inside each window: OCCLUSION_WINDOW squares every
    OCCLUSION_STRIDE pixels, plus one flush with the far edge where the stride does not reach
    it, so every pixel is covered (at most the input's size on a small input). A clip's
    ``size`` (T, H, W) → (windows, T, H, W): each square through OCCLUSION_FRAMES frames every
    OCCLUSION_FRAME_STRIDE frames, covered the same way."""
    sides = [(OCCLUSION_WINDOW, OCCLUSION_STRIDE)] * 2
    if len(size) == 3:
        sides.insert(0, (OCCLUSION_FRAMES, OCCLUSION_FRAME_STRIDE))
    spans = []
    for length, (window, stride) in zip(size, sides):
        window = min(window, length)
        first = list(range(0, length - window + 1, stride))
        if first[-1] + window < length:
            first.append(length - window)
        spans.append([slice(start, start + window) for start in first])
    boxes = list(itertools.product(*spans))
    masks = torch.zeros(len(boxes), *size, device=device)
    for k, box in enumerate(boxes):
        masks[(k, *box)] = 1
    return masks
