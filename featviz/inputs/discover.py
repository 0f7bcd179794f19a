"""Which image (or video) files a run reads, in what order, and where each one's outputs go.

``discover`` turns command-line inputs into a stream of ``ImageSource``:
- a file is taken whatever its extension (the user named it; decoding judges it);
- a folder yields its image files, sorted by name (code-point order), its sub-folders too with
  ``recursive``; names starting with a dot are skipped; only the extensions of the kind of file
  the model takes count (any case): ``IMAGES`` (featviz.inputs.kinds) or, for a video model,
  ``VIDEOS`` (``VIDEO_EXTENSIONS``; an animated GIF is both). A file of the other kind is left
  aside, and ``on_aside`` hears of it. Entries are judged by what they are, not by their name:
  a sub-folder called ``x.jpg`` is a folder (walked with ``recursive``, skipped without), while
  a broken symlink, a FIFO or a device called ``x.jpg`` is yielded and ``decode`` says what is
  wrong with it. A sub-folder that cannot be listed is yielded as well, so that its failure is
  reported rather than its images silently missing. Symlinked folders are followed, loops are
  not;
- a glob pattern (``photos/*.jpg``; ``**`` always spans any depth, as with
  ``glob.glob(recursive=True)``) yields the files of the model's kind it matches, sorted,
  filtered like a folder's contents. A path that exists is never read as a pattern (``a[1].jpg``);
- ``-`` streams one path per line from stdin (lazily: millions of lines are fine). These are
  taken like named files, never walked; a missing one fails at decode, not here.

Usage mistakes (no inputs, ``-`` twice) raise ``UsageError`` before anything is yielded. The
same file reached twice (``photos photos/cat.jpg``) is yielded once.

``ImageSource.relative`` is the image's own folder under a model's folder in ``--out``: a
folder's images mirror their sub-folders (``photos/a/cat.jpg`` from ``photos`` → ``a/cat``),
a pattern's matches are relative to the pattern's literal leading folders (``data/**/*.jpg`` →
``cat/0001``; ``photos/*.jpg`` → ``cat``), and named and stdin files get their stem. Names that
would still collide (``x/cat.jpg`` and ``y/cat.jpg`` named together, ``cat.jpg`` beside
``cat.png``) get ``-2``, ``-3``… in the order met, judged ignoring letter case and Unicode
normalisation as macOS and Windows file systems would; and no image's folder is ever inside
another's (``a.png`` beside a folder ``a/`` of images: the folder's images go to ``a-2/``),
so the names featviz writes in an image's folder never meet an input's (featviz.inputs.names).
``relative`` keeps the bytes of Linux file names that are not UTF-8 (as
Python's surrogate escapes), so outputs are written under the same bytes; ``display`` is the
printable form for messages and JSON (featviz.inputs.printable).

An input that yields no image — a missing path, a pattern matching nothing, a folder without
images or one that cannot be listed — is not an error of the whole run: it comes out as an
``ImageSource`` whose ``problem`` says why, and fails on its own like an unreadable file. A
featviz output folder (``OUTPUT_MARKER`` at its top, or an older run's ``manifest.json``) is
never read as input: walks and patterns skip it, and ``on_skip`` hears of each one.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, BinaryIO, TextIO

from featviz.errors import UsageError, closest
from featviz.inputs.kinds import IMAGES, VIDEOS, FileKind
from featviz.inputs.names import ImageNames
from featviz.inputs.printable import printable

_KINDS = (IMAGES, VIDEOS)
_GLOB_MAGIC = re.compile(r"[*?[]")
# Enough names to find a typo's neighbour without stalling on a folder of a million files.
_MAX_NAMES_FOR_SUGGESTION = 10_000


OUTPUT_MARKER = ".featviz-output"
"""A file featviz writes at the top of every output folder: such a folder is never input."""


@dataclass(frozen=True)
class ImageSource:
    """One image to process.

    ``path``: where to read it. ``relative``: its folder under a model's folder in ``--out``,
    unique within a run (see the module docstring). ``display``: ``printable(path)``.
    ``index``: its position in the run, from 0 (TensorBoard's step). ``problem``: why an input
    argument gave no image (it then fails with that reason instead of being decoded).
    ``image``: the picture itself when a library caller handed it over in memory (a PIL image
    or a uint8 array, featviz.inputs.memory); ``path`` then only names it.
    """

    path: Path
    relative: PurePath
    display: str
    index: int = 0
    problem: str | None = None
    image: Any = None


# (path, relative, problem): what an argument gives before names are made unique.
Candidate = tuple[Path, PurePath, "str | None"]


def is_output_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is the top of a featviz output folder: its marker, or the
    ``manifest.json`` of a run from before the marker existed."""
    if os.path.isfile(os.path.join(folder, OUTPUT_MARKER)):
        return True
    manifest = os.path.join(folder, "manifest.json")
    if not os.path.isfile(manifest):
        return False
    try:
        with open(manifest, "rb") as handle:
            data = json.loads(handle.read(2**22))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "featviz" in (data.get("versions") or {})


def discover(
    inputs: Sequence[str],
    *,
    recursive: bool = False,
    stdin: TextIO | BinaryIO | None = None,
    on_skip: Callable[[str], None] | None = None,
    kind: FileKind = IMAGES,
    on_aside: Callable[[str], None] | None = None,
) -> Iterator[ImageSource]:
    """A lazy stream of the inputs that ``inputs`` name, each input argument in turn.

    ``stdin`` (default ``sys.stdin``) is read only for a ``-`` input, through the binary
    ``buffer`` under a text wrapper, so that file names which are not UTF-8 arrive intact (a
    strict UTF-8 text stream would fail on them); a stream with no ``buffer`` (``StringIO``) is
    read as it is. ``on_skip`` is told of every featviz output folder a walk or a pattern
    leaves out (a printable path). ``kind``: the files folders and patterns yield (the model's:
    images or videos); ``on_aside`` is told of every file of the other kind they leave out.

    Raises:
        UsageError: no inputs, or ``-`` twice.
    """
    if not inputs:
        raise UsageError(
            "no inputs given",
            hint="name image files, folders or glob patterns, or - to read paths from stdin",
        )
    if inputs.count("-") > 1:
        raise UsageError("'-' (read paths from stdin) is given more than once")
    skipped = _OutputFolders(on_skip or (lambda _: None))
    files = _Files(kind, on_aside)
    candidates = (_resolve(argument, recursive, stdin, skipped, files) for argument in inputs)
    return _unique(itertools.chain.from_iterable(candidates))


class _OutputFolders:
    """Which folders are featviz output folders (asked once each), telling of each skipped."""

    def __init__(self, on_skip: Callable[[str], None]) -> None:
        self.on_skip = on_skip
        self.known: dict[str, bool] = {}

    def skips(self, folder: str | os.PathLike[str]) -> bool:
        key = os.path.abspath(folder)
        if key not in self.known:
            self.known[key] = is_output_folder(folder)
            if self.known[key]:
                self.on_skip(printable(folder))
        return self.known[key]

    def holds(self, path: Path, base: PurePath) -> bool:
        """Whether ``path`` (a pattern's match) lies in an output folder below ``base``."""
        folder = path.parent
        while folder != Path(base) and folder not in (Path("."), Path("/"), folder.parent):
            if self.skips(folder):
                return True
            folder = folder.parent
        return False


class _Files:
    """Which files that walks and patterns meet are taken (the model's kind), telling
    ``on_aside`` of each one of the other kind."""

    def __init__(self, kind: FileKind, on_aside: Callable[[str], None] | None) -> None:
        self.kind = kind
        self.on_aside = on_aside
        self.aside = 0  # files of the other kind met so far

    def takes(self, path: str | os.PathLike[str]) -> bool:
        if self.kind.takes(os.fspath(path)):
            return True
        if _is_media(path):
            self.aside += 1
            if self.on_aside is not None:
                self.on_aside(printable(path))
        return False

    def missing(self, aside: int, hint: str) -> str:
        """Why a folder or pattern gave nothing, ``aside`` files of the other kind met in it."""
        if aside:
            other = next(kind for kind in _KINDS if kind is not self.kind)
            files = f"{other.noun} file{'s' if aside > 1 else ''}"
            hint = f"{aside} {files} left aside: this model takes {self.kind.noun}s"
        return f"no {self.kind.noun} files ({hint})"


def _resolve(
    argument: str,
    recursive: bool,
    stdin: TextIO | BinaryIO | None,
    skipped: _OutputFolders,
    files: _Files,
) -> Iterable[Candidate]:
    """The candidates of one argument; a failed one when it gives no image."""
    if argument == "-":
        return _stdin_paths(stdin)
    failed = Path(argument), PurePath(_name_of(argument)), None
    if os.path.isdir(argument):
        if is_output_folder(argument):
            return [(*failed[:2], "is a featviz output folder, which is never read as input")]
        return _folder_images(argument, recursive, skipped, files, failed)
    if os.path.exists(argument):
        return [failed]
    if os.path.lexists(argument):
        target = printable(os.readlink(argument))
        return [(*failed[:2], f"does not exist (broken symbolic link to '{target}')")]
    if _GLOB_MAGIC.search(argument):
        return _pattern_images(argument, skipped, files, failed)
    near = _close_match(argument)
    return [(*failed[:2], "does not exist" + (f" ({near})" if near else ""))]


def _name_of(path: str) -> str:
    """An image folder's name: the file's name without its extension; never empty, ``.`` or
    ``..``, which lead outside --out."""
    return _stem(os.path.basename(os.path.normpath(path)) if path else "")


def _stem(name: str) -> str:
    for candidate in (os.path.splitext(name)[0], name):
        if candidate not in ("", ".", "..", "/"):
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


def _folder_images(
    argument: str, recursive: bool, skipped: _OutputFolders, files: _Files, failed: Candidate
) -> Iterator[Candidate]:
    """The files of a folder argument, walked lazily; one failed candidate when it has none."""
    try:
        with os.scandir(argument):
            pass
    except OSError as error:
        reason = "permission denied" if isinstance(error, PermissionError) else error.strerror
        yield (*failed[:2], f"cannot be read ({reason})")
        return
    root = Path(argument)
    found = False
    aside = files.aside
    for candidate in _walk(root, recursive, skipped, files):
        found = True
        yield candidate
    if not found:
        quiet = _Files(files.kind, None)
        nested = not recursive and next(_walk(root, True, skipped, quiet), None) is not None
        hint = "it has sub-folders: add --recursive" if nested else files.kind.hint
        yield (*failed[:2], "has " + files.missing(files.aside - aside, hint))


def _walk(
    root: Path, recursive: bool, skipped: _OutputFolders, files: _Files
) -> Iterator[Candidate]:
    """Depth-first walk of ``root`` in name order, yielding (path, relative, None)."""
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
            if files.takes(path):
                yield path, relative / _stem(entry.name), None
            continue
        identity = _identity(path)
        if not recursive or (identity is not None and identity in ancestors):  # a symlink loop
            continue
        if skipped.skips(path):
            continue
        listing = _listing(path)
        if listing is None:
            yield path, relative / entry.name, None  # decode reports why it cannot be read
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


def _pattern_images(
    pattern: str, skipped: _OutputFolders, files: _Files, failed: Candidate
) -> list[Candidate]:
    """Files of the model's kind matching ``pattern``, sorted, relative to its literal leading
    folders."""
    matches = glob.glob(pattern, recursive=True)
    if not matches:
        return [(*failed[:2], "no file or folder matches this pattern")]
    literal = itertools.takewhile(
        lambda part: not _GLOB_MAGIC.search(part), PurePath(pattern).parts
    )
    base = PurePath(*literal)
    found = []
    aside = files.aside
    for match in matches:
        if _is_media(match) and not _is_dir_path(match) and files.takes(match):
            path = Path(match)
            if skipped.holds(path, base):
                continue
            parts = path.relative_to(base).parts if path.is_relative_to(base) else ()
            if not parts or any(part in (".", "..") for part in parts):
                parts = (path.name,)  # "a/*/../b.jpg" must not lead outside --out
            found.append((path, PurePath(*parts[:-1], _stem(parts[-1])), None))
    if not found:
        return [(*failed[:2], "matches " + files.missing(files.aside - aside, files.kind.hint))]
    return sorted(found, key=lambda candidate: candidate[0].parts)


def _is_media(path: str | os.PathLike[str]) -> bool:
    return any(kind.takes(os.fspath(path)) for kind in _KINDS)


def _is_dir_path(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _stdin_paths(stdin: TextIO | BinaryIO | None) -> Iterator[Candidate]:
    """One path per non-empty line, read lazily (bytes lines decoded as the OS does)."""
    stream = stdin if stdin is not None else sys.stdin
    stream = getattr(stream, "buffer", stream)  # bytes under a text wrapper: names stay intact
    for line in stream:
        text = line if isinstance(line, str) else os.fsdecode(line)
        text = text.rstrip("\n").rstrip("\r")
        if text:
            yield Path(text), PurePath(_name_of(text)), None


def _unique(candidates: Iterable[Candidate]) -> Iterator[ImageSource]:
    """Drop repeats of a file, give each image a ``relative`` no other image has (``cat-2.jpg``)
    and that is neither inside another image's nor holds one."""
    seen_files: set[str] = set()
    names = ImageNames()
    index = itertools.count()
    for path, relative, problem in candidates:
        absolute = os.path.abspath(path)
        if absolute in seen_files:
            continue
        seen_files.add(absolute)
        if problem is None:
            relative = names.claim(relative)
        display = printable(path)
        yield ImageSource(path, relative, display, next(index), problem)
