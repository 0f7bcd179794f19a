"""Any file → an upright 8-bit RGB PIL image, or an InputError that says in one line why not.

``decode`` is a pure function of the path, safe to call from several threads at once, and lets no
exception but ``InputError`` out whatever bytes the file holds (Pillow's decoders raise OSError,
ValueError, SyntaxError, struct.error, IndexError, ZeroDivisionError, MemoryError… on bad data).

What it does, in order:
- opens the path without following it into a FIFO or device (which could block forever) and
  refuses folders, empty files and missing ones with a reason of their own;
- identifies the format among ``FORMATS`` only, whatever the file is called: Pillow would also
  open EPS (by running Ghostscript on the file) and dozens of rarely used formats, and a run over
  "whatever people keep on disk" should not offer them that much surface;
- refuses images declaring more than ``max_pixels`` before a single pixel is decoded (a 40 kB
  PNG can declare 100000×100000 pixels: 30 GB once decoded as RGB);
- reads all pixels of the first frame (animated GIF/WebP, multi-page TIFF) right there, so a
  truncated file fails here and not halfway through the pipeline
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off);
- turns the image upright as its EXIF orientation says (the way viewers show it);
- converts every mode to RGB: transparency is composited over ``BACKGROUND``; 16-bit greyscale
  (``I;16*``) is scaled by 255/65535 rather than clipped; 32-bit integer (``I``) images holding
  values in 0…65535 are taken as 16-bit, float (``F``) images in 0…1 as such, and other ranges
  are stretched from their minimum to their maximum.

Pillow's own guard reads one module-wide limit (``Image.MAX_IMAGE_PIXELS``; it refuses above
twice that, and warns above it). It stays on, because it also checks sizes featviz cannot see
(GIF frames, TIFF tiles); when ``--max-pixels`` asks for more than it allows, it is raised, only
ever raised and under a lock, so that concurrent decodes never see it lowered. Pillow's
warnings are filtered out once, at import (see the filter below).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featviz.errors import InputError, UsageError
from featviz.inputs.headers import declared_size
from featviz.inputs.limits import DEFAULT_MAX_PIXELS
from featviz.inputs.printable import printable

BACKGROUND: tuple[int, int, int] = (255, 255, 255)
"""What transparent pixels become: white, as browsers and image viewers show them."""

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
"""Pillow formats featviz decodes, judged by content (multi-picture JPEGs, MPO, count as JPEG)."""

MAX_PIXELS_HINT = "raise it with --max-pixels N if you trust the file"

# Pillow remarks on stderr about files it decodes anyway ("Truncated File Read", "Corrupt EXIF
# data", its decompression-bomb warning); a file either decodes or raises InputError here, and
# only the CLI talks to the user. A filter, because catching warnings per call is not thread-safe.
warnings.filterwarnings("ignore", module=r"PIL\.")
# Its TIFF reader also logs errors, which Python prints on stderr when logging is not set up; a
# handler that drops them stops that and still lets an application's own logging see them.
logging.getLogger("PIL").addHandler(logging.NullHandler())

_FORMATS_HINT = "featviz reads BMP, GIF, JPEG, PNG, TIFF and WebP files"
# Non-blocking: opening a FIFO must not wait for a writer; no controlling terminal from a tty.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
_OPEN_FLAGS |= getattr(os, "O_BINARY", 0)
# The disk or the network failed the read: the file may be fine.
_READ_FAILURES = {
    getattr(errno, name)
    for name in ("EIO", "EACCES", "EPERM", "ESTALE", "ETIMEDOUT", "ENXIO", "ENODEV", "EREMOTEIO")
    if hasattr(errno, name)
}
_PILLOW_LIMIT_LOCK = threading.Lock()
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")


def decode(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read the image at ``path`` as an upright RGB image of its full size.

    Raises:
        InputError: the file cannot be used; the message is ``"{printable(path)}: {reason}"``.
        UsageError: ``max_pixels`` is below 1.
    """
    if max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1, not {max_pixels}")
    display = printable(path)
    _let_pillow_open(max_pixels)
    with _open_image_file(path, display) as file:
        try:
            return _decode_file(file, display, max_pixels)
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            found = _PILLOW_PIXELS.search(str(error))
            size = _short(int(found.group(1))) if found else None
            raise _over_limit(display, size, max_pixels) from error
        except UnidentifiedImageError as error:
            message = f"{display}: not an image file (unrecognised format)"
            raise InputError(message, hint=_FORMATS_HINT) from error
        except MemoryError as error:
            raise InputError(f"{display}: too large to decode (out of memory)") from error
        except OSError as error:
            if error.errno in _READ_FAILURES:
                raise InputError(f"{display}: cannot be read ({_reason(error)})") from error
            # Pillow's own OSErrors, and seeks to offsets the file's header made up (EINVAL)
            raise InputError(f"{display}: truncated or corrupt image data") from error
        except Exception as error:  # any other decoder failure on untrusted bytes
            raise InputError(f"{display}: truncated or corrupt image data") from error


