"""featviz top: the k best images of every channel equal a brute-force loop over the same
images (a CNN layer, a ViT token layer, a channels-last layer), shards merge into the single
run's files byte for byte, the merge refuses incomplete or foreign partials, memory stays
k × channels, and the receptive field is the architecture's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app

EXAMPLES = Path(__file__).parent.parent / "examples"
VIT_SPEC = f"{EXAMPLES / 'synthetic_shapes.py'}:vit"
CHANNELS_LAST_SOURCE = """
import torch
from torch import nn


class ChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class Net(nn.Module):
    \"\"\"A convolution whose output the next module lays out (N, h, w, C), as Swin's stages.\"\"\"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.stage = ChannelsLast()
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.stage(self.conv(x)).mean(dim=(1, 2)))


def build():
    return Net()
"""


def _images(folder: Path, count: int, seed: int, sizes: list[tuple[int, int]]) -> list[Path]:
    """``count`` seeded noise pictures, sizes taken in turn (several shapes → several groups)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[rng.integers(0, height), :] = 255  # a bright line somewhere: clear winners
        paths.append(folder / f"im{i:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _top(args: list[str]):
    return CliRunner().invoke(app, ["top", "-q", *args])


def _brute_force(
    spec: str,
    layer: str,
    paths: list[Path],
    k: int,
    stat: str,
    input_size: int,
    channels_last: bool = False,
):
    """Per channel, sorted by (−score, input order): (input index, score, [row, col]), from
    one image at a time through the model and a plain forward hook."""
    from featviz.inputs.preprocess import to_tensor
    from featviz.model.load import load_model
    from featviz.model.options import ModelRequest

    loaded = load_model(ModelRequest(spec, weights="none", input_size=input_size, device="cpu"))
    module = dict(loaded.module.named_modules())[layer]
    seen = []
    handle = module.register_forward_hook(lambda m, i, out: seen.append(out.clone()))
    rows = []
    try:
        for index, path in enumerate(paths):
            x = to_tensor(Image.open(path).convert("RGB"), loaded.preprocessing)[None]
            with torch.no_grad():
                loaded.module(x)
            out = seen.pop()[0]
            if out.dim() == 1:  # one value per channel (a Linear's): a map of one position
                out = out[:, None, None]
            elif out.dim() == 2:  # tokens: class + 2 registers first, then a 4-pixel patch grid
                h, w = x.shape[-2] // 4, x.shape[-1] // 4
                out = out[3:].T.reshape(-1, h, w)
            elif channels_last:  # (h, w, C)
                out = out.permute(2, 0, 1)
            flat = out.flatten(1)
            peak, where = flat.max(dim=1)
            score = peak if stat == "max" else flat.mean(dim=1)
            for c in range(out.shape[0]):
                position = divmod(int(where[c]), out.shape[-1])
                rows.append((c, index, float(score[c]), list(position)))
    finally:
        handle.remove()
    channels = max(row[0] for row in rows) + 1
    return [
        sorted(((i, s, p) for ch, i, s, p in rows if ch == c), key=lambda r: (-r[1], r[0]))[:k]
        for c in range(channels)
    ]


def _ranking(out: Path, layer: str) -> dict:
    [path] = (out / "top").glob(f"*/{layer}.json")
    return json.loads(path.read_text())


def _assert_equal(ranking: dict, expected: list, paths: list[Path]) -> None:
    assert [c["channel"] for c in ranking["channels"]] == list(range(len(expected)))
    for channel, want in zip(ranking["channels"], expected):
        got = channel["top"]
        assert [e["index"] for e in got] == [i for i, _, _ in want]
        assert [e["input"] for e in got] == [str(paths[i]) for i, _, _ in want]
        assert [e["position"] for e in got] == [p for _, _, p in want]
        np.testing.assert_allclose([e["score"] for e in got], [s for _, s, _ in want], rtol=1e-5)


def test_cnn_layer_equals_brute_force(tmp_path, tiny_model_file, monkeypatch) -> None:
    from featviz.run.jobs import top

    monkeypatch.chdir(tmp_path)
    # Batches of 3 ranked two at a time, and whenever the input size changes.
    monkeypatch.setattr(top, "RANK_TOGETHER_IMAGES", 5)
    paths = [p.relative_to(tmp_path) for p in _images(tmp_path / "in", 11, 0, [(40, 30), (30, 44)])]
    spec = f"{tiny_model_file}:build"
    for stat in ("max", "mean"):
        args = [*("-m", spec, "--weights", "none", "--input-size", "32", "-l", "features.3")]
        done = _top([*args, "-k", "4", "--stat", stat, "--batch-size", "3", "in", "-o", stat])
        assert done.exit_code == 0, done.output
        expected = _brute_force(spec, "features.3", paths, 4, stat, 32)
        ranking = _ranking(tmp_path / stat, "features.3")
        assert ranking["images"] == 11 and ranking["stat"] == stat and ranking["k"] == 4
        _assert_equal(ranking, expected, paths)


def test_vit_token_layer_equals_brute_force(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = [p.relative_to(tmp_path) for p in _images(tmp_path / "in", 9, 1, [(64, 32), (32, 32)])]
    args = ["-m", VIT_SPEC, "--weights", "none", "--input-size", "32", "-l", "blocks.1"]
    done = _top([*args, "-k", "3", "--channels", "0-47", "in", "-o", "out"])
    assert done.exit_code == 0, done.output
    ranking = _ranking(tmp_path / "out", "blocks.1")
    _assert_equal(ranking, _brute_force(VIT_SPEC, "blocks.1", paths, 3, "max", 32), paths)
    # A token's receptive field is the whole image; its cell is its 4 × 4 patch.
    entry = ranking["channels"][0]["top"][0]
    width, height = Image.open(entry["input"]).size
    row, col = entry["position"]
    assert entry["box"] == [0, 0, width, height]
    assert entry["cell"] == [4 * col, 4 * row, 4 * col + 4, 4 * row + 4]


def test_channels_last_layer_equals_brute_force(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("net.py").write_text(CHANNELS_LAST_SOURCE)
    paths = [p.relative_to(tmp_path) for p in _images(tmp_path / "in", 7, 6, [(40, 30)])]
    args = ["-m", "net.py:build", "--weights", "none", "--input-size", "32", "-l", "stage"]
    done = _top([*args, "-k", "2", "in", "-o", "out"])
    assert done.exit_code == 0, done.output
    expected = _brute_force("net.py:build", "stage", paths, 2, "max", 32, channels_last=True)
    _assert_equal(_ranking(tmp_path / "out", "stage"), expected, paths)


def test_one_value_per_channel_layers_equal_brute_force(tmp_path, tiny_model_file, monkeypatch):
    """A Linear's class scores and a global pool's features rank images by their value; each
    example is its whole image, which is its grid cell too."""
    monkeypatch.chdir(tmp_path)
    paths = [p.relative_to(tmp_path) for p in _images(tmp_path / "in", 8, 7, [(40, 30), (30, 44)])]
    spec = f"{tiny_model_file}:build"
    for layer in ("fc", "pool"):
        args = ["-m", spec, "--weights", "none", "--input-size", "32", "-l", layer, "-k", "3"]
        done = _top([*args, "in", "-o", layer])
        assert done.exit_code == 0, done.output
        ranking = _ranking(tmp_path / layer, layer)
        _assert_equal(ranking, _brute_force(spec, layer, paths, 3, "max", 32), paths)
        for channel in ranking["channels"]:
            for entry in channel["top"]:
                width, height = Image.open(entry["input"]).size
                assert entry["cell"] == entry["box"] == [0, 0, width, height]
        [folder] = Path(layer, "top").iterdir()
        sheet = np.asarray(Image.open(folder / layer / "0000.png"))
        assert sheet.shape == (2 * (2 + 96) + 2, 2 * (2 + 96) + 2, 3)  # three images, 2 × 2


def test_a_layer_with_nothing_to_rank_by_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "in", 2, 8, [(32, 32)])
    args = ["-m", VIT_SPEC, "--weights", "none", "--input-size", "32", "in", "-o", "out"]
    done = _top([*args, "-l", "blocks.0.attn.attn_drop"])
    assert done.exit_code == 2
    assert (
        "Error: layer 'blocks.0.attn.attn_drop' (Dropout, no tensor output) has no feature maps, "
        "patch tokens or one value per channel to rank images by" in done.output
    )
    assert not Path("out").exists()


def test_shards_merged_equal_one_run_byte_for_byte(tmp_path, tiny_model_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "in", 17, 2, [(40, 30), (30, 44), (36, 36)])
    common = ["-m", f"{tiny_model_file}:build", "--weights", "none", "--input-size", "32"]
    common += ["-l", "features.*", "-k", "3", "--batch-size", "4", "in"]
    assert _top([*common, "-o", "single"]).exit_code == 0
    for k in (1, 2, 3):
        assert _top([*common, "--shard", f"{k}/3", "-o", "sharded"]).exit_code == 0
    partials = sorted(p.name for p in Path("sharded/top").glob("*/*.json"))
    assert partials == [f"features.{i}.shard-{k}-of-3.json" for i in range(4) for k in (1, 2, 3)]
    done = _top([*common, "--merge", "-o", "sharded"])
    assert done.exit_code == 0, done.output
    single = sorted(p.relative_to("single") for p in Path("single/top").rglob("*") if p.is_file())
    assert len(single) == 4 * 2 + (4 + 4 + 6 + 6)  # json + overview per layer, channel sheets
    for relative in single:
        assert (Path("sharded") / relative).read_bytes() == (Path("single") / relative).read_bytes()


def test_merge_refuses_what_is_not_one_whole_split(tmp_path, tiny_model_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "in", 6, 3, [(40, 30)])
    common = ["-m", f"{tiny_model_file}:build", "--weights", "none", "--input-size", "32"]
    common += ["-l", "features.2", "-k", "2", "in", "-o", "out"]
    done = _top([*common, "--merge", "--shard", "1/2"])
    assert done.exit_code == 2
    assert "Error: --merge combines the shards' partial results" in done.output
    done = _top([*common, "--merge"])
    assert (
        done.exit_code == 2 and "--merge: no partial results of layer 'features.2'" in done.output
    )
    assert _top([*common, "--shard", "1/2"]).exit_code == 0
    done = _top([*common, "--merge"])
    assert done.exit_code == 1
    assert "Error: --merge: shard 2/2 of layer 'features.2' has no partial results" in done.output
    assert "Hint: run it with --shard 2/2, then merge again" in done.output
    assert _top([*common, "--shard", "2/2"]).exit_code == 0
    done = _top([*common, "--channels", "0-5", "--merge"])  # other settings, the same folder
    assert done.exit_code == 2
    assert (
        "Error: --merge: features.2.shard-1-of-2.json was made with other settings" in done.output
    )
    assert _top([*common, "--merge"]).exit_code == 0


def test_outputs_on_disk_and_in_the_gallery(tmp_path, tiny_model_file, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "in", 5, 4, [(40, 30)])
    common = ["-m", f"{tiny_model_file}:build", "--weights", "none", "--input-size", "32"]
    options = ["-l", "features.2", "-k", "2", "--channels", "1,3-4", "--tensorboard", "tb"]
    done = _top([*common, *options, "in", "-o", "out"])
    assert done.exit_code == 0, done.output
    [folder] = Path("out/top").iterdir()
    assert sorted(p.name for p in (folder / "features.2").iterdir()) == [
        "0001.png",
        "0003.png",
        "0004.png",
    ]
    sheet = np.asarray(Image.open(folder / "features.2" / "0003.png"))
    assert sheet.shape == (2 + 96 + 2, 2 * (2 + 96) + 2, 3)  # two 96-pixel cells in a row
    overview = np.asarray(Image.open(folder / "features.2.png"))
    assert overview.shape == (2 * (2 + 96) + 2, 2 * (2 + 96) + 2, 3)  # three cells, 2 × 2
    ranking = _ranking(Path("out"), "features.2")
    assert [c["channel"] for c in ranking["channels"]] == [1, 3, 4]
    gallery = Path("out/gallery/data.js").read_text()
    assert f'"top: {folder.name} features.2"' in gallery and '"channel 4"' in gallery
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = Path("tb").iterdir()
    board = EventAccumulator(str(events))
    board.Reload()
    tags = ["top/features.2", *(f"top/features.2/{c:04d}" for c in (1, 3, 4))]
    assert sorted(board.Tags()["images"]) == tags
    manifest = json.loads(Path("out/manifest.json").read_text())
    assert manifest["counts"]["done"] == 5
    assert any(path.endswith("features.2.json") for path in manifest["outputs"])


@pytest.mark.parametrize(
    ("option", "error"),
    [
        (["--channels", "9-3"], "--channels '9-3': expected channels and ranges"),
        (["--channels", "6"], "--channels 6: layer 'features.2' has 6 channels (0-5)"),
        (["-k", "0"], "Invalid value for '-k'"),
    ],
)
def test_bad_options_exit_2(tmp_path, tiny_model_file, option, error) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20)).save(image)
    args = ["-m", f"{tiny_model_file}:build", "-l", "features.2", *option, str(image)]
    done = _top([*args, "-o", str(tmp_path / "out")])
    assert done.exit_code == 2 and error in done.output, done.output


