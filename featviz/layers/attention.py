"""Self-attention probabilities A = softmax(q·kᵀ·scale), captured from a forward pass.

Attention is computed in three ways in the models featviz meets, and each hides A in its own
way; ``AttentionCapture`` makes every one of them compute A explicitly, records A in execution
order (one (N, heads, T, T) tensor per attention module), and puts the model back as it was:

- timm (``Attention`` in ViT, DeiT, BEiT, EVA…: a module with a ``fused_attn`` flag and an
  ``attn_drop`` child): with the flag off, timm computes A and passes it through ``attn_drop``;
  a hook there sees it.
- ``torch.nn.MultiheadAttention`` (torchvision's ViT calls it with ``need_weights=False``, the
  fused kernel): its forward is replaced, for the capture only, by the same computation written
  out (in-projection, scaled dot product, softmax, out-projection).
- Hugging Face (``ViTAttention`` and kin: a module named ``…Attention`` whose ``config`` has an
  ``_attn_implementation``): the config is switched to "eager" (and ``output_attentions``),
  whose attention function returns A as the second element of the module's output.

A is recorded as the very tensor the model multiplies with the values, so gradients of a score
with respect to it (gradient-weighted rollout) are the model's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from featviz.layers.taps import first_tensor

if TYPE_CHECKING:
    import torch
    from torch import nn

Kind = Literal["timm", "torch", "hf"]


def attention_kind(module: nn.Module) -> Kind | None:
    """How ``module`` computes self-attention, when it is an attention module featviz knows."""
    from torch import nn

    if isinstance(module, nn.MultiheadAttention):
        return "torch"
    if hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module):
        return "timm"
    config = getattr(module, "config", None)
    if type(module).__name__.endswith("Attention") and hasattr(config, "_attn_implementation"):
        return "hf"
    return None


def _blocks(model: nn.Module, attention_names: list[str]) -> list[str]:
    """The blocks holding the attention modules ``attention_names``, in their order: for each,
    its nearest ancestor that is an item of a ``ModuleList`` or ``Sequential`` (timm's
    ``blocks.3``, torchvision's ``encoder.layers.encoder_layer_3``, Hugging Face's
    ``vit.encoder.layer.3``, open_clip's ``transformer.resblocks.3``); its output is the
    residual stream after the block's attention and MLP."""
    from torch import nn

    blocks: list[str] = []
    for name in attention_names:
        parts = name.split(".")
        for end in range(len(parts) - 1, 0, -1):
            parent = model.get_submodule(".".join(parts[: end - 1]))
            if isinstance(parent, (nn.ModuleList, nn.Sequential)):
                block = ".".join(parts[:end])
                if block not in blocks:  # nested attention modules share their block
                    blocks.append(block)
                break
    return blocks


class AttentionCapture:
    """Within the ``with`` block, every known attention module of ``model`` records its A.

    ``maps`` lists them in the order the forward computed them (a module called twice records
    twice). ``names`` are the attention modules found. Nothing is changed outside the block.
    ``blocks`` lists what each block holding them (``block_names``) returned, in the order they
    ran: (name, output tokens, the index in ``maps`` of the block's last attention matrix).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.found = [
            (name, module, kind)
            for name, module in model.named_modules()
            if (kind := attention_kind(module)) is not None
        ]
        self.names = [name for name, _, _ in self.found]
        self.block_names = _blocks(model, self.names)
        self.maps: list[torch.Tensor] = []
        self.blocks: list[tuple[str, torch.Tensor, int]] = []
        self._undo: list[Any] = []

    def __enter__(self) -> AttentionCapture:
        try:
            for _, module, kind in self.found:
                getattr(self, f"_capture_{kind}")(module)
            for name in self.block_names:
                self._capture_block(name)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _record(self, probabilities: torch.Tensor) -> None:
        # Nested attention modules may hand up the same tensor (HF 4.x: ViTSelfAttention's
        # probabilities come out of ViTAttention too): one block, one matrix.
        if not any(probabilities is kept for kept in self.maps[-2:]):
            self.maps.append(probabilities)

    def _capture_block(self, name: str) -> None:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.blocks.append((name, first_tensor(output), len(self.maps) - 1))

        self._undo.append(self.model.get_submodule(name).register_forward_hook(hook).remove)

    def _capture_timm(self, module: nn.Module) -> None:
        fused = module.fused_attn
        module.fused_attn = False
        handle = module.attn_drop.register_forward_hook(
            lambda _module, _inputs, output: self._record(output)
        )

        def undo() -> None:
            handle.remove()
            module.fused_attn = fused

        self._undo.append(undo)

    def _capture_torch(self, module: nn.MultiheadAttention) -> None:
        def explicit(query, key, value, *args: Any, **kwargs: Any):
            return _explicit_attention(module, query, key, value, self._record)

        module.forward = explicit
        self._undo.append(lambda: vars(module).pop("forward", None))

    def _capture_hf(self, module: nn.Module) -> None:
        config = module.config
        implementation, returned = config._attn_implementation, config.output_attentions
        config._attn_implementation = "eager"
        config.output_attentions = True  # transformers 4.x returns A only when asked

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
                self._record(output[1])

        handle = module.register_forward_hook(hook)

        def undo() -> None:
            handle.remove()
            config._attn_implementation = implementation
            config.output_attentions = returned

        self._undo.append(undo)


def _explicit_attention(
    module: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    record: Any,
) -> tuple[torch.Tensor, None]:
    """``nn.MultiheadAttention``'s self-attention in eval mode, written out so that A is a
    tensor of the graph: same parameters, same result up to float rounding."""
    import torch.nn.functional as F

    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    n, t, c = query.shape
    heads = module.num_heads
    head_dim = c // heads
    if module.in_proj_weight is not None:
        weights = module.in_proj_weight.chunk(3)
    else:
        weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
    biases = (None,) * 3 if module.in_proj_bias is None else module.in_proj_bias.chunk(3)
    q, k, v = (
        F.linear(x, w, b).view(n, -1, heads, head_dim).transpose(1, 2)
        for x, w, b in zip((query, key, value), weights, biases)
    )
    probabilities = (q @ k.transpose(-2, -1) * head_dim**-0.5).softmax(dim=-1)
    record(probabilities)
    mixed = (probabilities @ v).transpose(1, 2).reshape(n, t, c)
    output = module.out_proj(mixed)
    if not module.batch_first:
        output = output.transpose(0, 1)
    return output, None
