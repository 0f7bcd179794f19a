"""Building the network a user names, once per run, ready to explain.

A source (featviz.model.sources) builds the module; everything after is the same for every model:
eval mode, every parameter frozen (CAM backward passes then never compute weight gradients), the
device and memory layout, one meta-device trace of its layers, and the class names checked against
the number of classes the model really outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featviz.errors import UsageError
from featviz.inputs.preprocess import Preprocessing
from featviz.inputs.video import Sampling
from featviz.model import cache as model_cache
from featviz.model.sources import BuiltModel, ModelSource, source_for
from featviz.tasks.base import Task
from featviz.tasks.segmentation import SegmentationTask

if TYPE_CHECKING:
    import torch
    from torch import nn

    from featviz.layers.catalog import ModelTrace
    from featviz.model.options import ModelRequest
from featviz.model.labels import _checked_categories, read_labels


@dataclass(frozen=True)
class LoadedModel:
    """A ready network and what it takes to feed it and read its output.

    ``trace`` is one shapes-only forward at ``preprocessing.input_size`` (see layers/trace.py);
    ``class_token`` whether a transformer's head reads its first token (sources.BuiltModel);
    ``clip`` a video model's frames per clip and their rate (None: it takes images).
    """

    def default_cam_layer(self) -> str:
        return self.trace.default_cam_layer(class_token=self.class_token)

    module: nn.Module
    name: str
    weights: str
    preprocessing: Preprocessing
    categories: list[str] | None
    device: torch.device
    channels_last: bool
    trace: ModelTrace
    class_token: bool | None = None
    task: Task | None = None  # None: a classifier (featviz.tasks)
    # Built by featviz (a spec): frozen in eval mode for good, its task hook on it. A module a
    # library caller handed over is not: ``in_use`` does all that for the length of the work.
    owned: bool = True
    clip: Sampling | None = None

    @property
    def num_classes(self) -> int | None:
        return self.trace.num_classes

    def batch(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Stack (3, h, w) inputs (a video model's (3, T, h, w) clips) into the batch the model
        expects: on its device, in the memory layout of its weights. uint8 inputs are pixels
        (images), normalised on the device after the copy, the whole batch at once; float
        inputs (video clips) are already normalised."""
        import torch

        from featviz.inputs.preprocess import normalise

        # Only what is elsewhere is moved: each call lets the decoders' threads take the
        # interpreter's lock, and waiting to get it back costs the model's thread more than
        # the call.
        moved = [
            tensor if tensor.device == self.device else tensor.to(self.device, non_blocking=True)
            for tensor in tensors
        ]
        if self.channels_last:
            # Stacked as (N, h, w, 3), which is the channels-last memory: one copy, where a
            # stack then a conversion copy twice (the decoders' images are (h, w, 3) in memory
            # already, so each is copied whole).
            stacked = torch.stack([tensor.permute(1, 2, 0) for tensor in moved]).permute(0, 3, 1, 2)
        else:
            stacked = torch.stack(moved)
        if stacked.dtype == torch.uint8:
            stacked = normalise(stacked, self.preprocessing)
        return stacked

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """The model ready for featviz's forwards meanwhile: in eval mode, its parameters
        frozen (CAM backward passes then never compute weight gradients), its task's hook on
        it. A model featviz built is so already; a caller's module is put back as it was."""
        if self.owned:
            yield
            return
        module = self.module
        training = [(child, child.training) for child in module.modules()]
        frozen = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
        module.eval().requires_grad_(False)
        hook = module.register_forward_hook(self.task) if self.task is not None else None
        try:
            yield
        finally:
            if hook is not None:
                hook.remove()
            for child, mode in training:
                child.training = mode
            for parameter, flag in frozen:
                parameter.requires_grad_(flag)

    def category(self, index: int) -> str | None:
        """The class name of ``index``, or None when the model has no names (or not that one)."""
        if self.categories and 0 <= index < len(self.categories):
            return self.categories[index]
        return None

    def label(self, index: int) -> str:
        return self.category(index) or f"class {index}"


