"""A page to browse an output folder: ``index.html``, working offline from ``file://``.

As images complete, small JPEG thumbnails of each picture are written under ``gallery/thumbs/``
and of each original photo under ``gallery/originals/`` (the page never makes the browser scale
full-size PNGs). When a run ends, even an interrupted or failed one, the page's data is rebuilt
from every per-image record in the folder — every command, model and run that wrote there,
``--skip-existing`` resumes included; each picture names the model folder it is in, whose
claim (featviz.sinks.variants) says which model and weights made it — into ``gallery/data.js`` (a
script, not a JSON file: browsers refuse to fetch files from a ``file://`` page), and
``index.html`` (the same static page each time) is written beside it.
Thumbnails missing then (a run with ``--no-gallery`` before) are made from the files on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from importlib import resources
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from featviz.sinks.layout import RECORDS, write_atomic
from featviz.sinks.variants import claims

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from featviz.sinks import RunEnd
    from featviz.sinks.artifacts import ImageOutputs
    from featviz.sinks.layout import OutputLayout

THUMB_SIDE = 240  # pixels, the longer side
THUMB_QUALITY = 80
GALLERY = "gallery"
PICTURES = (".png", ".jpg", ".webp")  # what --format writes
SHOWN_PREDICTIONS = 3
_RECORD_NAME = re.compile(r"^[a-z]+-[0-9a-f]{16}\.json$")


class GallerySink:
    wants_activations = False

    def __init__(self, layout: OutputLayout) -> None:
        self.layout = layout
        self.thumbs = layout.root / GALLERY / "thumbs"
        self.originals = layout.root / GALLERY / "originals"

    def open(self) -> None:
        """Nothing to create before the first thumbnail."""

    def write(self, outputs: ImageOutputs) -> None:
        if outputs.source is not None and outputs.original is not None:
            original = self.thumb_of_original(str(outputs.source.path))
            if not original.exists():
                # A video's card shows its first clip's first frame.
                still = outputs.original[0] if outputs.original.ndim == 4 else outputs.original
                write_atomic(original, thumbnail(still))
        relative = None if outputs.source is None else outputs.source.relative
        for artifact in outputs.artifacts:
            if artifact.pixels is not None:
                path = self.layout.path_of(artifact, relative)
                thumb = self._thumb_of(path, animated=artifact.animated)
                frame_ms = artifact.frame_ms if artifact.animated else None
                write_atomic(thumb, thumbnail(artifact.pixels, frame_ms))

    def close(self, end: RunEnd) -> None:
        build_gallery(self.layout)

    def _thumb_of(self, output: Path, *, animated: bool = False) -> Path:
        """A picture's thumbnail: a JPEG, or for a clip's animation an animated WebP (the
        card plays it)."""
        suffix = "webp" if animated else "jpg"
        return self.thumbs / f"{output.relative_to(self.layout.root).as_posix()}.{suffix}"

    def thumb_of_original(self, input_path: str) -> Path:
        """One thumbnail per input file, whatever folders its outputs are in: named by a hash
        of its path from the output folder (input names never meet the gallery's own, and a
        folder moved with its inputs keeps its names)."""
        where = os.path.relpath(os.path.abspath(input_path), os.path.abspath(self.layout.root))
        key = hashlib.sha256(os.fsencode(where)).hexdigest()[:20]
        return self.originals / f"{key}.jpg"


def thumbnail(pixels: np.ndarray, frame_ms: int | None = None) -> bytes:
    """A JPEG whose longer side is at most THUMB_SIDE, from uint8 (H, W) or (H, W, 3); with
    ``frame_ms``, from a clip's (T, H, W) or (T, H, W, 3) frames, an animated WebP of them
    at ``frame_ms`` a frame."""
    import numpy as np
    from PIL import Image

    if frame_ms is not None:
        from featviz.sinks.encode import encode_animation

        small = np.stack([np.asarray(_shrunk(Image.fromarray(frame))) for frame in pixels])
        return encode_animation(small, frame_ms, THUMB_QUALITY)
    buffer = io.BytesIO()
    _shrunk(Image.fromarray(pixels)).save(buffer, "JPEG", quality=THUMB_QUALITY)
    return buffer.getvalue()


def _shrunk(image: Image.Image) -> Image.Image:
    from PIL import Image

    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    return image


def build_gallery(layout: OutputLayout) -> Path:
    """Write ``gallery/data.js`` and ``index.html`` for everything recorded under the folder."""
    sink = GallerySink(layout)
    root = layout.root
    by_input: dict[str, list[dict[str, Any]]] = {}
    for folder, records in _records_by_image(root):
        for record in records:
            by_input.setdefault(record.get("path") or str(folder), []).append(record)
    images = [_card(sink, records) for records in by_input.values()]
    images.extend(_filters_cards(sink, root))
    images.extend(_dream_cards(sink, root))
    images.extend(_top_cards(sink, root))
    models = {name: held.get("description", name) for name, held in claims(root).items()}
    data = json.dumps(
        {"images": images, "models": models}, ensure_ascii=False, separators=(",", ":")
    )
    script = f"window.FEATVIZ_GALLERY = {data};\n"
    write_atomic(root / GALLERY / "data.js", script.encode("utf-8", "backslashreplace"))
    page = resources.files("featviz.sinks").joinpath("gallery.html").read_bytes()
    write_atomic(root / "index.html", page)
    return root / "index.html"


def _records_by_image(root: Path):
    """(folder, its records) for every folder under ``records/`` holding an image's records,
    in name order."""
    for folder, dirs, files in os.walk(root / RECORDS):
        dirs.sort()
        records = []
        for name in sorted(name for name in files if _RECORD_NAME.match(name)):
            try:
                records.append(json.loads(Path(folder, name).read_bytes()))
            except (OSError, ValueError):
                continue  # a record being replaced right now, or damaged: skip it
        if records:
            yield Path(folder), records


def _card(sink: GallerySink, records: list[dict[str, Any]]) -> dict[str, Any]:
    """One input's card, from every record of it: every command, model and folder."""
    root = sink.layout.root
    newest = max(records, key=_written_at)
    outputs, seen = [], set()
    for record in sorted(records, key=_written_at):
        for artifact in record.get("artifacts", []):
            path = root / artifact["file"]
            if artifact["file"] in seen or not path.exists() or artifact["kind"] == "raw":
                continue
            seen.add(artifact["file"])
            thumb = _ensure_thumb(sink, path) if path.suffix in PICTURES else None
            outputs.append(
                [
                    record.get("model_folder", ""),
                    record["command"],
                    artifact["method"],
                    artifact["layer"],
                    artifact["target"],
                    artifact["caption"],
                    _link(path, root),
                    thumb and _link(thumb, root),
                ]
            )
    source = newest.get("path")
    original = sink.thumb_of_original(source) if source else None
    if original is not None and not original.exists():
        _thumb_from_file(Path(source), original)
    predictions = next((r["predictions"] for r in (newest, *records) if r.get("predictions")), [])
    return {
        "name": newest.get("input") or "?",
        "thumb": _link(original, root) if original is not None and original.exists() else None,
        "link": _link(Path(source), root) if source else None,
        "predictions": [[p["label"], p["probability"]] for p in predictions[:SHOWN_PREDICTIONS]],
        "error": newest.get("error"),
        "outputs": outputs,
    }


