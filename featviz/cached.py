"""``cached``: a property computed once per instance, without functools.cached_property's lock.

Up to Python 3.11, ``functools.cached_property`` holds one lock per class while it computes:
the writer threads encoding different pictures' PNGs, or the decoders converting different
clips' frames, would take turns instead of running side by side. Here, instances never wait
for each other; two threads asking one instance at the same moment may both compute its value
(the same value: one is kept).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

Value = TypeVar("Value")


class cached(Generic[Value]):  # lower case: a decorator, like property
    def __init__(self, function: Callable[[Any], Value]) -> None:
        self.function = function
        self.name = function.__name__
        self.__doc__ = function.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> Value:
        if instance is None:
            return self  # type: ignore[return-value]  # looked up on the class
        value = self.function(instance)
        # Found in the instance's own dict from now on (no __set__: its entry comes first);
        # written there directly, so that frozen dataclasses work too.
        instance.__dict__[self.name] = value
        return value