def _let_pillow_open(max_pixels: int) -> None:
    """Raise Pillow's limit (it refuses above twice it) to let through what ours lets through."""
    needed = -(-max_pixels // 2)
    with _PILLOW_LIMIT_LOCK:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < needed:
            Image.MAX_IMAGE_PIXELS = needed


def _open_image_file(path: str | os.PathLike[str], display: str) -> BinaryIO:
    """The open regular, non-empty file at ``path``, or InputError saying what is there instead."""
    try:
        descriptor = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError as error:
        raise InputError(f"{display}: {_missing(path)}") from error
    except PermissionError as error:
        raise InputError(f"{display}: permission denied") from error
    except IsADirectoryError as error:
        raise InputError(f"{display}: is a directory") from error
    except OSError as error:
        raise InputError(f"{display}: cannot be opened ({_reason(error)})") from error
    except ValueError as error:  # "embedded null byte": a path from stdin holding NUL
        raise InputError(f"{display}: cannot be opened (the path holds a NUL byte)") from error
    info = os.fstat(descriptor)
    if stat.S_ISREG(info.st_mode) and info.st_size > 0:
        return os.fdopen(descriptor, "rb")
    os.close(descriptor)
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{display}: is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{display}: is not a regular file (a FIFO, socket or device)")
    raise InputError(f"{display}: is empty (0 bytes)")


def _missing(path: str | os.PathLike[str]) -> str:
    try:
        target = os.readlink(path)
    except OSError:  # not a symbolic link (or gone since)
        return "does not exist"
    return f"does not exist (broken symbolic link to '{printable(target)}')"


def _reason(error: OSError) -> str:
    """'no space left on device': the OS's words, lower-cased to fit after a colon."""
    return (error.strerror or str(error)).lower()


def _decode_file(file: BinaryIO, display: str, max_pixels: int) -> Image.Image:
    with Image.open(file, formats=FORMATS) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise _over_limit(display, f"{width}×{height} = {_short(width * height)}", max_pixels)
        if width < 1 or height < 1:
            raise InputError(f"{display}: has no pixels ({width}×{height})")
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        # Always a new image: ``image`` is unusable once the ``with`` closes it.
        return to_rgb(image)


def _over_limit(display: str, pixels: str | None, max_pixels: int) -> InputError:
    """The decompression-bomb refusal; ``pixels`` is what the file declares, when known."""
    limit = f"the limit of {max_pixels:,}"
    reason = f"{pixels} pixels is over {limit}" if pixels else f"over {limit} pixels"
    return InputError(f"{display}: {reason} (decompression-bomb guard)", hint=MAX_PIXELS_HINT)


def _short(pixels: int) -> str:
    """1600000000 → '1.6e9': an order of magnitude is what the reader needs."""
    return re.sub(r"e\+?0*(\d)", r"e\1", f"{pixels:.2g}")


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image; transparent pixels composited over ``BACKGROUND``."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _to_8bit_grey(image)
    if image.has_transparency_data:  # an alpha band, or a PNG/GIF transparent colour
        backdrop = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return Image.alpha_composite(backdrop, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale → mode L (see the module docstring)."""
    # In place on one float32 copy: these images can be hundreds of megapixels.
    values = np.array(image, dtype=np.float32)
    np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        low, high = 0.0, 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    values -= low
    values *= 255.0 / (high - low) if high > low else 0.0
    np.rint(values, out=values)
    return Image.fromarray(values.clip(0, 255, out=values).astype(np.uint8))


def declared_pixels(path: str | os.PathLike[str]) -> int:
    """The pixel count a file's header declares (nothing decoded), 0 when it cannot be read:
    what the pipeline reserves memory for before decoding (decode() then says what is wrong).
    Opened as decode() opens it: a FIFO or device is not waited on."""
    try:
        with _open_image_file(path, "") as file:
            size = declared_size(file)
            if size is None:
                file.seek(0)
                with Image.open(file, formats=FORMATS) as image:
                    size = image.size
    except Exception:  # anything at all: a bad file is decode()'s to report
        return 0
    width, height = size
    return width * height
