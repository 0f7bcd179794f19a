"""CAM from the classifier's weights (Zhou et al.) and from gradients at the tapped layer.

Notation: A (N, K, h, w) activations, g = ∂S^c/∂A (N, K, h, w) for each
image's own target class c, S^c the pre-softmax score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featviz.cam.base import CamMethod, logits_match, safe_divide
from featviz.cam.context import CamContext
from featviz.errors import UsageError

# xgradcam's ε: a channel that is zero everywhere has weight 0/ε = 0, not 0/0.
_XGRAD_EPS = 1e-7


class ClassActivationMap(CamMethod):
    """L = ReLU(Σ_k W[c, k] A_k), W the final Linear's weights.

    Valid only when the logits are exactly that Linear applied to the spatial mean of A, which
    is checked numerically on the batch itself. DenseNet applies a ReLU between its last tapped
    module (norm5) and the pooling, so the check also tries mean(ReLU(A)) and the map then uses
    ReLU(A): the activations the classifier actually averaged.
    """

    name = "cam"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        weight, rectified = ctx.cached(("cam", layer), lambda: _pooled_classifier(ctx, layer))
        features = ctx.activation(layer)
        if rectified:
            features = features.clamp(min=0)
        return torch.einsum("nk,nkhw->nhw", weight[targets], features)


def _pooled_classifier(ctx: CamContext, layer: str) -> tuple[torch.Tensor, bool]:
    """(classes, K) weights of the Linear that maps pooled ``layer`` to the logits, and whether
    the pooled activations were rectified first."""
    activations = ctx.activation(layer)
    linear = _last_linear(ctx.model)
    if linear is not None and linear.in_features == activations.shape[1]:
        weight = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float()
        for rectified in (False, True):
            features = activations.clamp(min=0) if rectified else activations
            if logits_match(F.linear(features.mean(dim=(2, 3)), weight, bias), ctx.logits):
                return weight, rectified
    raise UsageError(
        "method 'cam' needs a network that ends in global-average-pool → one Linear after "
        f"layer '{layer}'",
        hint="use --method gradcam, which works on any layer",
    )


def _last_linear(model: nn.Module) -> nn.Linear | None:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


class _GradientMethod(CamMethod):
    @staticmethod
    def _gradient(ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return ctx.gradients(targets)[layer].float()


class GradCam(_GradientMethod):
    """α_k = mean_ij g_kij; L = ReLU(Σ_k α_k A_k)."""

    name = "gradcam"

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return self._gradient(ctx, layer, targets).mean(dim=(2, 3))


class GradCamPlusPlus(_GradientMethod):
    """Eq. 19: a_kij = g² / (2g² + (Σ_ab A_kab)·g³), 0 where that denominator is 0;
    w_k = Σ_ij a_kij·ReLU(g_kij); L = ReLU(Σ_k w_k A_k)."""

    name = "gradcam++"

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        g = self._gradient(ctx, layer, targets)
        activation_sum = ctx.activation(layer).sum(dim=(2, 3), keepdim=True)
        g2 = g * g
        alpha = safe_divide(g2, 2 * g2 + activation_sum * g2 * g)
        return (alpha * g.clamp(min=0)).sum(dim=(2, 3))


class XGradCam(_GradientMethod):
    """w_k = Σ_ij (A_kij / (Σ_ab A_kab + ε))·g_kij; L = ReLU(Σ_k w_k A_k)."""

    name = "xgradcam"

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        activations = ctx.activation(layer)
        g = self._gradient(ctx, layer, targets)
        return safe_divide(
            (activations * g).sum(dim=(2, 3)), activations.sum(dim=(2, 3)) + _XGRAD_EPS
        )


class LayerCam(_GradientMethod):
    """L = ReLU(Σ_k ReLU(g_kij)·A_kij), position by position."""

    name = "layercam"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        g = self._gradient(ctx, layer, targets)
        return (g.clamp(min=0) * ctx.activation(layer)).sum(dim=1)


class HiResCam(_GradientMethod):
    """L = Σ_k g_kij·A_kij, position by position, signed (ReLU only when displayed)."""

    name = "hirescam"
    relu = False

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return (self._gradient(ctx, layer, targets) * ctx.activation(layer)).sum(dim=1)


class GradCamElementWise(_GradientMethod):
    """L = Σ_k ReLU(g_kij·A_kij): each position's product rectified before the channel sum, so
    a channel cannot cancel another's evidence (pytorch-grad-cam's GradCAMElementWise)."""

    name = "gradcamelementwise"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return (self._gradient(ctx, layer, targets) * ctx.activation(layer)).clamp(min=0).sum(dim=1)


class FinerCam(_GradientMethod):
    """Grad-CAM of a contrast score: the target against the classes the model confuses it with.

    F = Σ_j p_j·(S^c − α·S^j) / (Σ_j p_j + ε) over the ``COMPARED`` classes j whose scores are
    nearest to S^c (p = softmax(S), differentiated too); w_k = mean_ij ∂F/∂A_kij;
    L = ReLU(Σ_k w_k A_k). As pytorch-grad-cam's FinerCAM with its GradCAM base, α = 1.
    """

    name = "finercam"
    ALPHA = 1.0
    COMPARED = 3
    _EPS = 1e-9

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        grads = ctx.score_gradients(("finercam", *targets.tolist()), self._contrast(targets))
        return grads[layer].mean(dim=(2, 3))

    def _contrast(self, targets: torch.Tensor):
        def score(logits: torch.Tensor) -> torch.Tensor:
            rows = torch.arange(len(targets), device=logits.device)
            target = logits[rows, targets]
            distance = (logits.detach() - target.detach()[:, None]).abs()
            distance[rows, targets] = torch.inf  # the target is not its own rival
            compared = min(self.COMPARED, logits.shape[1] - 1)
            rivals = distance.topk(compared, dim=1, largest=False).indices  # nearest scores
            p = logits.softmax(dim=1).gather(1, rivals)
            contrast = (p * (target[:, None] - self.ALPHA * logits.gather(1, rivals))).sum(dim=1)
            return contrast / (p.sum(dim=1) + self._EPS)

        return score


class ShapleyCam(_GradientMethod):
    """w_k = mean_ij (g − ½·H·A)_kij, H = ∂²S^c/∂A² the score's Hessian at the layer (Cai et
    al. 2025: Grad-CAM as a second-order Shapley estimate); L = ReLU(Σ_k w_k A_k).

    H·A is one Hessian-vector product, a backward of the backward. After a tap followed only
    by piecewise-linear layers (ReLU, max-pool, Linear) H is zero and this is Grad-CAM.
    """

    name = "shapleycam"

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        g = self._gradient(ctx, layer, targets)  # also says when the layer is off the path
        hvp = ctx.cached(
            ("hessian", layer, *targets.tolist()), lambda: _hessian_vector(ctx, layer, targets)
        )
        return (g - 0.5 * hvp).mean(dim=(2, 3))


def _hessian_vector(ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) H·A at ``layer`` for each image's own target, H = ∂²S^c/∂A²."""
    raw = ctx.activations[layer]
    with torch.inference_mode(False), torch.enable_grad():
        rows = torch.arange(len(targets), device=targets.device)
        (g,) = torch.autograd.grad(
            ctx.logits[rows, targets].sum(), raw, create_graph=True, retain_graph=True
        )
        product = None
        if g.requires_grad:  # else the score is linear in A from here on
            (product,) = torch.autograd.grad(
                g, raw, grad_outputs=raw.detach(), retain_graph=True, allow_unused=True
            )
    if product is None:
        product = torch.zeros_like(raw)
    return ctx.layout(layer).to_nchw(product.detach().float(), ctx.input_hw)