def _prepared_top(tmp_path: Path, model_file: Path, layers: tuple[str, ...], k: int):
    """``top`` over tmp_path/in prepared in-process (the job within reach), batches of 4."""
    from featviz.model.options import ModelRequest
    from featviz.run.plan import Plan, RunRequest, TopRequest
    from featviz.run.prepare import prepare
    from featviz.sinks.options import OutputRequest

    return prepare(
        Plan(
            "top",
            ModelRequest(f"{model_file}:build", weights="none", input_size=32, device="cpu"),
            OutputRequest(tmp_path / "out", gallery=False),
            TopRequest(layers=layers, k=k),
            RunRequest((str(tmp_path / "in"),), batch_size=4),
        )
    )


def test_memory_is_k_times_channels(tmp_path, tiny_model_file) -> None:
    from featviz.sinks.manifest import RunTally

    _images(tmp_path / "in", 40, 5, [(36, 36)])
    run = _prepared_top(tmp_path, tiny_model_file, ("features.0", "features.3"), k=2)
    tally = RunTally()
    for result in run.results():
        tally.add(result)
        held = run.job.winners.keys()
        assert len(held) <= 2 * (4 + 6)  # never more images than k × channels
        assert all(r.scores.shape[1] <= 2 for r in run.job.rankings.values())
    run.finish(tally, interrupted=False)
    assert {r.scores.shape for r in run.job.rankings.values()} == {(4, 2), (6, 2)}


