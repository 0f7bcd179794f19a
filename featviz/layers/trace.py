"""One shapes-only look at a model: what every module outputs, in which layout, at which sizes.

``trace_model`` runs the model on zeros on PyTorch's meta device (shapes only, a few
milliseconds, no real arithmetic) with a hook on every module, and records the order in which
module outputs are produced, their shapes, how often each module runs, and which module's output
feeds each attention module. It runs at the square input S × S and probes which other sizes the
model accepts (S × (S + step)): that tells

- the input sizes the model takes (``size_step``): any (CNNs, dynamic-size ViTs), multiples of a
  step (MaxViT's windows), or only S × S (torchvision's ViTs assert it; timm's by default);
- each output's layout (layers/layouts.py): the dimensions that grow with the width are spatial.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from featviz.errors import RunError, first_line
from featviz.layers.catalog import LayerInfo, ModelTrace
from featviz.layers.layouts import detect
from featviz.layers.outputs import detections_of, segmentation_logits
from featviz.layers.taps import ENTRY

if TYPE_CHECKING:
    from torch import nn

    from featviz.layers.folding import ConvReaders

_POOLING = ("Pool",)
# Widths added to probe whether a model takes other sizes; a step ≤ FREE_STEP means any size.
FREE_STEP = 16


class TraceError(RunError):
    """The model does not run on the traced input size at all."""


class _Recording:
    """What the hooks saw during one forward."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.produced: dict[int, tuple[str, bool]] = {}  # tensor id → (innermost maker, pooled)
        self.attention_inputs: list[str] = []
        self.keep_alive: list[Any] = []  # ids stay unique while the trace runs
        self.order = 0


def trace_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelTrace:
    """Trace ``model`` on zeros of ``input_shape`` (N, C, H, W), and probe wider inputs.

    Raises RunError when the model cannot run at ``input_shape`` at all.
    """
    from featviz.layers.folding import ConvReaders

    *lead, height, width = input_shape
    readers = ConvReaders(model)
    mode, recording, output = _run(
        model, tuple(input_shape), readers=readers if readers.useful else None
    )
    if recording is None:
        raise TraceError(
            f"the model cannot run on a {width}×{height} input ({first_line(output)})",
            hint="pass the size it was built for with --input-size",
        )
    step, wider = _probe(model, lead, height, width, mode, recording)
    task, classes = _task_of(output)
    return ModelTrace(
        layers=tuple(_layers(model, recording, wider, tuple(lead[:1]), (height, width), step)),
        num_classes=classes,
        input_hw=(height, width),
        size_step=step,
        attention_inputs=tuple(recording.attention_inputs),
        task=task,
        foldable=readers.pairs() if mode == "meta" else (),
    )


def _layers(
    model: nn.Module,
    recording: _Recording,
    wider: _Recording | None,
    batch: tuple[int, ...],
    input_hw: tuple[int, int],
    step: int | None,
) -> list[LayerInfo]:
    """Every module's LayerInfo in ``named_modules`` order (and each tensor of a dict output,
    an FPN's levels, as ``name:key``), its layout told by its shapes at ``input_hw`` and, where
    the model took it, at the input ``step`` pixels wider (``wider``'s)."""
    records = recording.records
    size_b = None if wider is None else (input_hw[0], input_hw[1] + step)
    shapes_b = {} if wider is None else {n: r.get("shape") for n, r in wider.records.items()}
    token_counts = {
        r["shape"][1]
        for r in records.values()
        if r.get("shape") is not None and len(r["shape"]) == 3
    }
    # The layers inside and after a block that returns its (t, h, w) (MViT's norms, MLPs)
    # return tokens alone: as many tokens as a block's output are on that block's thw.
    thw_of_count = {
        r["shape"][1]: r["thw"] for r in records.values() if "thw" in r and len(r["shape"]) == 3
    }
    layers = []

    def add(name: str, type_name: str, params: int) -> None:
        record = records.get(name, {})
        shape = record.get("shape")
        layout = None
        # Not a map of each image when its batch is another (MViT's pooling runs on
        # batch × heads): only outputs with the input's batch size are looked at.
        if shape is not None and shape[:1] == batch:
            thw = record.get("thw") or (thw_of_count.get(shape[1]) if len(shape) == 3 else None)
            layout = detect(shape, shapes_b.get(name), input_hw, size_b, token_counts, thw)
        layers.append(
            LayerInfo(
                name=name,
                type_name=type_name,
                shape=shape,
                params=params,
                calls=record.get("calls", 0),
                order=record.get("order", -1),
                pooled=record.get("pooled", False),
                layout=layout,
                grid=None if layout is None else layout.grid(shape, input_hw),
            )
        )

    for name, module in model.named_modules():
        if not name:
            continue
        add(name, type(module).__name__, sum(p.numel() for p in module.parameters()))
        for key in records.get(name, {}).get("entries", ()):
            add(f"{name}{ENTRY}{key}", f"{type(module).__name__}[{key!r}]", 0)
    return layers


def _task_of(output: Any) -> tuple[str | None, int | None]:
    """The task the model's output shows (segmentation, detection or None: classification or
    features) and its number of classes where the output's shape tells it."""
    segmentation = segmentation_logits(output)
    if segmentation is not None:
        return "segmentation", segmentation.shape[1]
    if detections_of(output) is not None:
        # Its classes are not in the output's shape: the weights' names (or --labels) tell.
        return "detection", None
    return None, _classes_of(output)


