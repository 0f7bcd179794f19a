"""Detection models: one map per detected box, its score the box's class score; a tiny
torchvision FCOS trained here on shapes where every object's box is known; maps that line up
with the photo through the detector's own resize and padding; torchvision's detectors by name
with nothing downloaded."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, example_cache
from PIL import Image
from synthetic_shapes import (
    DETECTION_CLASSES,
    HEIGHT,
    WIDTH,
    detection_batch,
    detection_recall,
    detector,
    scene,
    trained_detector,
    two_object_scenes,
)
from typer.testing import CliRunner

from featviz.cam import heatmap
from featviz.cli.app import app
from featviz.explainer.batch import Explainer
from featviz.model.load import load_model
from featviz.model.options import ModelRequest

EXAMPLE = ROOT / "examples" / "shapes_detector.py"
FINE = "backbone.3"  # the backbone at 1/2 resolution: a 16 × 32 grid, 4 × 4 cells per object


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return example_cache(tmp_path_factory, "shapes_detector", trained_detector)


@pytest.fixture
def found(cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return load_model(ModelRequest(f"{EXAMPLE}:build", device="cpu"))


def _raw(loaded):
    """The detector without featviz's hooks: its list of dicts."""
    raw = detector()
    raw.load_state_dict(loaded.module.state_dict())
    return raw.eval().requires_grad_(False)


def _scenes(count: int, seed: int) -> torch.Tensor:
    """(count, 3, 32, 64) two-object scenes in [0, 1], as the detector takes them."""
    return torch.cat([image for image, _, _ in two_object_scenes(count, seed)]) * 0.5 + 0.5


def test_the_detector_learned_the_scenes(found) -> None:
    recall, extra = detection_recall(_raw(found))
    assert recall == 1.0 and extra == 0, (recall, extra)
    assert found.trace.task == "detection" and found.default_cam_layer() == "backbone"
    assert found.categories == DETECTION_CLASSES


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_gradient_maps_match_a_recomputation_of_the_box_score(found, method: str) -> None:
    inputs = _scenes(4, seed=3)
    explainer = Explainer(found, (method,), [FINE], [], top_k=None, cam_batch_size=8)
    explained = explainer.explain(inputs)
    raw = _raw(found)
    taken = {}
    raw.backbone[3].register_forward_hook(lambda m, i, o: taken.update(a=o))
    inputs = inputs.clone().requires_grad_(True)  # a graph from the input on
    detections = raw(inputs)
    acts = taken["a"]
    for i in range(4):
        assert len(explained.maps[i]) == 2  # two objects, two boxes, best first
        for rank, entry in enumerate(explained.maps[i]):
            score = detections[i]["scores"][rank]
            assert entry.caption == (
                f"{DETECTION_CLASSES[int(detections[i]['labels'][rank])]} {float(score):.2f}"
            )
            (grads,) = torch.autograd.grad(score, acts, retain_graph=True)
            g, a = grads[i], acts[i].detach()
            if method == "gradcam":
                expected = (g.mean((1, 2), keepdim=True) * a).sum(0).clamp(min=0)
            elif method == "hirescam":  # signed: the ReLU comes with the heatmap
                expected = (g * a).sum(0)
            else:
                expected = (g.clamp(min=0) * a).sum(0).clamp(min=0)
            scale = max(float(expected.abs().max()), 1e-12)
            assert torch.allclose(entry.layer_cam, expected, atol=1e-4 * scale), method


