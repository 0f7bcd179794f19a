"""``shared_options``: the decorator that gives a command the option groups it asks for.

A command asks for ``model: ModelRequest``, ``run: RunRequest``, ``output: OutputRequest`` or
``report: Report`` in its signature; ``shared_options`` replaces each such parameter with the
options it is made of (so ``--help`` shows them under their own heading) and packs them
back into the frozen value before the command runs. Every command thus accepts the same model
options: users paste the same options across commands and scripts. An option a command does
not use is still accepted, and its help says it is ignored there and why.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

from featviz.cli.options.explain import EXPLAIN_OPTIONS, Explaining, explaining
from featviz.cli.options.model import MODEL_OPTIONS, model_request
from featviz.cli.options.output import (
    OUTPUT_OPTIONS,
    REPORT_OPTIONS,
    Report,
    output_request,
    report,
)
from featviz.cli.options.panels import Declared
from featviz.cli.options.run import RAY_OPTIONS, RUN_OPTIONS, run_request
from featviz.model.options import ModelRequest
from featviz.run.plan import RunRequest
from featviz.sinks.options import OutputRequest

# The value a command asks for → its options, and the function packing their values into it.
_GROUPS: dict[type, tuple[Declared, Callable[[dict[str, Any]], Any]]] = {
    ModelRequest: (MODEL_OPTIONS, model_request),
    RunRequest: ({**RUN_OPTIONS, **RAY_OPTIONS}, run_request),
    OutputRequest: (OUTPUT_OPTIONS, output_request),
    Explaining: (EXPLAIN_OPTIONS, explaining),
    Report: (REPORT_OPTIONS, report),
}


def shared_options(
    *, ignored: dict[str, str] | None = None, methods: tuple[str, ...] = ("gradcam",)
) -> Callable[[Callable], Callable]:
    """Replace a command's ``ModelRequest`` / ``RunRequest`` / ``OutputRequest`` /
    ``Explaining`` / ``Report`` parameters by their options. ``ignored`` maps option names this
    command accepts but does not use to why; ``methods`` is the command's default --method,
    shown in its help."""
    ignored = ignored or {}

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        arguments: list[inspect.Parameter] = []
        options: list[inspect.Parameter] = []
        packed: dict[str, type] = {}
        for parameter in signature.parameters.values():
            group = _GROUPS.get(parameter.annotation)
            if group is None:
                # Typer passes everything by keyword; keyword-only lets arguments come first.
                options.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            packed[parameter.name] = parameter.annotation
            for name, (annotation, default) in group[0].items():
                if name in ignored:
                    annotation = _ignored(annotation, ignored[name])
                if name == "method":
                    annotation = _with_default(annotation, ", ".join(methods))
                added = inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
                target = arguments if default is inspect.Parameter.empty else options
                target.append(added)
        unknown = set(ignored) - {p.name for p in arguments + options}
        if unknown:
            raise ValueError(f"{command.__name__}: no option {', '.join(sorted(unknown))}")

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            for name, kind in packed.items():
                fields, pack = _GROUPS[kind]
                values[name] = pack({key: values.pop(key) for key in fields})
            return command(**values)

        parameters = arguments + options
        run.__signature__ = signature.replace(parameters=parameters)
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


def _with_default(annotation: Any, shown: str) -> Any:
    """The same option, showing ``shown`` as its default."""
    base, info = annotation.__origin__, copy.copy(annotation.__metadata__[0])
    info.show_default = shown
    return Annotated[base, info]


def _ignored(annotation: Any, why: str) -> Any:
    """The same option, its help saying that this command ignores it."""
    base, info = annotation.__origin__, copy.copy(annotation.__metadata__[0])
    info.help = f"{info.help} Ignored by this command: {why}."
    return Annotated[base, info]