def test_winners_past_the_pixel_budget_are_decoded_again(
    tmp_path, tiny_model_file, monkeypatch
) -> None:
    """Winners' pixels are kept up to KEPT_PIXELS_BYTES (those examples need no second
    decode); the others are read again at the end, and one gone by then fails the run."""
    from featviz.errors import RunError
    from featviz.run.jobs import top
    from featviz.sinks.manifest import RunTally

    monkeypatch.setattr(top, "KEPT_PIXELS_BYTES", 2 * 36 * 36 * 3)  # two of the images
    _images(tmp_path / "in", 12, 6, [(36, 36)])
    run = _prepared_top(tmp_path, tiny_model_file, ("features.3",), k=2)
    tally = RunTally()
    for result in run.results():
        tally.add(result)
    run.job.settle()  # the last batches are ranked together when the rankings are read
    winners = run.job.winners.values()
    kept = [seen for seen in winners if seen.pixels is not None]
    assert 0 < len(kept) <= 2 < len(winners)
    assert run.job.kept_bytes == sum(seen.pixels.nbytes for seen in kept)
    for seen in kept:
        assert np.array_equal(seen.pixels, np.asarray(Image.open(seen.source.path)))
    gone = next(seen.source for seen in winners if seen.pixels is None)
    Path(gone.path).unlink()
    with pytest.raises(RunError) as raised:
        run.finish(tally, interrupted=False)
    assert raised.value.message == (
        f"cannot read {gone.display} again to draw its crops: {gone.display}: does not exist"
    )
    assert not list((tmp_path / "out").glob("top/*/*.png"))  # nothing of it written