def _written_at(record: dict[str, Any]) -> int:
    """When a record's outputs were written (its newest file's time, ns)."""
    return max((stamp[1] for stamp in record.get("stamps", {}).values()), default=0)


def _filters_cards(sink: GallerySink, root: Path) -> list[dict[str, Any]]:
    """One card per model folder whose kernels `featviz filters` drew into this folder."""
    cards = []
    for model in sorted(path for path in (root / "filters").glob("*") if path.is_dir()):
        outputs = [
            [
                model.name,
                "filters",
                "",
                grid.stem,
                "",
                "",
                _link(grid, root),
                _link(_ensure_thumb(sink, grid), root),
            ]
            for grid in sorted(p for p in model.iterdir() if p.suffix in PICTURES)
        ]
        cards.append(
            {
                "name": f"filters: {model.name}",
                "thumb": None,
                "link": None,
                "predictions": [],
                "error": None,
                "outputs": outputs,
            }
        )
    return cards


def _dream_cards(sink: GallerySink, root: Path) -> list[dict[str, Any]]:
    """One card per model folder that `featviz dream` wrote into this folder: every image,
    by its layer (``classes`` for class objectives) and objective."""
    cards = []
    for model in sorted(path for path in (root / "dream").glob("*") if path.is_dir()):
        pictures = sorted(p for p in model.glob("*/*") if p.suffix in PICTURES)
        outputs = [
            [
                model.name,
                "dream",
                "",
                picture.parent.name,
                picture.stem,
                "",
                _link(picture, root),
                _link(_ensure_thumb(sink, picture), root),
            ]
            for picture in pictures
        ]
        cards.append(
            {
                "name": f"dream: {model.name}",
                "thumb": None,
                "link": None,
                "predictions": [],
                "error": None,
                "outputs": outputs,
            }
        )
    return cards


