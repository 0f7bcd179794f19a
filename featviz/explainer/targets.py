"""Which classes to explain: ``--target`` indices or names, or the top-k predictions."""

from __future__ import annotations

import re
import shlex

from featviz.errors import UsageError, closest

# Candidates an ambiguous --target lists before it says how many more there are.
_SHOWN = 8


def resolve_target(text: str, categories: list[str] | None, num_classes: int | None) -> int:
    """A class index from ``text``: an index, or a class name (case-insensitive).

    An exact name wins; otherwise the text's words must appear, in order, as whole words of
    exactly one name (``golden`` → 'golden retriever'; ``cat`` does not pick 'catamaran').
    Ambiguous and unknown names are usage errors that list the candidates or the closest names.
    """
    if text.strip().lstrip("-").isdigit():
        return _checked_index(text, num_classes)
    if not categories:
        raise UsageError(
            f"--target '{text}': this model has no class names",
            hint="pass a class index, or names with --labels imagenet|FILE",
        )
    if text in categories:  # 'Cardigan' the corgi, 'cardigan' the sweater
        return categories.index(text)
    wanted = text.strip().casefold()
    matches = [i for i, name in enumerate(categories) if name.casefold() == wanted]
    if not matches:
        words = _words(wanted)
        matches = [i for i, name in enumerate(categories) if _has_run(_words(name), words)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise _ambiguous(text, matches, categories)
    hint = (
        closest(text.strip(), categories)
        or "pass a class index, or see the class names with --labels"
    )
    raise UsageError(f"--target '{text}': no such class", hint=hint)


def check_top_k(top_k: int, num_classes: int | None) -> None:
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: must be at least 1")
    if num_classes is not None and top_k > num_classes:
        raise UsageError(f"--top-k {top_k}: the model has only {num_classes} classes")


def _checked_index(text: str, num_classes: int | None) -> int:
    index = int(text)
    if index < 0 or (num_classes is not None and index >= num_classes):
        raise UsageError(
            f"--target {text}: the model has classes 0 to {num_classes - 1}"
            if num_classes
            else f"--target {text}: not a valid class index"
        )
    return index


def _words(name: str) -> list[str]:
    """Lower-case words; hyphens, underscores and spaces part them (``ping-pong ball`` has
    three), an apostrophe inside a word does not (``potter's wheel`` has two)."""
    return re.findall(r"[^\W_]+(?:'[^\W_]+)*", name.casefold())


def _has_run(words: list[str], wanted: list[str]) -> bool:
    """Whether ``wanted`` (not empty) appears in ``words`` as consecutive words."""
    size = len(wanted)
    return size > 0 and any(words[i : i + size] == wanted for i in range(len(words) - size + 1))


def _ambiguous(text: str, matches: list[int], categories: list[str]) -> UsageError:
    shown = ", ".join(f"'{categories[i]}'" for i in matches[:_SHOWN])
    more = f" and {len(matches) - _SHOWN} more" if len(matches) > _SHOWN else ""
    first = matches[0]
    return UsageError(
        f"--target '{text}' is ambiguous: {len(matches)} classes have those words: {shown}{more}",
        hint=f"give the whole name, e.g. -t {shlex.quote(categories[first])}, or the class index "
        f"({first})",
    )
