"""What the sinks cost: TensorBoard and the gallery on top of the file layout, and the gallery's
build for a folder of 10,000 images.

1. ``featviz maps`` on alexnet (random init, 5 conv layers × 64 channels, 32 photos 640×480),
   in-process, round-robin: files only (``--no-gallery``), + ``--tensorboard``, + the gallery
   (its thumbnails), both. Prints ms/image and the ratio to files only; the event file's size.
2. ``build_gallery`` on 10,000 synthetic images (a record, an overlay and its thumbnails each,
   as a `cam` run leaves them): seconds, and the sizes of ``index.html`` and ``gallery/data.js``.

    python benchmarks/bench_sinks.py [--images 32] [--repeats 3] [--gallery-images 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import machine_line, make_photos, round_robin, say, table, typical


def prepare(folder: Path, out: Path, tensorboard: Path | None, gallery: bool):
    from featviz.model.options import ModelRequest
    from featviz.run.plan import MapsRequest, Plan, RunRequest
    from featviz.run.prepare import prepare
    from featviz.sinks.options import OutputRequest

    return prepare(
        Plan(
            "maps",
            ModelRequest("alexnet", weights="none", device="cpu"),
            OutputRequest(out, tensorboard=tensorboard, gallery=gallery),
            MapsRequest(),
            RunRequest((str(folder),)),
        )
    )


def sink_costs(work: Path, images: int, repeats: int) -> str:
    from featviz.sinks.manifest import RunTally

    photos = work / "photos"
    make_photos(photos, images)
    variants = {
        "files only": (None, False),
        "+ tensorboard": ("tb", False),
        "+ gallery": (None, True),
        "+ both": ("tb", True),
    }
    runs = {}
    for name, (tensorboard, gallery) in variants.items():
        out = work / name.replace(" ", "_").replace("+", "plus")
        board = None if tensorboard is None else out / tensorboard

        def once(out=out, board=board, gallery=gallery) -> None:
            shutil.rmtree(out, ignore_errors=True)
            run = prepare(photos, out, board, gallery)
            tally = RunTally()
            for result in run.results():
                assert result.error is None, result.error
                tally.add(result)
            run.finish(tally, interrupted=False)

        runs[name] = once
    timings = round_robin(runs, repeats, log=say)
    base = typical(timings["files only"])
    rows = []
    for name in variants:
        seconds = typical(timings[name])
        rows.append([name, f"{seconds / images * 1000:.1f}", f"{seconds / base:.2f}×"])
    events = sum(f.stat().st_size for f in (work / "plus_tensorboard" / "tb").glob("*"))
    return (
        table(["featviz maps, alexnet", "ms/image (whole run)", "vs files only"], rows)
        + f"\n\nTensorBoard event file: {events / 1e6:.1f} MB for {images} images "
        f"({events / images / 1e3:.0f} kB per image, 5 grids + 5 histograms + text)"
    )


def gallery_build(work: Path, count: int) -> str:
    """Records, overlays and thumbnails of ``count`` images, then one timed build."""
    import numpy as np

    from featviz.sinks.encode import encode_png
    from featviz.sinks.gallery import GallerySink, build_gallery, thumbnail
    from featviz.sinks.layout import OutputLayout

    root = work / "gallery-10k"
    layout = OutputLayout(root)
    overlay = encode_png(np.full((48, 64, 3), 128, dtype=np.uint8))
    thumb = thumbnail(np.full((48, 64, 3), 128, dtype=np.uint8))
    photo = work / "photo.png"
    photo.write_bytes(overlay)
    original = GallerySink(layout).thumb_of_original(str(photo))
    original.parent.mkdir(parents=True)
    original.write_bytes(thumb)
    for index in range(count):
        image = Path(f"{index // 1000:02d}") / f"img_{index:05d}.jpg"
        file = root / "resnet50" / image / "cam" / "gradcam" / "layer4" / "281_tabby.png"
        file.parent.mkdir(parents=True)
        file.write_bytes(overlay)
        thumbs = root / "gallery" / "thumbs" / file.parent.relative_to(root)
        thumbs.mkdir(parents=True)
        (thumbs / "281_tabby.png.jpg").write_bytes(thumb)
        info = file.stat()
        relative = os.path.relpath(file, root)
        record = {
            "input": f"photos/img_{index:05d}.jpg",
            "outputs": [str(file)],
            "predictions": [
                {"index": 281, "label": "tabby", "probability": 0.8},
                {"index": 282, "label": "tiger cat", "probability": 0.1},
                {"index": 285, "label": "Egyptian cat", "probability": 0.05},
            ],
            "error": None,
            "skipped": False,
            "path": str(photo),
            "command": "cam",
            "fingerprint": "0" * 16,
            "model_folder": "resnet50",
            "stamps": {str(file): [info.st_size, info.st_mtime_ns]},
            "artifacts": [
                {
                    "file": relative,
                    "kind": "overlay",
                    "layer": "layer4",
                    "method": "gradcam",
                    "target": "281_tabby",
                    "caption": "tabby 0.80",
                }
            ],
        }
        records = root / "records" / "resnet50" / image
        records.mkdir(parents=True)
        (records / "cam-0000000000000000.json").write_text(json.dumps(record))
    say(f"  {count} synthetic images written; building")
    start = time.perf_counter()
    build_gallery(layout)
    seconds = time.perf_counter() - start
    page = (root / "index.html").stat().st_size
    data = (root / "gallery" / "data.js").stat().st_size
    return (
        f"Gallery for {count} images (one overlay each, thumbnails present): built in "
        f"{seconds:.1f} s; index.html {page / 1e3:.1f} kB, gallery/data.js {data / 1e6:.2f} MB "
        f"({data / count:.0f} bytes per image)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gallery-images", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featviz-sinks-"))
    try:
        print(machine_line())
        print()
        print(sink_costs(work, args.images, args.repeats))
        print()
        print(gallery_build(work, args.gallery_images))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