def _top_cards(sink: GallerySink, root: Path) -> list[dict[str, Any]]:
    """One card per model folder and layer that `featviz top` ranked into this folder: the
    overview of its channels, then each channel's examples."""
    cards = []
    for model in sorted(path for path in (root / "top").glob("*") if path.is_dir()):
        for overview in sorted(p for p in model.iterdir() if p.suffix in PICTURES):
            channels = overview.with_suffix("")
            sheets = sorted(
                p for p in channels.glob("*") if p.suffix in PICTURES and p.stem.isdigit()
            )
            outputs = [
                [
                    model.name,
                    "top",
                    "",
                    channels.name,
                    "" if picture == overview else picture.stem,
                    "every channel" if picture == overview else f"channel {int(picture.stem)}",
                    _link(picture, root),
                    _link(_ensure_thumb(sink, picture), root),
                ]
                for picture in (overview, *sheets)
            ]
            cards.append(
                {
                    "kind": "top",  # a layer's ranking, not an image: counted apart
                    "name": f"top: {model.name} {channels.name}",
                    "thumb": None,
                    "link": None,
                    "predictions": [],
                    "error": None,
                    "outputs": outputs,
                }
            )
    return cards


def _ensure_thumb(sink: GallerySink, output: Path) -> Path:
    animated = _is_animation(output)
    thumb = sink._thumb_of(output, animated=animated)
    if not thumb.exists():
        if animated:
            _thumb_of_animation(output, thumb)
        else:
            _thumb_from_file(output, thumb)
    return thumb


def _is_animation(output: Path) -> bool:
    """Whether a picture on disk is a clip's animated WebP (its header says how many frames)."""
    from PIL import Image

    if output.suffix != ".webp":
        return False
    try:
        with Image.open(output) as image:
            return getattr(image, "n_frames", 1) > 1
    except (OSError, ValueError):
        return False


def _thumb_of_animation(output: Path, thumb: Path) -> None:
    """An animated thumbnail made from an animation on disk; nothing when it cannot be read."""
    import numpy as np
    from PIL import Image, ImageSequence

    try:
        with Image.open(output) as image:
            frame_ms = int(image.info.get("duration", 100))
            frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)])
    except (OSError, ValueError):
        return
    write_atomic(thumb, thumbnail(frames, frame_ms))


def _thumb_from_file(image: Path, thumb: Path) -> None:
    """A thumbnail made from a file on disk; nothing when it cannot be read (the card then
    shows no picture, the run does not fail)."""
    import numpy as np

    from featviz.errors import InputError
    from featviz.inputs.decode import decode

    try:
        write_atomic(thumb, thumbnail(np.asarray(decode(image))))
    except InputError:
        return


def _link(path: Path, root: Path) -> str:
    """``path`` as a link from ``index.html`` at ``root``: relative, forward slashes, escaped
    where a URL needs it."""
    from urllib.parse import quote

    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    # Percent-encoded bytes: a name that is not UTF-8 links to its own bytes.
    return quote(os.fsencode(PurePath(relative).as_posix()), safe="/._-~")