def load_model(
    request: ModelRequest, *, structure_only: bool = False, source: ModelSource | None = None
) -> LoadedModel:
    """Build the model ``request`` names, or take it from the worker's cache (model/cache.py).

    ``structure_only``: parameters may stay on the meta device (``featviz layers``): nothing is
    downloaded and no initialisation is paid; the model is on the CPU and cannot run for real.
    ``source``: where the model comes from instead of the spec's (a caller's module).
    """
    cache = model_cache.active()
    if cache is None or source is not None:
        return _build(request, structure_only, source)
    return cache.load(request, structure_only, lambda: _build(request, structure_only, None))


def _build(request: ModelRequest, structure_only: bool, source: ModelSource | None) -> LoadedModel:
    import torch

    from featviz.layers.trace import TraceError, size_multiple

    torch.manual_seed(request.seed)
    built = (source or source_for(request.spec)).build(request, structure_only=structure_only)
    module, device, channels_last = _placed(built, request, structure_only)
    size = request.input_size or built.input_size
    try:
        with _evaluating(module):
            trace = _traced(module, _input_shape(built, size), structure_only)
    except TraceError as exc:
        if request.input_size is None:
            raise
        raise UsageError(
            f"--input-size {size}: {exc.message}",
            hint=f"the model's own size is {built.input_size}: leave --input-size out",
        ) from exc
    task = _task_for(trace, module)
    if task is not None and built.owned:
        # Its output becomes (N, targets) scores for everything downstream (featviz.tasks).
        module.register_forward_hook(task)
    preprocessing = Preprocessing(
        mean=built.mean,
        std=built.std,
        input_size=size,
        resize=request.resize,
        multiple=size_multiple(trace),
        interpolation=built.interpolation,
    )
    categories, origin, given = built.categories, built.categories_from, built.categories_given
    if request.labels is not None:
        categories, origin, given = read_labels(request.labels), f"--labels {request.labels}", True
    categories = _checked_categories(categories, origin, trace.num_classes, given=given)
    return LoadedModel(
        module=module,
        name=built.name,
        weights=built.weights,
        preprocessing=preprocessing,
        categories=categories,
        device=device,
        channels_last=channels_last,
        trace=trace,
        class_token=built.class_token,
        task=task,
        owned=built.owned,
        clip=built.clip,
    )


def _input_shape(built: BuiltModel, size: int) -> tuple[int, ...]:
    """The traced input: an image (1, 3, S, S), or a video model's clip (1, 3, T, S, S)."""
    if built.clip is not None:
        return (1, 3, built.clip.length, size, size)
    return (1, 3, size, size)


def _placed(
    built: BuiltModel, request: ModelRequest, structure_only: bool
) -> tuple[nn.Module, torch.device, bool]:
    """(module, device, channels_last): a model featviz built, frozen in eval mode on the
    requested device, channels-last where its forward allows; a caller's module where its
    parameters are, unless a device was asked for, in its own memory layout."""
    import torch

    module = built.module
    if structure_only:
        return module.eval().requires_grad_(False), torch.device("cpu"), False
    if not built.owned:
        if request.device == "module":
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
            return module, device, False
        device = resolve_device(request.device)
        return module.to(device), device, False
    device = resolve_device(request.device)
    channels_last = not built.fixed_layout
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module = module.eval().requires_grad_(False).to(device, memory_format=layout)
    return module, device, channels_last


@contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the trace (a caller's module may be training), as it was after."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for child, mode in modes:
            child.training = mode


def _traced(module: nn.Module, shape: tuple[int, ...], structure_only: bool) -> ModelTrace:
    """The model's trace (layers/trace.py). A structure-only model that meta tensors cannot run
    through (a detector's non-maximum suppression has no meta kernel) and whose parameters
    are on meta gets zeros for them and is traced for real: its shapes do not depend on them."""
    import torch

    from featviz.layers.trace import TraceError, trace_model

    try:
        return trace_model(module, shape)
    except TraceError:
        if not structure_only or not any(p.is_meta for p in module.parameters()):
            raise
    module.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.zero_()
    return trace_model(module, shape)


def _task_for(trace: ModelTrace, module: nn.Module) -> Task | None:
    if trace.task == "segmentation":
        return SegmentationTask()
    if trace.task == "detection":
        from featviz.tasks.detection import DetectionTask

        return DetectionTask(module)
    return None


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here", hint="use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError(
            "--device mps: Apple's MPS backend is not available here", hint="use --device cpu"
        )
    if device not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device '{device}'", hint="choose auto, cpu, cuda or mps")
    return torch.device(device)
