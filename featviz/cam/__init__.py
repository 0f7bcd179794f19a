"""Class-activation maps: one registry of methods, one module per method family.

Importing this package does not import torch: ``featviz --help`` lists the methods from the
registry. The tensor code (``forward_for_cam``, ``normalise``…) is loaded on first access.
"""

from __future__ import annotations

from typing import Any

from featviz.cam.registry import (
    ATTENTION,
    INPUT,
    MethodInfo,
    load_method,
    method_info,
    method_names,
    register,
)

__all__ = [
    "ATTENTION",
    "INPUT",
    "CamContext",
    "CamMethod",
    "MethodInfo",
    "forward_for_cam",
    "fuse",
    "heatmap",
    "load_method",
    "method_info",
    "method_names",
    "normalise",
    "register",
]

_LAZY = {
    "CamContext": "context",
    "forward_for_cam": "context",
    "CamMethod": "base",
    "fuse": "base",
    "heatmap": "base",
    "normalise": "base",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"featviz.cam.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'featviz.cam' has no attribute '{name}'")