def test_rankings_of_parts_merged_equal_one_ranking_of_all() -> None:
    """What a Ray driver does with its actors' rankings: ties included, in any order."""
    from featviz.features.top import ChannelRanking

    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (30, 5), generator=generator).float()  # many ties
    positions = torch.randint(0, 50, (30, 5), generator=generator)
    images = torch.arange(30)
    whole = ChannelRanking(5, 4)
    whole.add(scores, images, positions)
    merged = ChannelRanking(5, 4)
    for part in (slice(20, 30), slice(0, 7), slice(7, 20)):
        ranking = ChannelRanking(5, 4)
        ranking.add(scores[part], images[part], positions[part])
        merged.merge(ranking)
    for got, want in zip(
        (merged.scores, merged.images, merged.positions),
        (whole.scores, whole.images, whole.positions),
    ):
        assert torch.equal(got, want)
    assert whole.images[0].tolist() == sorted(whole.images[0].tolist(), key=lambda i: -scores[i, 0])


@pytest.mark.parametrize("seed", range(5))
def test_batches_in_any_order_rank_as_one_sort(seed: int) -> None:
    """Batches of any size, images in any order, many ties: each channel keeps the k best
    by (score, then image), with their positions, as sorting everything at once does; late
    batches leave most channels untouched, which must change nothing."""
    from featviz.features.top import ChannelRanking

    generator = torch.Generator().manual_seed(seed)
    count, channels, k = 200, 6, 5
    scores = torch.randint(0, 12, (count, channels), generator=generator).float()
    positions = torch.randint(0, 40, (count, channels), generator=generator)
    order = torch.randperm(count, generator=generator)
    ranking = ChannelRanking(channels, k)
    start = 0
    while start < count:
        size = int(torch.randint(1, 9, (1,), generator=generator))
        part = order[start : start + size]
        ranking.add(scores[part], part, positions[part])
        start += size
    for c in range(channels):
        best = sorted(range(count), key=lambda i: (-scores[i, c].item(), i))[:k]
        assert ranking.images[c].tolist() == best
        assert ranking.scores[c].tolist() == scores[best, c].tolist()
        assert ranking.positions[c].tolist() == positions[best, c].tolist()


