"""Class names: ImageNet's, or a text file with one name per line, checked against the
number of classes the model outputs.
"""

from __future__ import annotations

from pathlib import Path

from featviz.errors import UsageError


def _checked_categories(
    categories: list[str] | None, origin: str | None, classes: int | None, *, given: bool
) -> list[str] | None:
    """Names that fit the model's output. Names a person gave (``--labels``, ``LABELS``) that do
    not fit are a usage error; the weights' own names that no longer fit (a head resized with
    ``--num-classes``) are dropped, since nothing names the new classes."""
    if categories is None or classes is None or len(categories) == classes:
        return categories
    if not given:
        return None
    raise UsageError(
        f"{origin} has {len(categories)} names, the model has {classes} classes",
        hint="give one class name per line, in the order of the model's outputs",
    )


def read_labels(labels: str) -> list[str]:
    """``imagenet`` or a text file with one class name per line."""
    if labels == "imagenet":
        from featviz.model.sources.torchvision_models import imagenet_categories

        return imagenet_categories()
    try:
        raw = Path(labels).read_bytes()
    except OSError as exc:
        raise UsageError(
            f"--labels: cannot read '{labels}' ({exc.strerror})",
            hint="pass `imagenet` or a text file with one class name per line",
        ) from exc
    try:
        # utf-8-sig: a byte-order mark (Notepad writes one) is not part of the first name
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise UsageError(
            f"--labels: '{labels}' line {line} is not UTF-8 text",
            hint="save it as UTF-8, one class name per line",
        ) from exc
    names = [line.strip() for line in text.splitlines()]
    names = [name for name in names if name]
    if not names:
        raise UsageError(f"--labels: '{labels}' holds no class names")
    return names
