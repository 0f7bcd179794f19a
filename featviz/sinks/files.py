"""The file layout as a sink: every output as a file under ``--out``, one record per image and
settings, one manifest per run."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.inputs.shards import shards_summary
from featviz.sinks.encode import encode_json, encode_npy, encode_npz
from featviz.sinks.layout import run_name, write_atomic
from featviz.sinks.records import file_stamps, finished_record
from featviz.sinks.variants import claim

if TYPE_CHECKING:
    from featviz.inputs.discover import ImageSource
    from featviz.sinks import RunEnd
    from featviz.sinks.artifacts import Artifact, ImageOutputs
    from featviz.sinks.layout import OutputLayout
    from featviz.sinks.results import ImageResult
    from featviz.sinks.variants import Variant


class FileSink:
    """``fingerprint`` hashes everything that decides an image's outputs, so that records of
    other settings never pass for these (``--skip-existing``); ``variant`` claims the model's
    folder, so that no other model's or settings' pictures are overwritten."""

    wants_activations = False

    def __init__(
        self,
        layout: OutputLayout,
        command: str,
        fingerprint: str,
        variant: Variant,
        record: Callable[[], dict[str, Any]],
        quality: int = 90,
    ) -> None:
        self.layout = layout
        self.quality = quality
        self.command = command
        self.fingerprint = fingerprint
        self.variant = variant
        self.run_record = record  # what the manifest says besides the images, asked at the end
        self.started = time.time()

    def open(self) -> None:
        """Create the folder, claim the model's folder in it and name this run."""
        self.layout.prepare()
        self.layout.variant = claim(self.layout.root, self.variant)
        shard = self.run_record()["request"].get("run", {}).get("shard")  # filters: no images
        self.layout.run = run_name(self.started, self.command, shard)

    def finished(self, source: ImageSource) -> ImageResult | None:
        """The result of an earlier run with the same settings, when its outputs are intact."""
        from featviz.explainer.predictions import Prediction
        from featviz.sinks.results import ImageResult

        path = self.layout.record(source.relative, self.command, self.fingerprint)
        record = finished_record(path, self.fingerprint)
        if record is None:
            return None
        predictions = [Prediction(**p) for p in record.get("predictions", [])]
        return ImageResult(
            source,
            outputs=record["outputs"],
            predictions=predictions,
            skipped=True,
            rows=record.get("rows", []),
            note=record.get("note"),
        )

    def write(self, outputs: ImageOutputs) -> list[tuple[Path, Artifact]]:
        relative = None if outputs.source is None else outputs.source.relative
        written = []
        for artifact in outputs.artifacts:
            path = self.layout.path_of(artifact, relative)
            write_atomic(path, _encode(artifact, path, self.quality))
            written.append((path, artifact))
        return written

    def record(self, result: ImageResult, written: list[tuple[Path, Artifact]]) -> None:
        """What the image produced, written after its outputs. ``path`` (the input, absolute)
        and each artifact's ``file`` (relative to the output folder) let the gallery find them
        whatever folder a later run starts in; both keep a file name's bytes that are not UTF-8
        (encode_json writes them as escapes that read back as the same name)."""
        root = self.layout.root
        record = {
            **result.as_dict(),
            "path": os.path.abspath(result.source.path),
            "command": self.command,
            "fingerprint": self.fingerprint,
            "model_folder": self.layout.variant,
            "stamps": file_stamps([str(path) for path, _ in written]),
            "artifacts": [
                {
                    "file": os.path.relpath(path, root),
                    "kind": artifact.kind,
                    "layer": artifact.layer,
                    "method": artifact.method,
                    "target": artifact.target,
                    "caption": artifact.caption,
                }
                for path, artifact in written
            ],
        }
        path = self.layout.record(result.source.relative, self.command, self.fingerprint)
        write_atomic(path, encode_json(record))

    def close(self, end: RunEnd) -> Path:
        """This run's manifest under runs/, and manifest.json: the same, listing every run."""
        from featviz.inputs.printable import printable
        from featviz.sinks.manifest import manifest

        record = self.run_record()
        record["model"]["folder"] = self.layout.variant
        data = manifest(self.command, record, end.tally, end.interrupted)
        if end.outputs:
            data["outputs"] = end.outputs  # the run's own files: score.csv, score.png, …
        shard = data["request"].get("run", {}).get("shard")
        own = self.layout.run_manifest()
        write_atomic(own, encode_json(data))
        runs = sorted(own.parent.glob("*.json"))
        latest = {
            **data,
            "run": printable(own.name),
            "runs": [path.relative_to(self.layout.root).as_posix() for path in runs],
        }
        if shard:
            latest["shards"] = shards_summary(data, _readable(runs))
        path = self.layout.manifest()
        write_atomic(path, encode_json(latest))
        return path


def _encode(artifact: Artifact, path: Path, quality: int) -> bytes:
    if artifact.pixels is not None:
        return artifact.encoded(path.suffix[1:], quality)
    if artifact.text is not None:
        return artifact.text.encode("utf-8")
    if path.suffix == ".npy":
        [array] = artifact.arrays.values()
        return encode_npy(array)
    return encode_npz(artifact.arrays)


def _readable(paths: list[Path]) -> list[dict[str, Any]]:
    """The run manifests that parse: another shard may be writing its own right now (each is
    renamed into place whole, but a folder on a network file system may lag)."""
    manifests = []
    for path in paths:
        try:
            manifests.append(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            continue
    return manifests
