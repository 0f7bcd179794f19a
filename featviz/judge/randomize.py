"""Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018, "Sanity Checks for
Saliency Maps"): the weights are re-initialised block by block from the top (the classifier)
down, and a faithful explanation should change as they are.

The blocks of any model, found from its structure: its direct children that hold parameters,
where a child that is a sequence of modules (``nn.Sequential``, ``nn.ModuleList``: ResNet's
``layer4``, VGG's ``features``, timm's ``blocks``) counts as its own children; ordered as the
forward runs them. So, top first: ResNet ``fc``, ``layer4.1``, ``layer4.0``, ``layer3.1``, …,
``bn1``, ``conv1``; VGG ``classifier.6``, ``classifier.3``, ``classifier.0``, then each
convolution ``features.N`` … ``features.0``; torchvision's EfficientNet ``classifier.1``,
``features.8`` … ``features.0``; timm ViTs ``head``, ``norm``, ``blocks.11`` … ``blocks.0``,
``patch_embed``. Parameters held by
the model itself (a ViT's class token and position embedding) are never randomised, nor blocks
the forward does not run.

A block is re-initialised as its modules' ``reset_parameters`` do (the randomisation of Quantus'
MPRT); a parameter that no ``reset_parameters`` touched is drawn from N(0, its own standard
deviation). Seeded: the same cascade every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from featviz.layers.catalog import ModelTrace


def cascade_blocks(model: nn.Module, trace: ModelTrace) -> list[str]:
    """The model's blocks, top (last to run) first."""
    from torch import nn

    blocks = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            blocks += [
                f"{name}.{inner}" for inner, part in child.named_children() if _has_parameters(part)
            ]
        elif _has_parameters(child):
            blocks.append(name)
    order = {layer.name: layer.order for layer in trace.layers}
    # A block the forward never runs (a two-tower model's text tower) changes no map.
    ran = [block for block in blocks if order.get(block, -1) >= 0]
    return sorted(ran, key=lambda block: order[block], reverse=True)


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def randomised_states(
    model: nn.Module, blocks: list[str], seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """For each block in turn, its re-initialised parameters and buffers (keys as in the
    model's state dict), drawn on a copy of it: ``model`` is left untouched."""
    import copy

    import torch

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for block in blocks:
            module = copy.deepcopy(model.get_submodule(block))
            before = {name: p.detach().clone() for name, p in module.named_parameters()}
            with torch.no_grad():
                for part in module.modules():
                    if hasattr(part, "reset_parameters") and callable(part.reset_parameters):
                        part.reset_parameters()
                for name, parameter in module.named_parameters():
                    if torch.equal(parameter, before[name]):
                        std = float(before[name].float().std()) if parameter.numel() > 1 else 0.0
                        parameter.normal_(0.0, std or 0.02)
            yield {f"{block}.{key}": value for key, value in module.state_dict().items()}
    finally:
        torch.random.set_rng_state(generator_state)