def _matched(detections: dict, box: torch.Tensor, label: int) -> float:
    """The best score among ``detections``' boxes of ``label`` overlapping ``box`` by IoU ≥
    0.5, 0 when there is none: the explained box in a perturbed re-run."""
    from torchvision.ops import box_iou

    same = detections["labels"] == label
    if not same.any():
        return 0.0
    overlap = box_iou(box[None], detections["boxes"][same])[0]
    scores = detections["scores"][same][overlap >= 0.5]
    return float(scores.max()) if len(scores) else 0.0


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_maps_match_a_recomputation_with_matched_boxes(found, method: str) -> None:
    """scorecam and ablationcam re-run the detector: each re-run's score for a box is its own
    best box of that class overlapping the explained one (IoU ≥ 0.5)."""
    from featviz.layers.grids import upsample

    inputs = _scenes(2, seed=7)
    explainer = Explainer(found, (method,), [FINE], [], top_k=None, cam_batch_size=16)
    with pytest.warns(RuntimeWarning) if method == "ablationcam" else nullcontext():
        explained = explainer.explain(inputs)  # fx cannot split a detector: whole re-runs
    raw = _raw(found)
    taken = {}
    raw.backbone[3].register_forward_hook(lambda m, i, o: taken.update(a=o))
    with torch.no_grad():
        clean = raw(inputs)
        acts = taken["a"]
        for i in range(2):
            for rank, entry in enumerate(explained.maps[i]):
                box, label = clean[i]["boxes"][rank], int(clean[i]["labels"][rank])
                original = float(clean[i]["scores"][rank])
                channels = acts.shape[1]
                if method == "scorecam":
                    masks = upsample(acts[i], inputs.shape[-2:])
                    low = masks.amin((1, 2), keepdim=True)
                    masks = (masks - low) / (masks.amax((1, 2), keepdim=True) - low + 1e-8)
                    rerun = raw(inputs[i : i + 1] * masks[:, None])
                    weights = torch.softmax(
                        torch.tensor([_matched(d, box, label) for d in rerun]), 0
                    )
                else:
                    scores = []
                    for k in range(channels):

                        def ablate(module, args, output, k=k):
                            output = output.clone()
                            output[:, k] = 0
                            return output

                        handle = raw.backbone[3].register_forward_hook(ablate)
                        scores.append(_matched(raw(inputs[i : i + 1])[0], box, label))
                        handle.remove()
                    weights = (original - torch.tensor(scores)) / (original + 1e-7)
                expected = torch.einsum("k,khw->hw", weights, acts[i]).clamp(min=0)
                scale = max(float(expected.abs().max()), 1e-12)
                assert torch.allclose(entry.layer_cam, expected, atol=1e-4 * scale), (i, rank)


def _box_shares(found, method: str, layer: str) -> list[float]:
    """Each box's share of its map's mass (upsampled to the scene) inside the box, over 40
    held-out two-object scenes."""
    explainer = Explainer(found, (method,), [layer], [], top_k=None, cam_batch_size=8)
    explained = explainer.explain(_scenes(40, seed=11))
    shares = []
    for maps in explained.maps:
        assert len(maps) == 2
        for entry in maps:
            values = heatmap(entry.layer_cam, (HEIGHT, WIDTH))
            x0, y0, x1, y1 = (round(v) for v in entry.boxes[0])
            total = float(values.sum())
            shares.append(float(values[y0:y1, x0:x1].sum()) / total if total else 0.0)
    return shares


@pytest.mark.parametrize(
    ("method", "layer", "mean_at_least", "worst_at_least"),
    [
        ("hirescam", FINE, 0.8, 0.6),
        ("layercam", FINE, 0.7, 0.5),
        ("gradcam", FINE, 0.5, 0.2),
        ("ablationcam", FINE, 0.7, 0.3),
        ("hirescam", "backbone", 0.6, 0.2),
    ],
)
def test_each_box_map_puts_its_mass_inside_its_box(
    found, method: str, layer: str, mean_at_least: float, worst_at_least: float
) -> None:
    """A box is ~7 % of a scene; position-wise gradients (hirescam, layercam) keep a box's
    evidence where it is, Grad-CAM's channel averages less so."""
    shares = _box_shares(found, method, layer)
    mean, worst = float(np.mean(shares)), min(shares)
    print(f"detection {method} at {layer}: share inside the box mean {mean:.2f}, worst {worst:.2f}")
    assert mean > mean_at_least and worst > worst_at_least, (mean, worst)


