"""The kinds of file a model reads from folders and patterns: still images, or a video
model's videos (an animated GIF is both). ``FileKind.takes`` judges a file by its name's
extension, in any case; ``hint`` is what a folder without such files is told.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
VIDEO_EXTENSIONS = frozenset({".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".webm"})


@dataclass(frozen=True)
class FileKind:
    """The files a model reads from folders and patterns: ``noun`` names them in messages."""

    noun: str
    extensions: frozenset[str]

    def takes(self, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in self.extensions

    @property
    def hint(self) -> str:
        return f"featviz looks for {' '.join(sorted(self.extensions))} files, any case"


IMAGES = FileKind("image", IMAGE_EXTENSIONS)
VIDEOS = FileKind("video", VIDEO_EXTENSIONS)
