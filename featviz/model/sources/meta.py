"""Building a network without paying for its parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside put every parameter and buffer on PyTorch's meta device.

    Unlike ``with torch.device("meta")``, which makes *every* new tensor a meta tensor, only
    what a module registers moves there: builders that compute their architecture with real
    tensors keep working (torchvision's RegNets derive their widths with ``torch.pow(…)
    .tolist()``, which has no data on meta). Initialisers then run on meta tensors, which
    costs nothing; the tensors allocated before the move are uninitialised ``torch.empty``.
    """
    import torch
    from torch import nn

    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def parameter_on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        lazy = isinstance(param, nn.parameter.UninitializedTensorMixin)  # no data to move yet
        if param is not None and not param.is_meta and not lazy:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer_on_meta(
        self: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True
    ) -> None:
        if tensor is not None and not tensor.is_meta:
            tensor = tensor.to("meta")
        register_buffer(self, name, tensor, persistent)

    nn.Module.register_parameter = parameter_on_meta
    nn.Module.register_buffer = buffer_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter
        nn.Module.register_buffer = register_buffer
