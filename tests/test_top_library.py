"""featviz.top: the library call holds exactly what the command's JSON files hold, equals a
brute-force loop (a CNN layer and a ViT token layer), reads a generator as it goes, and draws
each channel's sheet and the overview as the command writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_top import VIT_SPEC, _brute_force, _images, _top

import featviz
from featviz.errors import InputError, UsageError


def _cli_rankings(out: Path) -> dict[str, dict]:
    [folder] = (out / "top").iterdir()
    return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}


def test_equals_the_commands_files_and_a_brute_force_loop(tmp_path, tiny_model_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = [p.relative_to(tmp_path) for p in _images(tmp_path / "in", 10, 8, [(40, 30), (30, 44)])]
    spec = f"{tiny_model_file}:build"
    args = ["-m", spec, "--weights", "none", "--input-size", "32", "-k", "3", "--stat", "mean"]
    done = _top([*args, "-l", "features.0", "-l", "features.3", "--batch-size", "4", "in"])
    assert done.exit_code == 0, done.output
    model = featviz.load(spec, weights="none", input_size=32)
    found = featviz.top(
        model, "in", layer=["features.0", "features.3"], k=3, stat="mean", batch_size=4
    )
    assert found.rankings == _cli_rankings(tmp_path / "featviz-out")
    expected = _brute_force(spec, "features.3", paths, 3, "mean", 32)
    ranking = found.rankings["features.3"]
    assert ranking["images"] == 10 and ranking["channels"][5]["channel"] == 5
    np.testing.assert_array_equal(
        found.values("features.3", "index"), [[i for i, _, _ in c] for c in expected]
    )
    np.testing.assert_allclose(
        found.values("features.3"), [[s for _, s, _ in c] for c in expected], rtol=1e-5
    )
    assert found.values("features.3", "position").tolist() == [
        [p for _, _, p in c] for c in expected
    ]
    assert found.values("features.0", "box").shape == (4, 3, 4)
    # The pictures are the command's, pixel for pixel.
    [folder] = (tmp_path / "featviz-out" / "top").iterdir()
    for channel in (0, 4):
        written = np.asarray(Image.open(folder / "features.3" / f"{channel:04d}.png"))
        np.testing.assert_array_equal(np.asarray(found.sheet("features.3", channel)), written)
    written = np.asarray(Image.open(folder / "features.0.png"))
    np.testing.assert_array_equal(np.asarray(found.overview("features.0")), written)
    assert found._repr_png_().startswith(b"\x89PNG")


def test_a_vit_layer_from_a_generator_of_arrays(tmp_path):
    """In-memory images, streamed: the generator is read as the run goes, and only the
    winners are kept."""
    paths = _images(tmp_path / "in", 9, 1, [(64, 32), (32, 32)])
    read = []

    def pictures():
        for path in paths:
            read.append(path)
            yield np.asarray(Image.open(path).convert("RGB"))

    model = featviz.load(VIT_SPEC, weights="none", input_size=32)
    found = featviz.top(model, pictures(), layer="blocks.1", k=3, channels="0-47")
    assert read == paths
    expected = _brute_force(VIT_SPEC, "blocks.1", paths, 3, "max", 32)
    channels = found.rankings["blocks.1"]["channels"]
    assert [c["channel"] for c in channels] == list(range(48))
    for got, want in zip(channels, expected):
        assert [e["input"] for e in got["top"]] == [f"image {i}" for i, _, _ in want]
        assert [e["position"] for e in got["top"]] == [p for _, _, p in want]
        np.testing.assert_allclose(
            [e["score"] for e in got["top"]], [s for _, s, _ in want], rtol=1e-5
        )
    assert set(found.sources) == {e["index"] for c in channels for e in c["top"]}
    assert found.sheet("blocks.1", 7).size == (2 * 98 + 2, 2 * 98 + 2)  # three cells, 2 × 2


def test_a_stream_holds_only_its_winners_and_the_images_in_flight(tiny_model_file):
    """Memory is k × channels, not the stream: images that win nothing are let go as the run
    goes (at most 4 batches and 2 per thread are in flight, and the batches waiting to be
    ranked together)."""
    import weakref

    from featviz.run.jobs.top import RANK_TOGETHER_IMAGES
    from featviz.run.prepare import default_workers

    rng = np.random.default_rng(9)
    alive = []
    held_at_the_end = []

    def pictures():
        for _ in range(100):
            image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            alive.append(weakref.ref(image))
            yield image
        held_at_the_end.append(sum(image() is not None for image in alive))

    model = featviz.load(f"{tiny_model_file}:build", weights="none", input_size=32)
    found = featviz.top(model, pictures(), layer="features.2", k=1, batch_size=2)
    assert len(alive) == 100 and len(found.sources) <= 6
    in_flight = 4 * 2 + 2 * default_workers() + 1
    assert held_at_the_end[0] <= len(found.sources) + in_flight + RANK_TOGETHER_IMAGES


def _refusal(call, *args, **options) -> tuple[str, str | None]:
    """(message, hint) of the featviz error ``call`` raises."""
    with pytest.raises((UsageError, InputError)) as caught:
        call(*args, **options)
    return caught.value.message, caught.value.hint


def test_mistakes_say_what_to_do(tmp_path, tiny_model_file):
    model = featviz.load(f"{tiny_model_file}:build", weights="none", input_size=32)
    image = np.zeros((20, 20, 3), np.uint8)
    top = featviz.top
    assert _refusal(top, model, [image], layer="features.2", k=0) == (
        "top: k=0 keeps no image",
        "ask for k=1 or more per channel",
    )
    assert _refusal(top, model, [image], layer="features.2", stat="median") == (
        "top: stat='median' is not a score",
        "use 'max' or 'mean'",
    )
    assert _refusal(top, model, [image], layer="features.2", channels=[6]) == (
        "--channels 6: layer 'features.2' has 6 channels (0-5)",
        "pick channels below 6",
    )
    assert _refusal(top, model, iter([]), layer="features.2")[0] == "no images given"
    missing = str(tmp_path / "missing.png")
    message, _ = _refusal(top, model, [image, missing], layer="features.2")
    assert message.startswith(f"{missing}: ")
    found = top(model, [image], layer="features.2", k=2)
    assert found.values("features.2").shape == (6, 1)  # one image: one entry per channel
    assert _refusal(found.sheet, "features.2", 9)[0] == (
        "channel 9 of layer 'features.2' was not ranked"
    )
