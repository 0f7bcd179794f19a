"""Process-wide switches, each a Setting to read and to write back: torch's (the default
dtype, grad mode, threads, backend flags…; those this torch lacks are left out) and the
interpreter's (recursion limit, logging levels…). global_state.py puts them back
after every call of the worker."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    read: Callable[[], Any]
    write: Callable[[Any], Any] | None  # None: cannot be put back once changed


# (module under torch.backends, attribute): plain flags, read and written as attributes.
_BACKEND_FLAGS = [
    ("cudnn", "enabled"),
    ("cudnn", "benchmark"),
    ("cudnn", "benchmark_limit"),
    ("cudnn", "deterministic"),
    ("cudnn", "allow_tf32"),
    ("cuda.matmul", "allow_tf32"),
    ("cuda.matmul", "allow_fp16_reduced_precision_reduction"),
    ("cuda.matmul", "allow_bf16_reduced_precision_reduction"),
    ("mkldnn", "enabled"),
    ("opt_einsum", "enabled"),
    ("opt_einsum", "strategy"),
    ("", "fp32_precision"),
    ("cuda.matmul", "fp32_precision"),
    ("cudnn", "fp32_precision"),
    ("cudnn.conv", "fp32_precision"),
    ("cudnn.rnn", "fp32_precision"),
    ("mkldnn", "fp32_precision"),
    ("mkldnn.matmul", "fp32_precision"),
]
_SDP_KERNELS = ("flash", "mem_efficient", "math", "cudnn")
_AUTOCAST_DEVICES = ("cpu", "cuda")


def torch_settings() -> list[Setting]:
    import torch

    settings = [
        Setting("torch default dtype", torch.get_default_dtype, torch.set_default_dtype),
        Setting("torch grad mode", torch.is_grad_enabled, torch.set_grad_enabled),
        Setting("torch inference mode", torch.is_inference_mode_enabled, None),
        Setting("torch threads", torch.get_num_threads, torch.set_num_threads),
        Setting("torch interop threads", torch.get_num_interop_threads, None),
        Setting(
            "torch deterministic algorithms",
            lambda: (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            ),
            lambda value: torch.use_deterministic_algorithms(value[0], warn_only=value[1]),
        ),
        Setting(
            "torch float32 matmul precision",
            torch.get_float32_matmul_precision,
            torch.set_float32_matmul_precision,
        ),
        Setting(
            "torch anomaly mode",
            lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
            lambda value: torch.set_anomaly_enabled(*value),
        ),
        Setting("torch warn always", torch.is_warn_always_enabled, torch.set_warn_always),
        Setting("torch print options", _print_options, _set_print_options),
        Setting("torch global module hooks", _global_hooks, _set_global_hooks),
    ]
    settings += _optional(torch)
    # Last: putting the default device back leaves its mode, so the stacks are then compared.
    settings += [
        Setting("torch function mode stack", torch._C._len_torch_function_stack, None),
        Setting("torch dispatch mode stack", torch._C._len_torch_dispatch_stack, None),
    ]
    return settings


def _optional(torch: Any) -> Iterator[Setting]:
    """Settings of some torch versions only."""
    context = getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None)
    if context is not None and hasattr(torch, "set_default_device"):
        yield Setting(
            "torch default device",
            lambda: getattr(getattr(context, "device_context", None), "device", None),
            torch.set_default_device,
        )
    deterministic = getattr(torch.utils, "deterministic", None)
    if hasattr(deterministic, "fill_uninitialized_memory"):
        yield _attribute(
            "torch fill uninitialized memory", deterministic, "fill_uninitialized_memory"
        )
    for path, name in _BACKEND_FLAGS:
        owner = _backend(torch, path)
        if owner is not None and hasattr(owner, name):
            yield _attribute(".".join(filter(None, ("torch.backends", path, name))), owner, name)
    cuda = torch.backends.cuda
    for kernel in _SDP_KERNELS:
        read = getattr(cuda, f"{kernel}_sdp_enabled", None)
        write = getattr(cuda, f"enable_{kernel}_sdp", None)
        if read is not None and write is not None:
            yield Setting(f"torch {kernel} attention", read, write)
    for device in _AUTOCAST_DEVICES:
        yield Setting(
            f"torch autocast on {device}",
            lambda device=device: (
                torch.is_autocast_enabled(device),
                torch.get_autocast_dtype(device),
            ),
            lambda value, device=device: (
                torch.set_autocast_enabled(device, value[0]),
                torch.set_autocast_dtype(device, value[1]),
            ),
        )


def _backend(torch: Any, path: str) -> Any:
    owner = torch.backends
    for part in filter(None, path.split(".")):
        owner = getattr(owner, part, None)
    return owner


def _attribute(name: str, owner: Any, attribute: str) -> Setting:
    return Setting(
        name,
        lambda: getattr(owner, attribute),
        lambda value: setattr(owner, attribute, value),
    )


def _print_options() -> dict[str, Any]:
    from torch import _tensor_str

    return dict(vars(_tensor_str.PRINT_OPTS))


def _set_print_options(options: dict[str, Any]) -> None:
    from torch import _tensor_str

    vars(_tensor_str.PRINT_OPTS).update(options)


def _hook_registries() -> dict[str, dict]:
    """torch.nn's global module hooks (``register_module_forward_hook``…): dictionaries that
    registering fills in place, which a comparison of names would not see."""
    from torch.nn.modules import module

    return {
        name: value
        for name, value in vars(module).items()
        if name.startswith("_global_") and isinstance(value, dict)
    }


def _global_hooks() -> dict[str, list]:
    return {name: list(hooks.items()) for name, hooks in _hook_registries().items()}


def _set_global_hooks(saved: dict[str, list]) -> None:
    for name, hooks in _hook_registries().items():
        hooks.clear()
        hooks.update(saved.get(name, []))


def process_settings() -> list[Setting]:
    return [
        Setting("sys.getrecursionlimit", sys.getrecursionlimit, sys.setrecursionlimit),
        Setting("sys.getswitchinterval", sys.getswitchinterval, sys.setswitchinterval),
        Setting("socket default timeout", socket.getdefaulttimeout, socket.setdefaulttimeout),
        _logging_setting(),
    ]


def _logging_setting() -> Setting:
    """Levels, switches and handlers of the loggers that exist now, and logging.disable's
    level (a library's ``set_verbosity_error()``); loggers created later are not followed."""
    manager = logging.Logger.manager
    loggers = [logging.getLogger()]
    loggers += [one for one in manager.loggerDict.values() if isinstance(one, logging.Logger)]

    def read() -> tuple:
        return manager.disable, [
            (one.level, one.disabled, one.propagate, list(one.handlers)) for one in loggers
        ]

    def write(value: tuple) -> None:
        disable, states = value
        logging.disable(disable)
        for one, (level, disabled, propagate, handlers) in zip(loggers, states):
            one.setLevel(level)
            one.disabled, one.propagate, one.handlers[:] = disabled, propagate, handlers

    return Setting("logging levels and handlers", read, write)
