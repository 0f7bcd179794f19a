"""Class-activation maps: one registry of methods, one module per method family.

Importing this package does not import torch: ``featviz --help`` lists the methods from the
registry. The tensor code (``forward_for_cam``, ``normalise``…) is loaded on first access.
"""

from __future__ import annotations

from typing import Any

from featviz.cam.registry import MethodInfo, load_method, method_info, method_names, register

__all__ = [
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
    "upsample",
]

_FROM_BASE = {
    "CamContext",
    "CamMethod",
    "forward_for_cam",
    "fuse",
    "heatmap",
    "normalise",
    "upsample",
}


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from featviz.cam import base

        return getattr(base, name)
    raise AttributeError(f"module 'featviz.cam' has no attribute '{name}'")