def _photo(path: Path, scale: tuple[int, int]) -> list[dict]:
    """A two-object scene resized to (height, width) = ``scale`` × (32, 64) at other aspect,
    saved at ``path``; its objects' boxes in the photo's pixels."""
    generator = torch.Generator().manual_seed(21)
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.long)
    picture = scene([(0, 0), (1, 1)], generator, mask)  # a square left, a disc right
    pixels = (picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    height, width = scale
    Image.fromarray(pixels).resize((width, height), Image.NEAREST).save(path)
    boxes = []
    for label in (1, 2):
        ys, xs = (mask == label).nonzero(as_tuple=True)
        boxes.append(
            {
                "label": DETECTION_CLASSES[label],
                "box": [
                    int(xs.min()) * width / WIDTH,
                    int(ys.min()) * height / HEIGHT,
                    (int(xs.max()) + 1) * width / WIDTH,
                    (int(ys.max()) + 1) * height / HEIGHT,
                ],
            }
        )
    return boxes


def _iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _drawn_edge(value: float) -> tuple[int, int]:
    """The lowest and highest pixel boundary a box edge given as ``value`` in the JSON can be
    drawn at: the overlay rounds the detector's float edge to the nearest boundary, and the
    JSON keeps it to 0.1 px, so any boundary within 0.5 + 0.05 of ``value`` (one or two)."""
    return math.ceil(value - 0.55), math.floor(value + 0.55)


@pytest.mark.parametrize(("input_size", "covered"), [(None, 67), ("48", 66)])
def test_maps_and_boxes_line_up_with_the_photo_through_resize_and_padding(
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    input_size: str | None,
    covered: int,
) -> None:
    """A 96 × 201 photo: featviz feeds 32 × 67 (or 48 × 100, which the detector resizes to
    32 × 66), and the detector pads it to 32 × 96: the maps cover 67 (66) of its 96 columns."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    truth = _photo(tmp_path / "scene.png", (96, 201))
    sized = ["--input-size", input_size] if input_size else []
    done = CliRunner().invoke(
        app,
        ["cam", "-m", f"{EXAMPLE}:build", str(tmp_path / "scene.png"), *sized, "-M", "hirescam",
         "-l", FINE, "--save-raw", "--json", "-o", str(tmp_path / "out")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    line = json.loads(done.stdout)
    detections = line["predictions"]
    # The detector is trained on the machine that runs the tests, and its float32 training
    # rounds with the thread count: on this enlarged photo a second, weaker box on an object
    # can pass 0.5 (one thread here). Every box must be on an object of its class; each
    # object's best box (detections come best first) is the one followed below.
    truth_of = {wanted["label"]: wanted["box"] for wanted in truth}
    assert {d["label"] for d in detections} == set(truth_of)
    assert all(_iou(d["box"], truth_of[d["label"]]) > 0.3 for d in detections), detections
    best = {
        label: next(r for r, d in enumerate(detections) if d["label"] == label)
        for label in truth_of
    }
    # Where each object is, to about an input pixel (3 of the photo's).
    for label, rank in best.items():
        box, wanted = detections[rank]["box"], truth_of[label]
        centre = np.add(box[:2], box[2:]) / 2 - np.add(wanted[:2], wanted[2:]) / 2
        assert _iou(box, wanted) > 0.5 and np.abs(centre).max() < 4, (box, wanted)
    outputs = sorted(line["outputs"])
    assert [Path(p).name for p in outputs if p.endswith(".png")] == sorted(
        f"box{rank + 1}_{DETECTION_CLASSES.index(d['label'])}_{d['label']}.png"
        for rank, d in enumerate(detections)
    )
    for rank in best.values():
        d = detections[rank]
        stem = f"box{rank + 1}_{DETECTION_CLASSES.index(d['label'])}_{d['label']}"
        raw = np.load(next(p for p in outputs if p.endswith(f"{stem}.npz")))
        values = raw["heatmap"]
        assert values.shape == (96, 201)
        assert raw["layer_cam"].shape == (32, covered)  # cropped out of the padded 32 × 96
        x0, y0, x1, y1 = (round(v) for v in d["box"])
        share = values[y0:y1, x0:x1].sum() / values.sum()
        assert share > 0.6, (d, share)
        overlay = np.asarray(Image.open(next(p for p in outputs if p.endswith(f"{stem}.png"))))
        white = (overlay == 255).all(axis=2)
        thick = 2  # min(96, 201) / 200, at least 2
        # (low, high) boundaries: what is white, or inside, whichever each edge was drawn at.
        left, top, right, bottom = (_drawn_edge(v) for v in d["box"])
        assert white[top[1] + thick : bottom[0] - thick, left[1] : left[0] + thick].all()  # left
        assert white[bottom[1] - thick : bottom[0], left[1] : right[0]].all()  # bottom edge
        inside = white[top[1] + thick : bottom[0] - thick, left[1] + thick : right[0] - thick]
        assert inside.size and not inside.any()
    # maps draws the layer's cells that cover the photo: 16 × 48 over the padded 32 × 96.
    done = CliRunner().invoke(
        app,
        ["maps", "-m", f"{EXAMPLE}:build", str(tmp_path / "scene.png"), *sized, "-l", FINE,
         "--save-raw", "--json", "-o", str(tmp_path / "maps")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    [raw] = [p for p in json.loads(done.stdout)["outputs"] if p.endswith(".npy")]
    assert np.load(raw).shape == (32, 16, math.ceil(48 * covered / 96))


def test_boxes_are_chosen_by_min_score_top_k_and_target(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    _photo(tmp_path / "scene.png", (64, 128))

    def run(*options: str) -> dict:
        done = CliRunner().invoke(
            app,
            ["cam", "-m", f"{EXAMPLE}:build", str(tmp_path / "scene.png"), "--json",
             "-o", str(tmp_path / "out"), *options],
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    both = run()
    scores = [d["probability"] for d in both["predictions"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True) and min(scores) >= 0.5
    assert [Path(p).name.split("_")[0] for p in both["outputs"]] == ["box1", "box2"]
    best = run("--top-k", "1")
    assert best["predictions"] == both["predictions"][:1] and len(best["outputs"]) == 1
    disc = run("--target", "disc")
    assert [d["label"] for d in disc["predictions"]] == ["disc"]
    assert [Path(p).name for p in disc["outputs"]] == ["box1_2_disc.png"]
    above = run("--min-score", str(round(max(scores) + 0.001, 3)))
    assert above["predictions"] == [] and above["outputs"] == []
    every = run("-M", "eigencam")  # class-agnostic: one map, every box drawn
    assert [Path(p).name for p in every["outputs"]] == ["all.png"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["resolved"]["boxes"] == {"min_score": 0.5, "top_k": None}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["score"], "Error: score does not take detection models yet: their targets are boxes, "
         "which move when the image or the model is perturbed"),
        (["cam", "-M", "cam"], "Error: method cam cannot explain a detection model's boxes"),
    ],
)  # fmt: skip
def test_what_a_detector_cannot_be_asked_is_a_usage_error(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments, message
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    _photo(tmp_path / "scene.png", (32, 64))
    command, *options = arguments
    done = CliRunner().invoke(
        app, [command, "-m", f"{EXAMPLE}:build", str(tmp_path / "scene.png"), *options]
    )
    assert done.exit_code == 2
    assert done.stderr.splitlines()[0] == message


def test_min_score_on_a_classifier_is_a_usage_error(tiny_model_file: Path, tmp_path: Path) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    done = CliRunner().invoke(
        app, ["cam", "-m", f"{tiny_model_file}:build", str(tmp_path / "a.png"), "--min-score", ".3"]
    )
    assert done.exit_code == 2
    assert done.stderr.splitlines()[0].startswith("Error: --min-score: ")
    assert "is not a detection model" in done.stderr


def test_torchvision_detectors_by_name_download_nothing(torch_home: Path, tmp_path: Path) -> None:
    """torch_home is an empty cache and there is no network: a builder that fetched its
    ImageNet backbone would fail here. Random weights find no box: eigencam still maps."""
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    photo = tmp_path / "photo.png"
    Image.open(ROOT / "sample_images" / "chelsea.png").resize((160, 120)).save(photo)
    done = CliRunner().invoke(
        app,
        ["cam", "-m", name, "--weights", "none", str(photo), "--json", "-M", "gradcam",
         "-M", "eigencam", "-o", str(tmp_path / "out")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    line = json.loads(done.stdout)
    assert line["predictions"] == []
    [overlay] = line["outputs"]
    assert overlay.endswith("/cam/eigencam/backbone.body.16/all.png")
    assert Image.open(overlay).size == (160, 120)
    assert not torch_home.exists() or not any(torch_home.rglob("*.pth"))
    missing = CliRunner().invoke(app, ["cam", "-m", name, str(photo)])
    assert missing.exit_code == 1
    assert "are not cached and cannot be downloaded" in missing.stderr
    layers = CliRunner().invoke(app, ["layers", "-m", name])
    assert layers.exit_code == 0
    rows = {row.split()[0]: row for row in layers.stdout.splitlines()[2:]}
    assert "← default cam layer" in rows["backbone.body.16"]
    # The FPN's levels, a dict: each entry is a layer of its own.
    assert "a dict: tap an entry as backbone:KEY (below)" in rows["backbone"]
    assert rows["backbone:pool"].split()[1:4] == ["BackboneWithFPN['pool']", "256×5×5", "0"]
    maps = CliRunner().invoke(
        app,
        ["maps", "-m", name, "--weights", "none", str(photo), "-l", "backbone:0", "--json",
         "-o", str(tmp_path / "maps")],
    )  # fmt: skip
    assert maps.exit_code == 0, maps.output
    [grid] = json.loads(maps.stdout)["outputs"]
    assert grid.endswith("/maps/backbone_0.png") and Image.open(grid).size[0] > 0
    models = CliRunner().invoke(app, ["models", "rcnn_mobilenet"])
    assert models.stdout.splitlines()[1:] == [
        "fasterrcnn_mobilenet_v3_large_320_fpn  COCO_V1",
        "fasterrcnn_mobilenet_v3_large_fpn      COCO_V1",
    ]


RCNN = "fasterrcnn_mobilenet_v3_large_320_fpn"  # random weights: every box scores ~1/91


def test_a_min_score_below_the_models_own_lowers_it_for_that_run_only(torch_home: Path) -> None:
    """The R-CNN drops boxes under 0.05 itself: --min-score 0 lowers that while featviz runs
    it (not the region proposals' threshold), and puts it back for the next run."""
    loaded = load_model(ModelRequest(RCNN, weights="none", device="cpu"))
    model = loaded.module
    model.rpn.score_thresh = 0.01  # objectness (~0.5 here), not a class score: left alone
    inputs = torch.rand(1, 3, 120, 160, generator=torch.Generator().manual_seed(0))
    layer = loaded.default_cam_layer()

    def explain(**options) -> list:
        explainer = Explainer(loaded, ("gradcam",), [layer], [], cam_batch_size=8, **options)
        return explainer.explain(inputs)

    low = explain(top_k=2, min_score=0.0)
    scores = [found.probability for found in low.predictions[0]]
    assert len(scores) == 2 and max(scores) < 0.05, scores
    assert len(low.maps[0]) == 2 and low.notes == {}
    assert (model.roi_heads.score_thresh, model.rpn.score_thresh) == (0.05, 0.01)
    default = explain(top_k=None)
    assert default.predictions == [[]] and default.maps == [[]]
    assert default.notes == {0: "no box scores at least 0.5"}
    assert not loaded.task.latest.valid.any()  # the model's own 0.05 dropped every box again


def test_an_image_without_a_box_says_so(torch_home: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.open(ROOT / "sample_images" / "chelsea.png").resize((160, 120)).save(photo)
    for command in ("cam", "compare"):
        done = CliRunner().invoke(
            app,
            [command, "-m", RCNN, "--weights", "none", str(photo), "-M", "gradcam",
             "-o", str(tmp_path / command)],
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        assert (
            done.stdout.splitlines()[0]
            == f"{photo}: no box scores at least 0.5: nothing to explain"
        )
        assert not list((tmp_path / command).rglob("*.png"))
    done = CliRunner().invoke(
        app,
        ["cam", "-m", RCNN, "--weights", "none", str(photo), "--json", "--target", "dog",
         "-M", "gradcam", "-M", "eigencam", "-o", str(tmp_path / "json")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    line = json.loads(done.stdout)
    assert line["note"] == "no dog box scores at least 0.5" and line["predictions"] == []
    [overlay] = line["outputs"]  # eigencam maps the image all the same, boxes or not
    assert Path(overlay).name == "all.png"
    [record] = (tmp_path / "json" / "records").rglob("*.json")
    assert json.loads(record.read_text())["note"] == "no dog box scores at least 0.5"
    again = CliRunner().invoke(
        app,
        ["cam", "-m", RCNN, "--weights", "none", str(photo), "--json", "--target", "dog",
         "-M", "gradcam", "-M", "eigencam", "-o", str(tmp_path / "json"), "--skip-existing"],
    )  # fmt: skip
    line = json.loads(again.stdout)
    assert line["skipped"] and line["note"] == "no dog box scores at least 0.5"


def test_the_detection_batch_boxes_its_objects() -> None:
    """The training targets: every object's box is the bounding box of its pixels."""
    images, targets = detection_batch(8, torch.Generator().manual_seed(1))
    assert images.shape == (8, 3, HEIGHT, WIDTH) and images.min() >= 0 and images.max() <= 1
    for target in targets:
        assert 1 <= len(target["boxes"]) <= 2
        assert ((target["boxes"][:, 2:] - target["boxes"][:, :2]) >= 10).all()


def test_a_dict_entry_is_tapped_like_the_module_that_made_it(tmp_path: Path) -> None:
    """fcn_resnet50's backbone returns {"out": layer4's output}: a map at ``backbone:out`` is
    the map at ``backbone.layer4``, value for value."""
    loaded = load_model(ModelRequest("fcn_resnet50", weights="none", input_size=64, device="cpu"))
    inputs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = {}
    for layer in ("backbone:out", "backbone.layer4"):
        explainer = Explainer(loaded, ("gradcam", "eigencam"), [layer], [4], top_k=None,
                              cam_batch_size=8)  # fmt: skip
        maps[layer] = [entry.layer_cam for entry in explainer.explain(inputs).maps[0]]
    assert len(maps["backbone:out"]) == 2
    for tapped, module in zip(maps["backbone:out"], maps["backbone.layer4"]):
        assert float(tapped.abs().max()) > 0
        assert torch.allclose(tapped, module, rtol=1e-5, atol=1e-7)
