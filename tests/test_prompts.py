"""Text prompts as targets: a CLIP-style model's map of a prompt is the map of scale · cos(image,
prompt) + bias; a tiny two-tower model trained here on shapes and their captions, where the
right answer is known; open_clip's models by name, offline, with random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, example_cache
from PIL import Image
from shapes_clip import COLOURS, ShapesClip, trained_clip
from synthetic_shapes import CLASSES, HEIGHT, WIDTH, batch, scene, two_object_scenes
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.explainer.batch import Explainer
from featviz.explainer.options import ExplainRequest
from featviz.model.load import load_model
from featviz.model.options import ModelRequest
from featviz.run.resolve import resolve_explaining

EXAMPLE = ROOT / "examples" / "shapes_clip.py"
PROMPTS = [f"a {colour} {shape}" for colour, shape in zip(COLOURS, CLASSES)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return example_cache(tmp_path_factory, "shapes_clip", trained_clip)


@pytest.fixture
def clip(cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return load_model(ModelRequest(f"{EXAMPLE}:build", device="cpu"))


def _prompted(loaded, prompts: list[str]):
    """``loaded`` scored against ``prompts`` as `featviz cam -t "text:…"` resolves it."""
    request = ExplainRequest(targets=tuple(f"text:{prompt}" for prompt in prompts))
    return resolve_explaining("cam", request, loaded)


def _raw(loaded) -> ShapesClip:
    """The example's module without featviz's hooks, its parameters differentiable."""
    raw = ShapesClip()
    raw.load_state_dict(loaded.module.state_dict())
    return raw.eval()


def test_the_two_towers_learned_the_captions(clip) -> None:
    """Every caption of every held-out scene on the right side of the sigmoid's 0."""
    x, labels = batch(128, torch.Generator().manual_seed(99))
    with torch.no_grad():
        logits = _raw(clip).logits(x, PROMPTS)
    assert ((logits > 0).float() == labels).all(dim=1).float().mean() > 0.97


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_maps_match_a_recomputation_on_the_similarity(clip, method: str) -> None:
    prompted, resolved = _prompted(clip, [PROMPTS[0], PROMPTS[2]])
    assert resolved.targets == [0, 1] and prompted.categories == [PROMPTS[0], PROMPTS[2]]
    inputs = torch.cat([image for image, _, _ in two_object_scenes(4, seed=3)])
    explainer = Explainer(prompted, (method,), ["visual"], resolved.targets, top_k=None,
                          cam_batch_size=8)  # fmt: skip
    explained = explainer.explain(inputs)
    raw = _raw(clip)
    taken = {}
    raw.visual.register_forward_hook(lambda module, args, output: taken.update(a=output))
    logits = raw.logits(inputs, [PROMPTS[0], PROMPTS[2]])
    for column in range(2):
        (grads,) = torch.autograd.grad(logits[:, column].sum(), taken["a"], retain_graph=True)
        acts = taken["a"].detach()
        if method == "gradcam":
            expected = (grads.mean((2, 3), keepdim=True) * acts).sum(1).clamp(min=0)
        elif method == "hirescam":  # signed: the ReLU comes with the heatmap
            expected = (grads * acts).sum(1)
        else:
            expected = (grads.clamp(min=0) * acts).sum(1).clamp(min=0)
        for i in range(4):
            got = explained.maps[i][column].layer_cam
            assert torch.allclose(got, expected[i], atol=1e-4 * float(expected[i].abs().max()))
    # What is shown beside a -t "text:…" prompt is the cosine similarity itself.
    cosine = (logits.detach() - raw.bias) / raw.log_scale.exp()
    shown = [[entry.probability for entry in maps] for maps in explained.maps]
    torch.testing.assert_close(torch.tensor(shown), cosine.detach(), rtol=0, atol=1e-5)


