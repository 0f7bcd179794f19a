"""Images handed over in memory (the library): paths, PIL images and uint8 arrays, one or many.

``sources`` turns what a caller passed into the same ``ImageSource`` stream a command line
gives, so that a library call is batched, decoded and failed exactly as a run over files is:
a path is read like a named file; a PIL image is turned upright as its EXIF orientation says
and converted to RGB like a decoded file; an array must be uint8, (H, W) grey or (H, W, 3) RGB,
and a (N, H, W, 3) array is N images. ``streamed`` is the same for a dataset: a folder or a
glob pattern, or an iterable read only as the run goes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

from featviz.errors import UsageError
from featviz.inputs.discover import ImageSource, discover
from featviz.inputs.names import ImageNames
from featviz.inputs.printable import printable


def sources(images: Any) -> tuple[list[ImageSource], bool]:
    """(one ImageSource per image, whether a single image was given rather than a list)."""
    single = _is_single(images)
    found = list(_each([images] if single else images))
    if not found:
        raise UsageError("no images given", hint="pass a path, a PIL image or a uint8 array")
    return found, single


def streamed(images: Any) -> Iterator[ImageSource]:
    """The images of a dataset, lazily, each as its turn comes: one path names a file, a
    folder or a glob pattern as a command line's input does; anything else is one image or an
    iterable of them (paths of files, PIL images, arrays: a generator is read as the run goes).

    A folder or pattern with no image in it fails as an unreadable file does (its
    ``problem``); an empty iterable raises UsageError once it is found empty.
    """
    if isinstance(images, (str, os.PathLike)):
        yield from discover([os.fspath(images)])
        return
    given = False
    for source in _each([images] if _is_picture(images) else images):
        given = True
        yield source
    if not given:
        raise UsageError("no images given", hint="pass a folder, paths, PIL images or arrays")


def _each(items: Iterable[Any]) -> Iterator[ImageSource]:
    """One ImageSource per item, numbered in order: a path is read like a named file, anything
    else must be an in-memory image (``checked``)."""
    names = ImageNames()
    for index, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            name = os.path.splitext(path.name)[0] or "_"
            yield ImageSource(path, names.claim(PurePath(name)), printable(path), index)
        else:
            checked(item)
            relative = names.claim(PurePath(f"image-{index}"))
            yield ImageSource(
                Path(f"<image {index}>"), relative, f"image {index}", index, image=item
            )


def _is_single(images: Any) -> bool:
    import numpy as np

    if isinstance(images, np.ndarray):
        return images.ndim != 4
    return isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence)


def _is_picture(images: Any) -> bool:
    import numpy as np
    from PIL import Image

    if isinstance(images, np.ndarray):
        return images.ndim != 4
    return isinstance(images, Image.Image)


def checked(image: Any) -> None:
    """Raise UsageError unless ``image`` is a PIL image or a uint8 (H, W) / (H, W, 3) array;
    checked in the order type, dtype, shape, each message saying what was expected."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return
    if not isinstance(image, np.ndarray):
        raise UsageError(
            f"expected a path, a PIL image or a numpy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise UsageError(
            f"expected a uint8 array (pixels 0–255), got {image.dtype}",
            hint="convert with (array * 255).round().astype('uint8') if it holds 0–1 floats",
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise UsageError(f"expected an (H, W) or (H, W, 3) array, got shape {image.shape}")


def picture(image: Any) -> Any:
    """An in-memory image as an upright 8-bit RGB PIL image."""
    import numpy as np
    from PIL import Image, ImageOps

    from featviz.inputs.decode import to_rgb

    if isinstance(image, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    return to_rgb(ImageOps.exif_transpose(image))


def names_of(found: Sequence[ImageSource]) -> list[str]:
    """How each image is named in results: its path, or ``image N``."""
    return [source.display for source in found]
