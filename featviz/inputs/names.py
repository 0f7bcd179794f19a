"""Unique folder names for the images of one run (see featviz.inputs.discover: ``relative``).

Two images never share a folder, and no image's folder is inside another's, whichever way the
names met: ``x/cat.jpg`` and ``y/cat.jpg`` named together become ``cat`` and ``cat-2``; an image
``a.png`` beside a folder ``a/`` of images sends those images to ``a-2/`` (or, met the other
way round, the image to ``a-2``). Names are compared as case-insensitive, normalising file
systems (macOS, Windows) would compare them.
"""

from __future__ import annotations

import unicodedata
from pathlib import PurePath


class ImageNames:
    """The image folders of a run taken so far, and every folder above them."""

    def __init__(self) -> None:
        self.images: set[str] = set()
        self.folders: set[str] = set()
        self.moved: dict[str, PurePath] = {}  # a folder moved aside: an image had its name

    def claim(self, relative: PurePath) -> PurePath:
        relative = self._outside_images(relative)
        unique, number = relative, 1
        while self._taken(unique):
            number += 1
            unique = relative.with_name(f"{relative.name}-{number}")
        self.images.add(_collision_key(unique))
        self.folders.update(_collision_key(parent) for parent in unique.parents[:-1])
        return unique

    def _taken(self, relative: PurePath) -> bool:
        key = _collision_key(relative)
        return key in self.images or key in self.folders

    def _outside_images(self, relative: PurePath) -> PurePath:
        """``relative`` with each folder above it that is an image's name moved aside
        (``a`` → ``a-2``), the same way for every image below it."""
        fixed = PurePath()
        for part in relative.parts[:-1]:
            folder = fixed / part
            key = _collision_key(folder)
            if key in self.moved:
                folder = self.moved[key]
            elif key in self.images:
                number = 2
                while self._taken(fixed / f"{part}-{number}"):
                    number += 1
                self.moved[key] = folder = fixed / f"{part}-{number}"
            fixed = folder
        return fixed / relative.name


def _collision_key(relative: PurePath) -> str:
    """Names that case-insensitive or normalising file systems (macOS, Windows) would merge."""
    return unicodedata.normalize("NFC", str(relative)).casefold()