def test_scorecam_matches_pytorch_grad_cam_on_the_prompts_logits(clip) -> None:
    """``visual.1`` has the input's resolution, so both ways of upsampling the masks agree."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from featviz.cam import normalise

    prompted, _ = _prompted(clip, PROMPTS)
    inputs = torch.cat([image for image, _, _ in two_object_scenes(2, seed=8)])
    explainer = Explainer(prompted, ("scorecam",), ["visual.1"], [1], top_k=None,
                          cam_batch_size=16)  # fmt: skip
    ours = normalise(torch.stack([maps[0].layer_cam for maps in explainer.explain(inputs).maps]))
    raw = _raw(clip).requires_grad_(True)

    class Logits(torch.nn.Module):  # their model: images → (N, prompts) logits
        def __init__(self) -> None:
            super().__init__()
            self.clip = raw

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.clip.logits(images, PROMPTS)

    wrapped = Logits()
    cam = ScoreCAM(model=wrapped, target_layers=[raw.visual[1]])
    cam.get_target_width_height = lambda input_tensor: (WIDTH, HEIGHT)
    with cam:
        theirs = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(1)] * 2)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=5e-4)


def test_each_prompt_lights_up_its_own_shape(clip) -> None:
    """Two shapes per composite, one per half: the share of each present shape's prompt's
    Grad-CAM mass on its own half, over 40 held-out composites."""
    from featviz.cam import heatmap

    prompted, _ = _prompted(clip, PROMPTS)
    explainer = Explainer(prompted, ("gradcam",), ["visual"], [], top_k=1, cam_batch_size=8)
    shares = []
    for image, left, right in two_object_scenes(40, seed=11):
        for half, kind in ((0, left), (1, right)):
            [entry] = explainer.explain(image, targets=torch.tensor([[kind]])).maps[0]
            values = heatmap(entry.layer_cam, (HEIGHT, WIDTH))
            own = values[:, half * WIDTH // 2 : (half + 1) * WIDTH // 2].sum()
            shares.append(float(own / values.sum()))
    mean, most = float(np.mean(shares)), float(np.mean([share > 0.5 for share in shares]))
    print(f"prompt Grad-CAM on its own shape's half: mean {mean:.2f}, majority in {most:.2f}")
    assert mean > 0.85 and most > 0.9, (mean, most)


def _scene_file(folder: Path, scale: int = 8) -> Path:
    """A red square left, a blue cross right, ``scale`` × larger than 32 × 64."""
    picture = scene([(0, 0), (1, 2)], torch.Generator().manual_seed(5))
    pixels = (picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path = folder / "scene.png"
    Image.fromarray(np.kron(pixels, np.ones((scale, scale, 1), dtype=np.uint8))).save(path)
    return path


def test_prompts_file_is_a_zero_shot_classifier(cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(tmp_path)
    Path("prompts.txt").write_text("\n".join([*PROMPTS, "", PROMPTS[0]]) + "\n")
    done = CliRunner().invoke(
        app, ["cam", "-m", f"{EXAMPLE}:build", "--prompts", "prompts.txt", "--top-k", "2",
              "--json", str(_scene_file(tmp_path))],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    line = json.loads(done.stdout)
    shown = {p["label"]: p["probability"] for p in line["predictions"]}
    assert set(shown) == set(PROMPTS) and abs(sum(shown.values()) - 1) < 1e-4
    assert [p["label"] for p in line["predictions"][:2]] == [PROMPTS[0], PROMPTS[2]]
    names = sorted(Path(path).name for path in line["outputs"])
    assert names == ["0_a_red_square.png", "2_a_blue_cross.png"]
    assert all(Path(path).is_file() for path in line["outputs"])


@pytest.mark.parametrize("command", ["compare", "score", "sanity"])
def test_the_judging_commands_take_prompts(
    command: str, cache: Path, tmp_path: Path, monkeypatch
) -> None:
    """Each runs with two prompts; score's rows are the prompts' (its reference maps too)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(tmp_path)
    methods = ["-M", "gradcam"] if command == "score" else ["-M", "gradcam", "-M", "scorecam"]
    steps = ["--steps", "8", "--input-size", "16"] if command == "score" else []
    done = CliRunner().invoke(
        app, [command, "-m", f"{EXAMPLE}:build", *methods, "-t", f"text:{PROMPTS[0]}",
              "-t", f"text:{PROMPTS[1]}", *steps, "--json", str(_scene_file(tmp_path, scale=1))],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    if command == "score":
        rows = {(row["method"], row["label"]) for row in lines}
        assert rows == {(m, p) for m in ("gradcam", "random", "center") for p in PROMPTS[:2]}
        square = {row["method"]: row for row in lines if row["label"] == PROMPTS[0]}
        # Deleting the pixels Grad-CAM ranks first removes the square sooner than at random.
        assert square["gradcam"]["deletion_auc"] < square["random"]["deletion_auc"]
    elif command == "sanity":  # the text tower, which the forward never runs, stays out
        steps = [
            r["randomized"]
            for r in lines
            if (r["method"], r["target"]) == ("gradcam", "0_a_red_square")
        ]
        assert steps == ["none", "project", "visual.4", "visual.2", "visual.0"]
    else:
        [line] = lines
        assert line["outputs"] and all(Path(path).is_file() for path in line["outputs"])


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["-m", "TINY", "-t", "text:a cat"],
         "Error: -t text:…: TINY has no text tower to read prompts with"),
        (["-m", "CLIP"], "Error: CLIP compares images with text: say what to look for"),
        (["-m", "CLIP", "-t", "text:a cat", "--prompts", "prompts.txt"],
         "Error: -t text:… and --prompts exclude each other"),
        (["-m", "CLIP", "-t", "text:a cat", "-t", "0"],
         "Error: -t text:…: once one target is a text prompt, all must be, none empty"),
        (["-m", "CLIP", "--prompts", "one.txt"],
         "Error: --prompts one.txt: 1 prompt(s); a zero-shot classifier needs two or more"),
    ],
)  # fmt: skip
def test_prompt_mistakes_are_usage_errors(
    arguments: list[str], error: str, tiny_model_file: Path, cache: Path, tmp_path: Path,
    monkeypatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(tmp_path)
    Path("prompts.txt").write_text("a cat\na dog\n")
    Path("one.txt").write_text("a cat\n\na cat\n")
    models = {"TINY": f"{tiny_model_file}:build", "CLIP": f"{EXAMPLE}:build"}
    arguments = [models.get(a, a) for a in arguments]
    error = error.replace("TINY", models["TINY"]).replace("CLIP", models["CLIP"])
    done = CliRunner().invoke(app, ["cam", *arguments, str(_scene_file(tmp_path))])
    assert done.exit_code == 2, done.output
    assert done.stderr.splitlines()[0] == error
    assert not Path("featviz-out").exists()


def test_score_needs_two_prompts(cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    done = CliRunner().invoke(
        app, ["score", "-m", f"{EXAMPLE}:build", "-t", "text:a cat", str(_scene_file(tmp_path))]
    )
    assert done.exit_code == 2
    assert done.stderr.splitlines()[0] == (
        "Error: score measures how the prompts' probabilities move, and one prompt has none"
    )


@pytest.fixture(scope="module")
def vit_b32_like():
    """OpenCLIP's smallest ViT with 32-pixel patches, random weights: nothing downloaded, its
    tokenizer the one the package ships."""
    return load_model(ModelRequest("open_clip/ViT-S-32", weights="none", device="cpu"))


def test_open_clip_vit_tower_maps_match_a_recomputation(vit_b32_like, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a tokenizer that needed the hub would fail
    prompts = ["a photo of a cat", "a cup of coffee"]
    prompted, resolved = _prompted(vit_b32_like, prompts)
    layer = "visual.transformer.resblocks.11.ln_1"  # where the class token reads the patches
    assert resolved.layers == [layer] and vit_b32_like.trace.size_step is None  # 224 only
    inputs = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    explainer = Explainer(prompted, ("gradcam", "gradrollout", "legrad"), [layer], [0, 1],
                          top_k=None, cam_batch_size=8)  # fmt: skip
    explained = explainer.explain(inputs)
    module = vit_b32_like.module
    taken = {}
    tapped = module.get_submodule(layer)
    handle = tapped.register_forward_hook(lambda m, args, output: taken.update(a=output))
    try:
        images = torch.nn.functional.normalize(module(inputs.requires_grad_(True)), dim=1)
    finally:
        handle.remove()
    with torch.no_grad():
        texts = torch.nn.functional.normalize(module.encode_text(prompts), dim=1)
    logits = images @ texts.T * module.logit_scale + module.logit_bias
    for column in range(2):
        (grads,) = torch.autograd.grad(logits[:, column].sum(), taken["a"], retain_graph=True)
        grads, acts = grads[:, 1:], taken["a"].detach()[:, 1:]  # the class token dropped
        expected = (grads.mean(1, keepdim=True) * acts).sum(2).clamp(min=0).reshape(2, 7, 7)
        for i in range(2):
            gradcam, rollout = explained.maps[i][column], explained.maps[i][2 + column]
            assert (gradcam.method, rollout.method) == ("gradcam", "gradrollout")
            got = gradcam.layer_cam
            assert torch.allclose(got, expected[i], atol=1e-4 * float(expected[i].abs().max()))
            assert rollout.layer_cam.shape == (7, 7) and rollout.layer_cam.isfinite().all()
    assert not torch.allclose(explained.maps[0][2].layer_cam, explained.maps[0][3].layer_cam)
    expected = _legrad_recomputed(module, inputs, texts)
    for i in range(2):
        for column in range(2):
            legrad = explained.maps[i][4 + column]
            assert legrad.method == "legrad" and float(expected[column][i].amax()) > 0
            torch.testing.assert_close(
                legrad.layer_cam,
                expected[column][i],
                rtol=1e-3,
                atol=1e-4 * float(legrad.layer_cam.amax()),
            )


def _legrad_recomputed(module, inputs, texts) -> list[torch.Tensor]:
    """LeGrad on the similarity score as its authors compute it for CLIP: per block, the image
    embedding of the block's mean token (ln_post, projection, unit length) scored against each
    prompt, one backward per block and prompt, positive gradients averaged over heads and
    queries, the class token's column dropped, then averaged over the blocks."""
    from featviz.layers.attention import AttentionCapture

    visual = module.visual
    blocks = list(visual.transformer.resblocks)
    tokens = []
    handles = [b.register_forward_hook(lambda m, i, o: tokens.append(o)) for b in blocks]
    try:
        with AttentionCapture(visual) as capture:
            visual(inputs)
    finally:
        for handle in handles:
            handle.remove()
    maps = []
    for text in texts:
        per_block = []
        for z, a in zip(tokens, capture.maps):
            image = torch.nn.functional.normalize(
                visual.ln_post(z.mean(dim=1)) @ visual.proj, dim=1
            )
            score = (image @ text * module.logit_scale + module.logit_bias).sum()
            (grad,) = torch.autograd.grad(score, a, retain_graph=True)
            per_block.append(grad.clamp(min=0).mean(dim=(1, 2))[:, 1:])
        maps.append(torch.stack(per_block).mean(dim=0).reshape(-1, 7, 7))
    return maps


@pytest.fixture(scope="module")
def tiny_hf_clip(tmp_path_factory) -> Path:
    """A local hf:DIR of a tiny CLIP: its config and a tokenizer of single letters (no merges:
    every word is spelt out), nothing downloaded."""
    from transformers import CLIPConfig, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["<|startoftext|>", "<|endoftext|>", *letters, *(f"{c}</w>" for c in letters)]
    (folder / "vocab.json").write_text(json.dumps({word: i for i, word in enumerate(words)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    text = {"vocab_size": len(words), "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
            "max_position_embeddings": 24}  # fmt: skip
    layers = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
              "num_attention_heads": 4}  # fmt: skip
    vision = {**layers, "image_size": 32, "patch_size": 8}
    CLIPConfig(
        text_config={**text, **layers}, vision_config=vision, projection_dim=16
    ).save_pretrained(folder)
    return folder


def test_hf_clip_maps_match_a_recomputation(tiny_hf_clip: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(ModelRequest(f"hf:{tiny_hf_clip}", weights="none", device="cpu"))
    prompts = ["a cat", "a cup of coffee"]
    prompted, resolved = _prompted(loaded, prompts)
    [layer] = resolved.layers
    assert layer == "model.vision_model.encoder.layers.1.layer_norm1"
    inputs = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))  # 4 × 6
    explainer = Explainer(prompted, ("gradcam",), [layer], [0, 1], top_k=None, cam_batch_size=8)
    explained = explainer.explain(inputs)
    clip = loaded.module.model
    taken = {}
    handle = clip.get_submodule(layer.removeprefix("model.")).register_forward_hook(
        lambda m, args, output: taken.update(a=output)
    )
    try:
        images = clip.get_image_features(
            pixel_values=inputs.requires_grad_(True), interpolate_pos_encoding=True
        ).pooler_output
    finally:
        handle.remove()
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(tiny_hf_clip)(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        texts = clip.get_text_features(**tokens).pooler_output
    cosine = torch.nn.functional.cosine_similarity(images[:, None], texts[None], dim=2)
    logits = cosine * clip.logit_scale.exp()
    for column in range(2):
        (grads,) = torch.autograd.grad(logits[:, column].sum(), taken["a"], retain_graph=True)
        grads, acts = grads[:, 1:], taken["a"].detach()[:, 1:]  # the class token dropped
        expected = (grads.mean(1, keepdim=True) * acts).sum(2).clamp(min=0).reshape(2, 4, 6)
        for i in range(2):
            got = explained.maps[i][column].layer_cam
            assert torch.allclose(got, expected[i], atol=1e-4 * float(expected[i].abs().max()))
            assert explained.maps[i][column].probability == pytest.approx(
                float(cosine[i, column].detach()), abs=1e-5
            )


def test_the_library_takes_prompts(cache: Path, tmp_path: Path, monkeypatch) -> None:
    import featviz

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    image = _scene_file(tmp_path, scale=1)
    one = featviz.explain(f"{EXAMPLE}:build", image, target=f"text:{PROMPTS[2]}")
    assert (one.index, one.label, one.heatmap.shape) == (0, PROMPTS[2], (HEIGHT, WIDTH))
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    top = featviz.explain(f"{EXAMPLE}:build", image, prompts=tmp_path / "prompts.txt", top_k=2)
    assert [entry.label for entry in top] == [PROMPTS[0], PROMPTS[2]]
    # The cross's map sits on the right half, where the cross is.
    assert one.heatmap[:, WIDTH // 2 :].sum() > one.heatmap[:, : WIDTH // 2].sum()


def test_open_clip_layers_need_no_weights_and_show_the_text_tower_idle() -> None:
    done = CliRunner().invoke(app, ["layers", "-m", "open_clip/ViT-S-32", "--weights", "none"])
    assert done.exit_code == 0, done.output
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "visual.transformer.resblocks.11.ln_1" in rows
    assert rows["text.token_embedding"].endswith("not run in forward")
