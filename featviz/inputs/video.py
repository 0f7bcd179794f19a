"""Video files → clips of the model's length, streamed: a kind of input for video classifiers.

``clips`` decodes a video (MP4, WebM, animated GIF, anything FFmpeg reads through PyAV) one
frame at a time and yields a ``Clip`` each time it holds ``Sampling.length`` sampled frames, so
a run holds one clip's frames however long the video is; the rest of the file is never decoded
ahead. Frames are sampled as the weights were trained: at ``Sampling.frame_rate`` frames per
second of the video's own timestamps (torchvision's Kinetics weights: 15 fps, 16 frames), each
decoded frame used at most once; ``frame_rate`` None takes every frame. A video that ends
mid-clip gives a last, shorter clip, filled up to the model's length by repeating its last frame
(``Clip.used`` says how many frames are its own), so that every clip is explained.

A clip holds its frames as decoded (PyAV's, in the video's own pixel format) and converts them
to RGB only when its pixels are first asked for, in the run's decode threads: the frames that
sampling passes over are never converted, nor are those of a clip that ``--skip-existing``
skips (the video is still decoded up to its last clip, which only decoding finds).

``clip_tensor`` makes a clip the model's (3, T, h, w) input: each frame resized as an image
would be (inputs/preprocess.py: no cropping), stacked along time and normalised.

PyAV (``pip install 'featviz[video]'``) is imported only when a video is read.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from featviz.cached import cached
from featviz.errors import InputError, UsageError, first_line
from featviz.inputs.decode import MAX_PIXELS_HINT
from featviz.inputs.discover import ImageSource
from featviz.inputs.printable import printable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from featviz.inputs.preprocess import Preprocessing


@dataclass(frozen=True)
class Sampling:
    """How a model takes a video: ``length`` frames per clip, sampled at ``frame_rate`` frames
    per second of video time (None: every decoded frame)."""

    length: int
    frame_rate: float | None = None


@dataclass(eq=False)
class Clip:
    """``length`` consecutive sampled frames of a video.

    ``index``: the clip's position in the video, from 0; ``decoded``: its T frames as decoded
    (PyAV's frames, or (H, W, 3) uint8 arrays); ``times``: each frame's time in seconds;
    ``used``: how many of the T frames are the video's (the rest repeat the last one to fill
    the last clip).
    """

    index: int
    decoded: list[Any]
    times: tuple[float, ...]
    used: int

    @cached
    def frames(self) -> np.ndarray:
        """(T, H, W, 3) uint8, the video's own pixels: converted from ``decoded`` when first
        asked for."""
        import numpy as np

        converted: dict[int, np.ndarray] = {}  # a repeated frame is converted once
        for frame in self.decoded:
            if id(frame) not in converted:
                converted[id(frame)] = _rgb(frame)
        return np.stack([converted[id(frame)] for frame in self.decoded])

    @property
    def pixels(self) -> int:
        """T × H × W, known without converting a frame."""
        first = self.decoded[0]
        height, width = first.shape[:2] if hasattr(first, "shape") else (first.height, first.width)
        return len(self.decoded) * height * width

    def __getstate__(self) -> dict[str, Any]:
        # PyAV's frames cannot be pickled (a Ray actor's chunk of clips): their pixels can.
        return {**self.__dict__, "decoded": list(self.frames)}

    @property
    def frame_ms(self) -> int:
        """Milliseconds from one frame to the next (the mean over the clip's own frames), to
        play the clip back at its speed; 100 for a clip of one frame."""
        if self.used < 2:
            return 100
        return max(1, round(1000 * (self.times[self.used - 1] - self.times[0]) / (self.used - 1)))


def clips(
    path: str | os.PathLike[str], sampling: Sampling, *, max_pixels: int | None = None
) -> Iterator[Clip]:
    """The clips of the video at ``path``, decoded lazily (see the module docstring).

    ``max_pixels``: frames larger than this (width × height) are refused before decoding.

    Raises:
        UsageError: PyAV is not installed.
        InputError: the file cannot be read as a video (the message names it).
    """
    try:
        yield from _clips(path, sampling, max_pixels)
    except InputError as exc:
        raise InputError(f"{printable(path)}: {exc.message}", hint=exc.hint) from exc


def clip_sources(
    sources: Iterable[ImageSource], sampling: Sampling, *, max_pixels: int | None = None
) -> Iterator[ImageSource]:
    """Each video of ``sources`` as one source per clip, lazily: a clip is decoded only when
    the run asks for its source, so the clips held are those the run has in flight.

    A clip's ``relative`` is its video's folder and ``clip0000``, ``clip0001``…; its ``image``
    is the ``Clip``. A video that cannot be read, or fails partway, gives one more source whose
    ``problem`` says why (it fails alone; the clips before it stand).

    Raises:
        UsageError: PyAV is not installed (now, before any input is read).
    """
    _pyav()
    return _clip_sources(sources, sampling, max_pixels)


def _clip_sources(
    sources: Iterable[ImageSource], sampling: Sampling, max_pixels: int | None
) -> Iterator[ImageSource]:
    number = itertools.count()
    for source in sources:
        if source.problem is not None:
            yield replace(source, index=next(number))
            continue
        index = 0
        try:
            for clip in _clips(source.path, sampling, max_pixels):
                index = clip.index + 1
                yield replace(
                    source,
                    relative=source.relative / f"clip{clip.index:04d}",
                    display=f"{source.display} clip {clip.index}",
                    index=next(number),
                    image=clip,
                )
        except InputError as exc:
            relative = source.relative / f"clip{index:04d}" if index else source.relative
            yield replace(source, relative=relative, index=next(number), problem=exc.message)


def _clips(
    path: str | os.PathLike[str], sampling: Sampling, max_pixels: int | None
) -> Iterator[Clip]:
    """``clips``, its InputErrors saying why without naming the file."""
    av = _pyav()
    try:
        container = av.open(os.fspath(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot be read as a video ({first_line(exc)})") from exc
    with container:
        if not container.streams.video:
            raise InputError("has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if max_pixels is not None and stream.width * stream.height > max_pixels:
            raise InputError(
                f"its frames are {stream.width}×{stream.height}, more than {max_pixels} pixels "
                f"({MAX_PIXELS_HINT})"
            )
        frames = _sampled(_decoded(av, container, stream), sampling.frame_rate)
        yield from _grouped(frames, sampling.length)


def _pyav() -> Any:
    try:
        import av
    except ImportError:
        raise UsageError(
            "reading videos needs PyAV, which is not installed",
            hint="pip install 'featviz[video]'",
        ) from None
    return av


def _decoded(av: Any, container: Any, stream: Any) -> Iterator[tuple[float, Any]]:
    """(time in seconds, PyAV's frame) of every frame, in order; frames without a timestamp
    (some GIFs) are placed at the stream's average rate."""
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    try:
        for number, frame in enumerate(container.decode(stream)):
            time = frame.time if frame.time is not None else number / rate
            yield float(time), frame
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"the video cannot be decoded ({first_line(exc)})") from exc


def _rgb(frame: Any) -> np.ndarray:
    """A decoded frame's (H, W, 3) uint8 RGB pixels (an array is taken as it is)."""
    return frame if hasattr(frame, "shape") else frame.to_ndarray(format="rgb24")


def _sampled(
    frames: Iterator[tuple[float, Any]], frame_rate: float | None
) -> Iterator[tuple[float, Any]]:
    """The frames nearest a grid of ``frame_rate`` per second, from the first frame's time: a
    frame is taken when it reaches the next grid time, and the grid then moves past it."""
    if frame_rate is None:
        yield from frames
        return
    step = 1.0 / frame_rate
    due: float | None = None
    # Half a millisecond of slack: timestamps are rounded to the stream's time base.
    slack = 5e-4
    for time, pixels in frames:
        if due is None:
            due = time
        if time + slack >= due:
            yield time, pixels
            due += step * max(1, int((time + slack - due) / step) + 1)


def _grouped(frames: Iterator[tuple[float, Any]], length: int) -> Iterator[Clip]:
    """Clips of ``length`` frames; the last, shorter one filled by repeating its last frame."""

    held: list[tuple[float, Any]] = []
    index = 0
    for frame in frames:
        held.append(frame)
        if len(held) == length:
            yield _clip(index, held, length)
            held, index = [], index + 1
    if held:
        yield _clip(index, held, length)
    elif index == 0:
        raise InputError("the video has no frames")


def _clip(index: int, held: list[tuple[float, Any]], length: int) -> Clip:
    used = len(held)
    padded = held + [held[-1]] * (length - used)
    return Clip(index, [frame for _, frame in padded], tuple(time for time, _ in padded), used)


def clip_tensor(clip: Clip, preprocessing: Preprocessing) -> torch.Tensor:
    """The model's float32 (3, T, h, w) input for ``clip``: every frame resized as an image
    of its size would be (no cropping), normalised."""
    import torch
    from PIL import Image

    from featviz.inputs.preprocess import normalise, resized

    frames = torch.stack([resized(Image.fromarray(frame), preprocessing) for frame in clip.frames])
    return normalise(frames, preprocessing).permute(1, 0, 2, 3).contiguous()
