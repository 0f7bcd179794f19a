"""Which image files a run reads, in what order, and where each one's outputs go.

``discover`` turns command-line inputs into a stream of ``ImageSource``:
- a file is taken whatever its extension (the user named it; decoding judges it);
- a folder yields its image files, sorted by name (code-point order), its sub-folders too with
  ``recursive``; names starting with a dot are skipped; only these extensions count (any case):
  ``IMAGE_EXTENSIONS``. Entries are judged by what they are, not by their name: a sub-folder
  called ``x.jpg`` is a folder (walked with ``recursive``, skipped without), while a broken
  symlink, a FIFO or a device called ``x.jpg`` is yielded and ``decode`` says what is wrong with
  it. A sub-folder that cannot be listed is yielded as well, so that its failure is reported
  rather than its images silently missing. Symlinked folders are followed, loops are not;
- a glob pattern (``photos/*.jpg``; ``**`` always spans any depth, as with
  ``glob.glob(recursive=True)``) yields the image files it matches, sorted, filtered like a
  folder's contents. A path that exists is never read as a pattern (``a[1].jpg``);
- ``-`` streams one path per line from stdin (lazily: millions of lines are fine). These are
  taken like named files, never walked; a missing one fails at decode, not here.

Arguments are validated before anything is yielded, so a typo ends the run before any image is
processed: a missing path, a pattern matching nothing and a folder without images raise
``UsageError``. The same file reached twice (``photos photos/cat.jpg``) is yielded once.

``ImageSource.relative`` is where an image's outputs go under ``--out``, without a suffix: a
folder's images mirror their sub-folders (``photos/a/cat.jpg`` from ``photos`` → ``a/cat``),
a pattern's matches are relative to the pattern's literal leading folders (``data/**/*.jpg`` →
``cat/0001``; ``photos/*.jpg`` → ``cat``), and named and stdin files get their stem. Names that
would still collide (``x/cat.jpg`` and ``y/cat.jpg`` named together, ``cat.jpg`` beside
``cat.png``) get ``-2``, ``-3``… in the order met, judged ignoring letter case and Unicode
normalisation as macOS and Windows file systems would. ``relative`` keeps the bytes of Linux
file names that are not UTF-8 (as Python's surrogate escapes), so outputs are written under the
same bytes; ``display`` is the printable form for messages and JSON (see ``printable``).
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO, TextIO

from featviz.errors import UsageError, closest

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})

_EXTENSIONS_HINT = (
    f"featviz looks for {' '.join(sorted(IMAGE_EXTENSIONS))} files (any letter case); "
    "name a file explicitly to use it whatever its extension"
)
_GLOB_MAGIC = re.compile(r"[*?[]")
# Characters that would break a one-line message or fool a terminal: C0/C1 controls, DEL, line
# and paragraph separators, and bidirectional overrides ("Trojan source" file names).
_UNPRINTABLE = {
    code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in itertools.chain(
        range(0x20),
        range(0x7F, 0xA0),
        (0x200E, 0x200F, 0x2028, 0x2029),
        range(0x202A, 0x202F),
        range(0x2066, 0x206A),
    )
}
# Enough names to find a typo's neighbour without stalling on a folder of a million files.
_MAX_NAMES_FOR_SUGGESTION = 10_000


def printable(path: str | os.PathLike[str]) -> str:
    """``path`` as one printable line of valid UTF-8, for messages and JSON.

    Bytes of a Linux file name that are not UTF-8 (held by Python as surrogate escapes, which
    cannot be printed or JSON-encoded) become ``\\xe9``; control characters become ``\\x0a``.
    """
    try:
        text = os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        text = os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.translate(_UNPRINTABLE)


@dataclass(frozen=True)
class ImageSource:
    """One image to process.

    ``path``: where to read it. ``relative``: where its outputs go under ``--out``, without a
    suffix, unique within a run (see the module docstring). ``display``: ``printable(path)``.
    ``index``: its position in the run, from 0 (TensorBoard's step).
    """

    path: Path
    relative: PurePath
    display: str
    index: int = 0


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def discover(
    inputs: Sequence[str],
    *,
    recursive: bool = False,
    stdin: TextIO | BinaryIO | None = None,
) -> Iterator[ImageSource]:
    """Validate every input now, then return a lazy stream of the images they name.

    ``stdin`` (default ``sys.stdin``) is read only for a ``-`` input, through the binary
    ``buffer`` under a text wrapper, so that file names which are not UTF-8 arrive intact (a
    strict UTF-8 text stream would fail on them); a stream with no ``buffer`` (``StringIO``) is
    read as it is.

    Raises:
        UsageError: no inputs, ``-`` twice, a missing path, a pattern matching nothing or no
            image, a folder without images (or one that cannot be listed).
    """
    if not inputs:
        raise UsageError(
            "no inputs given",
            hint="name image files, folders or glob patterns, or - to read paths from stdin",
        )
    if inputs.count("-") > 1:
        raise UsageError("'-' (read paths from stdin) is given more than once")
    candidates = [_resolve(argument, recursive, stdin) for argument in inputs]
    return _unique(itertools.chain.from_iterable(candidates))


def _resolve(
    argument: str, recursive: bool, stdin: TextIO | BinaryIO | None
) -> Iterable[tuple[Path, PurePath]]:
    """(path, relative) candidates for one argument; raises UsageError when there are none."""
    if argument == "-":
        return _stdin_paths(stdin)
    if os.path.isdir(argument):
        return _folder_images(argument, recursive)
    if os.path.exists(argument):
        path = Path(argument)
        return [(path, PurePath(_stem(path.name)))]
    if os.path.lexists(argument):
        target = printable(os.readlink(argument))
        raise UsageError(
            f"input '{printable(argument)}' does not exist",
            hint=f"it is a symbolic link to '{target}', which does not exist",
        )
    if _GLOB_MAGIC.search(argument):
        return _pattern_images(argument)
    raise UsageError(f"input '{printable(argument)}' does not exist", hint=_close_match(argument))


def _stem(name: str) -> str:
    """The name without its extension; never empty, ``.`` or ``..``, which lead outside --out."""
    for candidate in (os.path.splitext(name)[0], name):
        if candidate not in ("", ".", ".."):
            return candidate
    return "_"  # stdin named "." or "/": a folder, which fails at decode


def _close_match(argument: str) -> str | None:
    """The name beside a missing path that is closest to it, as a hint, if one is close."""
    parent, name = os.path.split(argument)
    try:
        with os.scandir(parent or ".") as entries:
            names = [entry.name for entry in itertools.islice(entries, _MAX_NAMES_FOR_SUGGESTION)]
    except OSError:
        return None
    return closest(name, names, count=1, shown=lambda near: printable(os.path.join(parent, near)))


def _folder_images(argument: str, recursive: bool) -> Iterable[tuple[Path, PurePath]]:
    """The images of a folder argument, walked lazily once at least one is known to exist."""
    try:
        with os.scandir(argument):
            pass
    except OSError as error:
        reason = "permission denied" if isinstance(error, PermissionError) else error.strerror
        raise UsageError(f"input '{printable(argument)}' cannot be read ({reason})") from error
    root = Path(argument)
    if next(_walk(root, recursive), None) is None:
        nested = not recursive and next(_walk(root, recursive=True), None) is not None
        raise UsageError(
            f"input '{printable(argument)}' has no image files",
            hint="it has sub-folders: add --recursive" if nested else _EXTENSIONS_HINT,
        )
    return _walk(root, recursive)


def _walk(root: Path, recursive: bool) -> Iterator[tuple[Path, PurePath]]:
    """Depth-first walk of ``root`` in name order, yielding (path, relative-with-stem)."""
    # An explicit stack rather than recursion: folder depth is not ours to bound.
    stack = [(root, PurePath(), _listing(root) or iter(()), {_identity(root)})]
    while stack:
        folder, relative, entries, ancestors = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        path = folder / entry.name
        if not _is_folder(entry):
            if _has_image_extension(entry.name):
                yield path, relative / _stem(entry.name)
            continue
        identity = _identity(path)
        if not recursive or (identity is not None and identity in ancestors):  # a symlink loop
            continue
        listing = _listing(path)
        if listing is None:
            yield path, relative / entry.name  # decode reports why it cannot be read
            continue
        stack.append((path, relative / entry.name, listing, ancestors | {identity}))


def _listing(folder: Path) -> Iterator[os.DirEntry[str]] | None:
    """Visible entries sorted by name, or None when the folder cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            visible = [entry for entry in entries if not entry.name.startswith(".")]
    except OSError:
        return None
    return iter(sorted(visible, key=lambda entry: entry.name))


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # cannot tell: let decode look at it and say
        return False


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _pattern_images(pattern: str) -> list[tuple[Path, PurePath]]:
    """Image files matching ``pattern``, sorted, relative to its literal leading folders."""
    matches = glob.glob(pattern, recursive=True)
    if not matches:
        raise UsageError(
            f"input '{printable(pattern)}' does not exist",
            hint="no file or folder matches this pattern",
        )
    literal = itertools.takewhile(
        lambda part: not _GLOB_MAGIC.search(part), PurePath(pattern).parts
    )
    base = PurePath(*literal)
    found = []
    for match in matches:
        if _has_image_extension(match) and not _is_dir_path(match):
            path = Path(match)
            parts = path.relative_to(base).parts if path.is_relative_to(base) else ()
            if not parts or any(part in (".", "..") for part in parts):
                parts = (path.name,)  # "a/*/../b.jpg" must not lead outside --out
            found.append((path, PurePath(*parts[:-1], _stem(parts[-1]))))
    if not found:
        raise UsageError(
            f"input '{printable(pattern)}' matches no image files", hint=_EXTENSIONS_HINT
        )
    return sorted(found, key=lambda candidate: candidate[0].parts)


def _is_dir_path(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _stdin_paths(stdin: TextIO | BinaryIO | None) -> Iterator[tuple[Path, PurePath]]:
    """One path per non-empty line, read lazily (bytes lines decoded as the OS does)."""
    stream = stdin if stdin is not None else sys.stdin
    stream = getattr(stream, "buffer", stream)  # bytes under a text wrapper: names stay intact
    for line in stream:
        text = line if isinstance(line, str) else os.fsdecode(line)
        text = text.rstrip("\n").rstrip("\r")
        if text:
            path = Path(text)
            yield path, PurePath(_stem(path.name))


def _unique(candidates: Iterable[tuple[Path, PurePath]]) -> Iterator[ImageSource]:
    """Drop repeats of a file, give each image a ``relative`` no other image has (``cat-2``)."""
    seen_files: set[str] = set()
    taken: set[str] = set()
    index = itertools.count()
    for path, relative in candidates:
        absolute = os.path.abspath(path)
        if absolute in seen_files:
            continue
        seen_files.add(absolute)
        unique, number = relative, 1
        while _collision_key(unique) in taken:
            number += 1
            unique = relative.with_name(f"{relative.name}-{number}")
        taken.add(_collision_key(unique))
        yield ImageSource(path=path, relative=unique, display=printable(path), index=next(index))


def _collision_key(relative: PurePath) -> str:
    """Names that case-insensitive or normalising file systems (macOS, Windows) would merge."""
    return unicodedata.normalize("NFC", str(relative)).casefold()
