"""``--target-fn``: the user's own score of the model's raw output, explained instead of the
classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
from featviz.tasks.base import Outcome, Task


class TargetFnTask(Task):
    """``fn(output)`` as the single (N, 1) score; ``spec`` as the user wrote it, for messages."""

    name = "target-fn"
    shown_as = "the score"

    def __init__(self, fn: Any, spec: str) -> None:
        super().__init__()
        self.fn, self.spec = fn, spec

    def __call__(self, module: Any, inputs: Any, output: Any) -> torch.Tensor:
        import torch

        from featviz.errors import UsageError

        images = len(inputs[0]) if inputs and hasattr(inputs[0], "__len__") else None
        try:
            scores = self.fn(output)
        except Exception as exc:  # the user's code: say whose, in one line
            raise UsageError(f"--target-fn {self.spec} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(scores, torch.Tensor) or scores.reshape(-1).shape[0] != images:
            got = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise UsageError(
                f"--target-fn {self.spec} returned {got}: it must return one score per image, "
                f"a tensor of shape [{images}]"
            )
        scores = scores.reshape(-1, 1)
        self.latest = Outcome(shown=scores.detach().float())
        return scores


def with_target_fn(loaded: Any, spec: str) -> Any:
    """``loaded`` explaining ``fn(output)`` instead of its classes: a shallow copy of its root
    module with the task's hook (the model itself, which the warm worker may keep for other
    calls, is left as it was; the layers are the same modules), one target named after fn."""
    import copy
    from collections import OrderedDict
    from dataclasses import replace

    from featviz.user_code import import_callable

    fn, _, name = import_callable(spec, f"--target-fn {spec}")
    task = TargetFnTask(fn, spec)
    root = copy.copy(loaded.module)
    # Its own hook tables: the original's stay untouched; a segmentation or detection hook is
    # dropped, so fn reads the raw output.
    root._forward_hooks = OrderedDict(
        (key, hook) for key, hook in loaded.module._forward_hooks.items() if hook is not loaded.task
    )
    root._forward_hooks_with_kwargs = OrderedDict(loaded.module._forward_hooks_with_kwargs)
    root._forward_hooks_always_called = OrderedDict(loaded.module._forward_hooks_always_called)
    root.register_forward_hook(task)
    trace = replace(loaded.trace, num_classes=1, task=None)
    return replace(loaded, module=root, trace=trace, categories=[name], task=task)
