"""What every library call shares: images in memory as a run's inputs (a video model's: the
clips of its videos), the request resolved as a command's would be, and the pipeline that
batches them as the CLI does."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from featviz.errors import InputError, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from featviz.explainer.options import ExplainRequest
    from featviz.inputs.discover import ImageSource
    from featviz.model.load import LoadedModel
    from featviz.run.pipeline import Job
    from featviz.run.plan import Resolved


def in_memory(images: Any) -> tuple[list[ImageSource], bool]:
    """(the images as a run's inputs, whether one image was given rather than a list)."""
    from featviz.inputs.memory import sources

    return sources(images)


def clips_of(loaded: LoadedModel, found: list[ImageSource]) -> Iterator[ImageSource]:
    """The clips of the videos ``found`` names (paths), as a video model's run takes them:
    lazily, each video decoded as its clips are reached.

    Raises:
        UsageError: an image in memory, or PyAV is not installed.
    """
    from featviz.inputs.video import clip_sources

    for source in found:
        if source.image is not None:
            raise UsageError(
                f"{loaded.name} is a video model: it takes video files, not {source.display}",
                hint="pass the paths of the videos (MP4, WebM, animated GIF…)",
            )
    return clip_sources(found, loaded.clip)


_VIDEO_HINT = (
    "featviz.explain takes its videos, and so do featviz maps, compare, score and sanity on "
    "the command line"
)


def images_only(loaded: LoadedModel, call: str, hint: str = _VIDEO_HINT) -> None:
    """Raise UsageError when ``loaded`` is a video model, which library call ``call`` does not
    take yet; ``hint`` says what does."""
    if loaded.clip is not None:
        raise UsageError(
            f"{loaded.name} is a video model: featviz.{call} takes images for now", hint=hint
        )


def resolved_request(
    command: str, request: ExplainRequest, loaded: LoadedModel
) -> tuple[LoadedModel, Resolved]:
    """The request's layers and classes resolved on ``loaded`` exactly as the command's are."""
    from featviz.run.resolve import resolve_explaining

    return resolve_explaining(command, request, loaded)


def batch_size_for(loaded: LoadedModel, batch_size: int | None) -> int:
    """The images per forward: as asked, else the command line's default (8 on a CPU, 32 on
    a GPU)."""
    return batch_size or (32 if loaded.device.type == "cuda" else 8)


def run_pipeline(
    loaded: LoadedModel,
    job: Job,
    found: Iterable[ImageSource],
    batch_size: int | None,
    layers: list[str],
) -> None:
    """Every image (a video model's clip: ``clips_of``) through ``job`` in the CLI's batches,
    streamed; raises InputError naming the images that failed (the first one's reason, and how
    many more). What the job computes, it keeps itself (``explain``'s ``collected``)."""
    from featviz.layers.folding import folded_for
    from featviz.run.pipeline import PipelineConfig, run
    from featviz.run.prepare import default_workers

    folding = folded_for(loaded.module, loaded.trace.foldable, layers)
    workers = default_workers()

    @contextmanager
    def compute() -> Iterator[None]:
        with loaded.in_use(), folding.applied():
            yield

    config = PipelineConfig(
        batch_size=batch_size_for(loaded, batch_size),
        decode_workers=workers,
        write_workers=workers,
        compute=compute,
    )
    # Only the failures are kept: a result holds its image when it was handed over in memory.
    failures = [result.error for result in run(job, found, config) if result.error]
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise InputError(failures[0] + more)
