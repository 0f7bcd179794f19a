"""Which model, weights and settings made each model folder under ``--out``.

A run writes its pictures under a folder named after its model: ``resnet50`` (torchvision's
name), ``timm-vit_small_patch16_224``, ``hf-google-vit-base-patch16-224``, ``mynet`` (a factory
``mynet.py:build``; ``mynet.small`` for another callable), with ``@none`` or
``@IMAGENET1K_V2`` added when ``--weights`` is not the default. The folder is claimed:
``models/<name>.json`` says which model it holds (spec, weights, checkpoint, classes, labels,
seed, input size, resize, precision) and ``models/<name>.<command>.json`` the command's settings
that change its pictures (colour map, opacity…; not which methods, layers or classes, whose
outputs have paths of their own). A run whose model or settings differ from a claim takes the
next free name, ``resnet50-2``, ``-3``…: a run never overwrites what another model or other
settings made, and runs with the same ones share the folder (``--skip-existing`` finds their
work). A claim is a finished file hard-linked into place, which fails when the name exists: runs
that start together never take one name for different things.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featviz.errors import RunError
from featviz.explainer.names import safe_name
from featviz.sinks.encode import encode_json
from featviz.sinks.layout import RESERVED, write_atomic

MODELS = "models"


@dataclass(frozen=True)
class Variant:
    """What a run's pictures depend on: ``model`` (the network as built) and ``options`` (the
    command's settings that change a picture at a given path); ``name`` the folder it asks
    for first."""

    name: str
    command: str
    model: dict[str, Any]
    options: dict[str, Any]
    spec: str  # as the user gave it (``model`` holds the absolute path of a file)

    @property
    def description(self) -> str:
        """The model as a person reads it: ``resnet50, weights none, seed 3``."""
        details = [
            f"{key.replace('_', ' ')} {value}"
            for key, value in self.model.items()
            # a factory's weights are whatever its own code loads: nothing to name
            if key != "spec" and value is not None and (key, value) != ("weights", "factory")
        ]
        return ", ".join([self.spec, *details])


def folder_name(spec: str, weights: str) -> str:
    """The folder a model asks for first (see the module docstring)."""
    if spec.startswith("hf:"):
        target = spec[3:]
        local = _is_path(target)
        name = "hf-" + (os.path.basename(os.path.normpath(target)) if local else target)
    elif spec.startswith("timm/"):
        name = "timm-" + spec[5:]
    elif ":" in spec:
        location, _, callable_name = spec.rpartition(":")
        if location.endswith(".py"):
            location = os.path.splitext(os.path.basename(location))[0]
        name = location if callable_name == "build" else f"{location}.{callable_name}"
    else:
        name = spec
    name = safe_name(name.replace("/", "-"))
    return name if weights.upper() == "DEFAULT" else f"{name}@{safe_name(weights)}"


def canonical_spec(spec: str) -> str:
    """The spec with its file or folder made absolute: the same model however it was named."""
    if spec.startswith("hf:") and _is_path(spec[3:]):
        return "hf:" + os.path.abspath(spec[3:])
    location, _, callable_name = spec.rpartition(":")
    if location.endswith(".py") and not spec.startswith(("hf:", "timm/")):
        return f"{os.path.abspath(location)}:{callable_name}"
    return spec


def _is_path(text: str) -> bool:
    return os.path.isdir(text) or text.startswith((".", "/", "~"))


def claim(root: Path, variant: Variant) -> str:
    """The folder under ``root`` that ``variant`` writes into: the first of its name, then
    ``-2``, ``-3``…, that no other model or settings hold."""
    folder = root / MODELS
    model = {"model": variant.model, "description": variant.description}
    settings = {"command": variant.command, "options": variant.options}
    number = 1
    while True:
        name = variant.name if number == 1 else f"{variant.name}-{number}"
        number += 1
        if name in RESERVED:
            continue
        if _claimed(folder / f"{name}.json", model, "model") and _claimed(
            folder / f"{name}.{variant.command}.json", settings, "options"
        ):
            return name


def _claimed(path: Path, content: dict[str, Any], key: str) -> bool:
    """Whether ``path`` now says ``content[key]``: written whole if nothing was there, or
    already saying it."""
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        write_atomic(temporary, encode_json(content))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another run claimed it meanwhile: what does it say?
        except OSError as exc:
            raise RunError(f"cannot write '{path}': {exc.strerror or exc}") from exc
        finally:
            temporary.unlink(missing_ok=True)
    try:
        held = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False  # damaged: leave the name to it
    return isinstance(held, dict) and held.get(key) == _as_json(content[key])


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from a claim (tuples as lists, keys as text)."""
    return json.loads(json.dumps(value, default=str))


def claims(root: Path) -> dict[str, dict[str, Any]]:
    """Every model folder's claim under ``root``: name → its ``model`` and ``description``."""
    found = {}
    for path in sorted((root / MODELS).glob("*.json")):
        name = path.name[: -len(".json")]
        try:
            held = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(held, dict) and "model" in held:
            found[name] = held
    return found