def test_receptive_field_is_the_architectures(tiny_model) -> None:
    from featviz.features.receptive import receptive_extents
    from featviz.layers.trace import trace_model

    trace = trace_model(tiny_model, (1, 3, 32, 32))
    calls, layouts = trace.calls(), trace.layouts()

    def extent(*layers: str):
        cpu = torch.device("cpu")
        return receptive_extents(tiny_model, layers, layouts, (32, 32), calls=calls, device=cpu)

    # 3 × 3 at stride 1: one pixel each side of the cell's 1
    first = extent("features.0")["features.0"]
    assert (first.up, first.down, first.left, first.right) == (1.5, 1.5, 1.5, 1.5)
    # Then 3 × 3 at stride 2: cell 8 (pixels 16–17, centre 17) reads the first conv's 15–17,
    # which read pixels 14–18.
    second = extent("features.2")["features.2"]
    assert (second.up, second.down, second.left, second.right) == (3.0, 2.0, 3.0, 2.0)
    # Measured in one forward, each layer's is the same as on its own.
    assert extent("features.0", "features.2") == {"features.0": first, "features.2": second}


def _drawn_plainly(image: np.ndarray, entry: dict, label: str, size: int = 96) -> np.ndarray:
    """An example drawn the plain way, one crop at a time: the box cut and scaled to fit
    (nearest from 2× up), centred on white, the grid cell outlined, the label drawn whole by
    Pillow on black at the top-left corner."""
    from PIL import ImageDraw, ImageFont

    x0, y0, x1, y1 = entry["box"]
    crop = image[y0:y1, x0:x1]
    scale = size / max(crop.shape[:2])
    width, height = max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    cell = np.full((size, size, 3), 255, np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    cell[top : top + height, left : left + width] = Image.fromarray(crop).resize(
        (width, height), resample
    )
    cx0, cy0, cx1, cy1 = entry["cell"]
    a = min(max(left + int(np.floor((cx0 - x0) * scale)), 0), size - 1)
    b = min(max(top + int(np.floor((cy0 - y0) * scale)), 0), size - 1)
    c = min(max(left + int(np.ceil((cx1 - x0) * scale)), a + 1), size)
    d = min(max(top + int(np.ceil((cy1 - y0) * scale)), b + 1), size)
    cell[b, a:c] = cell[d - 1, a:c] = cell[b:d, a] = cell[b:d, c - 1] = (255, 214, 0)
    font = ImageFont.load_default(size=size // 7)
    bl, bt, br, bb = font.getbbox(label)
    stamp = Image.new("RGB", (br - bl + 4, bb - bt + 4))
    ImageDraw.Draw(stamp).text((2 - bl, 2 - bt), label, fill=(255, 255, 255), font=font)
    cell[: stamp.height, : stamp.width] = np.asarray(stamp)[:size, :size]
    return cell


def test_every_example_is_drawn_as_one_crop_alone_would_be(tmp_path, tiny_model_file):
    """Crops scaled once per image and box, labels put together from glyphs, every winner
    decoded once for all layers: each sheet's cells and each overview's still show exactly
    what drawing each example on its own shows."""
    paths = _images(tmp_path / "in", 8, 7, [(40, 30), (30, 44)])
    args = ["-m", f"{tiny_model_file}:build", "--weights", "none", "--input-size", "32"]
    args += ["-l", "features.0", "-l", "features.3", "-k", "3", "--stat", "mean"]
    done = _top([*args, str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    [folder] = (tmp_path / "out" / "top").iterdir()
    images = {str(path): np.asarray(Image.open(path).convert("RGB")) for path in paths}
    boxes = set()
    for layer in ("features.0", "features.3"):
        ranking = _ranking(tmp_path / "out", layer)
        overview = np.asarray(Image.open(folder / f"{layer}.png"))
        per_row = int(np.ceil(np.sqrt(len(ranking["channels"]))))
        for c, channel in enumerate(ranking["channels"]):
            sheet = np.asarray(Image.open(folder / layer / f"{channel['channel']:04d}.png"))
            for rank, entry in enumerate(channel["top"]):
                boxes.add((entry["index"], tuple(entry["box"])))
                image = images[entry["input"]]
                row, col = divmod(rank, 2)  # k = 3: two cells a row
                got = sheet[2 + row * 98 : 2 + row * 98 + 96, 2 + col * 98 : 2 + col * 98 + 96]
                want = _drawn_plainly(image, entry, f"{entry['score']:.3g}")
                np.testing.assert_array_equal(got, want, err_msg=f"{layer} {c} {rank}")
            row, col = divmod(c, per_row)
            got = overview[2 + row * 98 : 2 + row * 98 + 96, 2 + col * 98 : 2 + col * 98 + 96]
            want = _drawn_plainly(images[channel["top"][0]["input"]], channel["top"][0], str(c))
            np.testing.assert_array_equal(got, want, err_msg=f"{layer} overview {c}")
    assert len({box for _, box in boxes}) > 2  # crops of several boxes, some images in several
    outputs = json.loads((tmp_path / "out" / "manifest.json").read_text())["outputs"]
    expected = []
    for layer, channels in (("features.0", 4), ("features.3", 6)):
        expected += [f"{layer}.json", f"{layer}.png"]
        expected += [f"{layer}/{c:04d}.png" for c in range(channels)]
    assert [str(Path(path).relative_to(folder)) for path in outputs] == expected


def test_not_finite_names_rows_with_nan_or_infinity() -> None:
    from featviz.explainer.checks import not_finite

    values = torch.randn(6, 4, 5, 7)
    values[1, 2, 3, 4] = float("nan")
    values[2, 0, 0, 0] = float("inf")
    values[4, 3, 4, 6] = float("-inf")
    expected = [False, True, True, False, True, False]
    assert not_finite(values).tolist() == expected
    channels_last = values.contiguous(memory_format=torch.channels_last)
    assert not_finite(channels_last).tolist() == expected
    assert not_finite(values.flatten(1)).tolist() == expected
    assert not_finite(torch.tensor([1.0, float("nan"), -float("inf")])).tolist() == [
        False,
        True,
        True,
    ]


def test_normalise_is_the_formula_to_the_bit() -> None:
    from featviz.inputs.preprocess import Preprocessing, normalise

    preprocessing = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 32)
    pixels = torch.randint(
        0, 256, (2, 3, 9, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    assert torch.equal(normalise(pixels, preprocessing), (pixels.float() / 255.0 - mean) / std)
