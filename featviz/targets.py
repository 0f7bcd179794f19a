"""Which classes to explain: ``--target`` indices or names, or the top-k predictions."""

from __future__ import annotations

from featviz.errors import UsageError, closest


def resolve_target(text: str, categories: list[str] | None, num_classes: int | None) -> int:
    """A class index from ``text``: an index, or a class name (case-insensitive; exact, or a
    unique prefix). Ambiguous and unknown names are usage errors with suggestions."""
    if text.strip().lstrip("-").isdigit():
        index = int(text)
        if index < 0 or (num_classes is not None and index >= num_classes):
            raise UsageError(
                f"--target {text}: the model has classes 0 to {num_classes - 1}"
                if num_classes
                else f"--target {text}: not a valid class index"
            )
        return index
    if not categories:
        raise UsageError(
            f"--target '{text}': this model has no class names",
            hint="pass a class index, or names with --labels imagenet|FILE",
        )
    wanted = text.strip().lower()
    lowered = [name.lower() for name in categories]
    if wanted in lowered:
        return lowered.index(wanted)
    prefixed = [i for i, name in enumerate(lowered) if name.startswith(wanted)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        shown = ", ".join(f"'{categories[i]}'" for i in prefixed[:5])
        more = f" and {len(prefixed) - 5} more" if len(prefixed) > 5 else ""
        raise UsageError(
            f"--target '{text}' is ambiguous: {shown}{more}",
            hint="give more of the name, or the class index",
        )
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
