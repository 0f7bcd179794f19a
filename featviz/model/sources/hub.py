"""The Hugging Face hub, as timm and transformers reach it: their cache first, the network only
for what is not cached, and no minute of retries on a machine without one.

The hub client retries a failed look-up five times with a growing backoff (about 25 s per file,
and timm looks for two files), printing ``Retrying in 8s`` each time. So a model is first
loaded from the cache alone; only when that fails does one short request ask whether the hub
answers at all, and only then does the library's ordinary download (its retries included, for
a network that merely stutters) run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from featviz.errors import first_line

_PROBE_TIMEOUT_S = 5.0
Loaded = TypeVar("Loaded")


class HubUnavailable(Exception):
    """Not cached, and the hub cannot give it now; ``str()`` says why, for featviz's message."""


def cached_first(
    load: Callable[[bool], Loaded], errors: tuple[type[Exception], ...] = (Exception,)
) -> Loaded:
    """``load(True)`` (from the cache alone); when it fails with one of ``errors``,
    ``load(False)`` (downloading) once the hub answers; HubUnavailable when neither gives it."""
    try:
        return load(True)
    except errors as exc:
        cause = exc
    problem = unreachable()
    if problem is None:
        try:
            return load(False)
        except errors as exc:
            cause, problem = exc, f"{type(exc).__name__}: {first_line(exc)}"
    raise HubUnavailable(problem) from cause


@contextmanager
def cache_only(active: bool = True) -> Iterator[None]:
    """The hub client answers from its cache alone, as under ``HF_HUB_OFFLINE=1``: for timm,
    whose ``create_model`` has no switch of its own for it (transformers has
    ``local_files_only``). With ``active`` False, nothing changes."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or active
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def unreachable() -> str | None:
    """Why the hub cannot be reached now, or None when it answers (whatever the status: any
    answer means a download may work). One request through the hub client's own session, so
    its proxies, certificates and ``HF_ENDPOINT`` apply."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=_PROBE_TIMEOUT_S)
    except Exception as exc:  # the client's transport errors have no common base we can name
        return f"cannot reach {constants.ENDPOINT}: {type(exc).__name__}: {first_line(exc)}"
    return None


def cache_folder() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE
