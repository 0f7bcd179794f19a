"""Process-wide state one call leaves behind, put back before the next call runs: what a
``file.py:build`` factory sets (``torch.set_default_dtype``), patches
(``torch.nn.functional.relu = …``, ``torch.nn.ReLU.forward = …``) or turns on, a fresh process
of the next call would never have seen.

Two kinds, both taken when the worker has just started (after its imports):

- settings that live in torch's C++ core or in the interpreter, read and written through
  functions (the default dtype and device, grad and inference mode, threads, deterministic
  algorithms, matmul precision, cuDNN and other backend flags, anomaly mode, autocast, print
  options, global module hooks, torch's mode stacks, recursion limit, logging levels…);
- the attribute dictionaries of library modules (isolation.py tells them from the user's) and
  of the classes they define: any name rebound, added or deleted.

After each call, what differs is put back when it is the user's doing: a name deleted, or a
value the user's code made (their function, class or object, and a method, partial or
decorator around one) bound to a library's name (``F.relu = lambda …``, ``ReLU.forward = …``).
A library's own changes stay, since putting them back would break it: values set on first use
(``PIL.Image._initialized``), functions wrapped or properties registered as a library is
imported (torch._dynamo wraps ``torch.manual_seed``; transformers adds
``logging.Logger.warning_once``), counters (hook handles' ids), submodules bound by imports.
Modules first imported during a call join the snapshot as that call leaves them. What cannot be
put back (a setting with no setter, a class that refuses the assignment) is reported, and the
worker retires after the call.

Not seen: a plain value or a library's function bound to a library's name by the user
(``PIL.Image.MAX_IMAGE_PIXELS = None``, ``F.relu = F.gelu``), which looks like a library's own
change, and the contents of containers (a dict filled in place), but for torch's global hook
registries, which are settings.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from featviz.worker.isolation import is_library, is_library_file
from featviz.worker.settings import Setting, process_settings, torch_settings

_ABSENT = object()


@dataclass
class Outcome:
    """What a call had changed: ``restored`` names what was put back, ``stuck`` what could
    not be (the worker then retires)."""

    restored: list[str]
    stuck: list[str]


class GlobalState:
    """The state as the worker started; ``restore`` puts it back after a call."""

    def __init__(self) -> None:
        self.settings = list(_readable(_settings()))
        # id → (a module or class, its name, its attributes): the owner itself is held, so
        # its id stays its own.
        self.saved: dict[int, tuple[Any, str, dict[str, Any]]] = {}
        self.library_names: set[str] = set()
        self._adopt_new_modules()

    def restore(self) -> Outcome:
        outcome = Outcome([], [])
        self._restore_attributes(outcome)  # first: a setting's writer may have been patched
        self._restore_settings(outcome)
        self._adopt_new_modules()
        return outcome

    def _restore_settings(self, outcome: Outcome) -> None:
        import torch

        torch.set_flush_denormal(False)  # no getter; off in every fresh process
        with warnings.catch_warnings():  # deprecated flags warn when written; not the user's
            warnings.simplefilter("ignore")
            for setting, value in self.settings:
                try:
                    if _same(setting.read(), value):
                        continue
                    if setting.write is not None:
                        setting.write(value)
                    back = _same(setting.read(), value)
                except Exception:  # a user's change its own writer refuses to undo
                    back = False
                (outcome.restored if back else outcome.stuck).append(setting.name)

    def _restore_attributes(self, outcome: Outcome) -> None:
        for owner, name, saved in self.saved.values():
            current = vars(owner)
            if _same(current, saved):
                continue
            for key in saved.keys() | current.keys():
                before, now = saved.get(key, _ABSENT), current.get(key, _ABSENT)
                if now is before:
                    continue
                if not self._users_doing(now):
                    saved[key] = now
                elif _put_back(owner, key, before):
                    outcome.restored.append(f"{name}.{key}")
                else:
                    outcome.stuck.append(f"{name}.{key}")

    def _users_doing(self, now: Any) -> bool:
        """Whether an attribute's new value (or its absence) is the user's doing: see the
        module's docstring."""
        if now is _ABSENT:
            return True
        if isinstance(now, types.ModuleType):
            return False
        made = _underlying(now)
        if isinstance(made, types.FunctionType):
            return not is_library_file(made.__code__.co_filename)
        defined_by = made if isinstance(made, type) else type(made)
        return getattr(defined_by, "__module__", None) not in self.library_names

    def _adopt_new_modules(self) -> None:
        """Library modules not yet in the snapshot (imported since), with their classes."""
        for name, module in list(sys.modules.items()):
            if (
                isinstance(module, types.ModuleType)
                and id(module) not in self.saved
                and is_library(module)
            ):
                self.library_names.add(name)
                for owner, label in _owners(name, module):
                    self.saved.setdefault(id(owner), (owner, label, dict(vars(owner))))


def _owners(name: str, module: types.ModuleType) -> Iterator[tuple[Any, str]]:
    """The module and the classes it defines, each with the name messages give it."""
    yield module, name
    for key, value in list(vars(module).items()):
        # type(): asking isinstance would read __class__, which deprecated aliases warn on
        if issubclass(type(value), type) and vars(value).get("__module__") == name:
            yield value, f"{name}.{key}"


def _same(current: Any, saved: Any) -> bool:
    """Equal, compared in C (identical values short-cut); a value whose ``==`` raises or is
    not a plain truth (an array) counts as changed."""
    try:
        return bool(current == saved)
    except Exception:
        return False


def _underlying(value: Any) -> Any:
    """The function under a method, staticmethod, classmethod, partial or ``functools.wraps``
    wrapper (a library's decorator around the user's function)."""
    while True:
        if isinstance(value, functools.partial):
            value = value.func
        elif isinstance(value, (types.MethodType, staticmethod, classmethod)):
            value = value.__func__
        elif isinstance(value, types.FunctionType) and hasattr(value, "__wrapped__"):
            value = value.__wrapped__
        else:
            return value


def _put_back(owner: Any, key: str, value: Any) -> bool:
    """Put one attribute back; False when the owner refuses (an immutable type)."""
    try:
        if isinstance(owner, type):
            if value is _ABSENT:
                delattr(owner, key)
            else:
                setattr(owner, key, value)
        elif value is _ABSENT:
            del vars(owner)[key]
        else:
            vars(owner)[key] = value
    except (AttributeError, TypeError):
        return False
    return True


def _settings() -> list[Setting]:
    return [*torch_settings(), *process_settings()]


def _readable(settings: list[Setting]) -> Iterator[tuple[Setting, Any]]:
    """Each setting with its value now; one this build of torch cannot read is left out."""
    for setting in settings:
        try:
            yield setting, setting.read()
        except Exception:  # an accelerator's switch on a build without it, say
            continue