def _probe(
    model: nn.Module, lead: list[int], height: int, width: int, mode: str, base: _Recording
) -> tuple[int | None, _Recording | None]:
    """The smallest width step the model accepts, with the trace at that width, or (None,
    None) when it runs at height × width only. A model traced for real (no meta kernels for
    some op) is probed once: real forwards cost seconds. A wider input whose every output has
    the shape it has at ``base``'s size shows nothing (a stride-32 patch embedding floors a
    240-wide input to the grid of a 224-wide one), and the next step is tried."""
    steps = [FREE_STEP, *sorted(d for d in range(FREE_STEP + 1, width + 1) if width % d == 0)]
    shapes = {name: record.get("shape") for name, record in base.records.items()}
    for step in steps if mode == "meta" else steps[:1]:
        _, recording, _ = _run(model, (*lead, height, width + step), modes=(mode,))
        if recording is None:
            continue
        if {name: record.get("shape") for name, record in recording.records.items()} != shapes:
            return step, recording
    return None, None


def _run(
    model: nn.Module,
    input_shape: tuple[int, ...],
    modes: tuple[str, ...] = ("meta", "real"),
    readers: ConvReaders | None = None,
) -> tuple[str, _Recording | None, Any]:
    """(mode, recording, model output) of the first forward that works, or (mode, None, the
    last exception) when none does. ``readers`` watch the meta forward (layers/folding.py); should
    the watch itself upset the model, meta runs again unwatched (and nothing is folded)."""
    error: Exception | None = None
    attempts = [(mode, readers if mode == "meta" else None) for mode in modes]
    if readers is not None and "meta" in modes:
        attempts.insert(modes.index("meta") + 1, ("meta", None))
    for mode, watch in attempts:
        recording = _Recording()
        handles = _hooks(model, recording)
        # Modules that cache tensors on the input's device in plain attributes (torchvision's
        # AnchorGenerator its cell anchors) would keep the trace's meta ones.
        attributes = [(module, dict(vars(module))) for module in model.modules()]
        try:
            if watch is not None:
                with watch.watching():
                    output = _forward(model, input_shape, meta=True)
                watch.escaped(output)
            else:
                if readers is not None:
                    readers.forget()  # what a failed watch saw is not to be folded
                output = _forward(model, input_shape, meta=mode == "meta")
            return mode, recording, output
        except Exception as exc:
            error = exc
        finally:
            for handle in handles:
                handle.remove()
            for module, saved in attributes:
                vars(module).clear()
                vars(module).update(saved)
    return modes[-1], None, error


def _hooks(model: nn.Module, recording: _Recording) -> list[Any]:
    import torch

    from featviz.layers.attention import attention_kind
    from featviz.layers.taps import first_tensor, plain_dict

    def after(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            record = recording.records.setdefault(name, {"calls": 0})
            record["calls"] += 1
            record["order"] = recording.order
            recording.order += 1
            if plain_dict(output):
                record["entries"] = [k for k, v in output.items() if isinstance(v, torch.Tensor)]
                for key in record["entries"]:
                    entry = recording.records.setdefault(f"{name}{ENTRY}{key}", {"calls": 0})
                    entry.update(
                        calls=record["calls"],
                        order=record["order"],
                        shape=tuple(output[key].shape),
                        pooled=False,
                    )
            thw = _thw_beside(output)
            if thw is not None:
                record["thw"] = thw
            output = first_tensor(output)
            if output is None:
                record.update(shape=None, pooled=False)
                return
            is_pool = any(word in type(module).__name__ for word in _POOLING)
            # A container returning its last child's output returns the same tensor object.
            pooled = is_pool or recording.produced.get(id(output), ("", False))[1]
            record.update(shape=tuple(output.shape), pooled=pooled)
            recording.keep_alive.append(output)
            recording.produced.setdefault(id(output), (name, pooled))

        return hook

    def before_attention(module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = args[0] if args else next(iter(kwargs.values()), None)
        maker = recording.produced.get(id(first))
        if maker is not None:
            recording.attention_inputs.append(maker[0])

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(after(name)))
        if attention_kind(module) is not None:
            handles.append(module.register_forward_pre_hook(before_attention, with_kwargs=True))
    return handles


def _thw_beside(output: object) -> tuple[int, int, int] | None:
    """The (t, h, w) a module returns beside its tokens, as MViT's blocks do: ``(x, thw)``."""
    if not (isinstance(output, tuple) and len(output) == 2):
        return None
    thw = output[1]
    if isinstance(thw, (tuple, list)) and len(thw) == 3 and all(type(d) is int for d in thw):
        return tuple(thw)
    return None


def _forward(model: nn.Module, input_shape: tuple[int, ...], *, meta: bool) -> Any:
    import torch
    from torch.func import functional_call

    if meta:
        state = {
            name: torch.empty_like(tensor, device="meta")
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        }
        with torch.no_grad():
            return functional_call(model, state, (torch.zeros(input_shape, device="meta"),))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        return model(torch.zeros(input_shape, device=device))


def _classes_of(output: object) -> int | None:
    from featviz.layers.outputs import logits_of

    try:
        scores, _ = logits_of(output)
    except RunError:
        return None
    return int(scores.shape[1]) if scores.ndim == 2 else None


def size_multiple(trace: ModelTrace) -> int | None:
    """What every input side must be a multiple of for the traced model: 1 for models that take
    any size (a ViT's patch size, so that no pixel falls outside the patch grid), the step for
    those that need multiples (MaxViT's windows); None for models that take the traced size
    only."""
    if trace.size_step is None:
        return None
    return math.lcm(trace.size_step if trace.size_step > FREE_STEP else 1, trace.patch_stride)
