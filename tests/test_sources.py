"""Models by name from timm (``timm/NAME``) and Hugging Face (``hf:REPO`` / ``hf:DIR``): built
offline with ``--weights none``, pretrained weights from the hub's cache (a fake one here, in a
temporary folder), one clear line when they are missing, the pip command when a library is."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import transformers
from conftest import image_folder
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from featviz.cli.app import app

TIMM_TAGGED = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache, offline: nothing is downloaded, nothing real is read."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _cache_file(cache: Path, repo: str, name: str) -> Path:
    """Where the hub keeps ``name`` of ``repo``, with the ref that points at it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_timm_model_with_weights_none_builds_offline(
    photo: Path, tmp_path: Path, hub_cache
) -> None:
    result = invoke(
        "cam", "-m", "timm/vit_tiny_patch16_224", "--weights", "none", photo, "-o", tmp_path / "o"
    )
    assert result.exit_code == 0, result.stderr
    [overlay] = (
        image_folder(tmp_path / "o", "photo") / "cam" / "gradcam" / "blocks.11.norm1"
    ).iterdir()
    assert Image.open(overlay).size == (40, 30)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["model"]["weights"] == "none" and manifest["model"]["input_size"] == 224


def test_timm_pretrained_weights_come_from_the_hub_cache(
    photo: Path, tmp_path: Path, hub_cache: Path
) -> None:
    torch.manual_seed(5)
    saved = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    save_file(
        {k: v.contiguous() for k, v in saved.items()},
        _cache_file(hub_cache, f"timm/{TIMM_TAGGED}", "model.safetensors"),
    )
    from featviz.model.load import load_model
    from featviz.model.options import ModelRequest

    loaded = load_model(ModelRequest(f"timm/{TIMM_TAGGED}", device="cpu"))
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert loaded.weights == "augreg_in21k_ft_in1k"
    assert loaded.preprocessing.interpolation == "bicubic"
    assert loaded.preprocessing.mean == (0.5, 0.5, 0.5)
    assert loaded.category(281) == "tabby"
    result = invoke("cam", "-m", f"timm/{TIMM_TAGGED}", photo, "-o", tmp_path / "o")
    assert result.exit_code == 0, result.stderr


def test_timm_weights_not_cached_offline_is_one_line_and_exit_1(photo: Path, hub_cache) -> None:
    result = invoke("cam", "-m", "timm/vit_small_patch16_224", photo)
    assert result.exit_code == 1
    error, hint = result.stderr.splitlines()
    assert error == (
        "Error: pretrained weights of timm/vit_small_patch16_224 are not cached and cannot be "
        f"downloaded (HF_HUB_OFFLINE is set; cache: {hub_cache})"
    )
    assert hint.startswith("Hint: download them once where there is a network") and (
        "--weights none" in hint
    )


OFFLINE_CASES = {
    "timm/resnet18": "Error: pretrained weights of timm/resnet18 are not cached and cannot be "
    "downloaded (cannot reach http://127.0.0.1:9: ConnectError: [Errno 111] Connection refused; "
    "cache: {cache})",
    "hf:google/vit-base-patch16-224": "Error: hf:google/vit-base-patch16-224: the model is not "
    "cached and cannot be downloaded (cannot reach http://127.0.0.1:9: ConnectError: [Errno 111] "
    "Connection refused; cache: {cache})",
}


@pytest.mark.parametrize("spec", OFFLINE_CASES)
def test_not_cached_and_no_network_fails_in_seconds_without_retrying(
    spec: str, photo: Path, tmp_path: Path
) -> None:
    """The hub client's own backoff retried for a minute before featviz's message came."""
    home = tmp_path / "hf_home"
    env = {**os.environ, "HF_HOME": str(home), "HF_ENDPOINT": "http://127.0.0.1:9"}  # closed
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        env.pop(name, None)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "featviz", "cam", "-m", spec, str(photo), "-o", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - began < 15, done.stderr
    assert done.returncode == 1
    assert "Retrying" not in done.stderr
    error, hint = done.stderr.splitlines()[-2:]
    assert error == OFFLINE_CASES[spec].format(cache=home / "hub")
    assert hint.startswith("Hint: download ") and "--weights none" in hint


def _serve_one_file(url_path: str, data: bytes, requests: list[str]) -> http.server.HTTPServer:
    """A stand-in for the hub on a local port: ``data`` at ``url_path`` with the headers the hub
    client needs, an empty 200 at ``/``, 404 elsewhere; each request noted in ``requests``."""

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            requests.append(f"{self.command} {self.path}")
            found = self.path == url_path
            self.send_response(200 if found or self.path == "/" else 404)
            if found:
                self.send_header("X-Repo-Commit", "1" * 40)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) if found else 0))
            self.end_headers()

        def do_GET(self) -> None:
            self.do_HEAD()
            if self.path == url_path:
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_weights_not_cached_are_downloaded_once_then_read_from_the_cache(
    photo: Path, tmp_path: Path
) -> None:
    torch.manual_seed(3)
    model = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w")
    url_path = "/timm/test_resnet.r160_in1k/resolve/main/model.safetensors"
    requests: list[str] = []
    server = _serve_one_file(url_path, (tmp_path / "w").read_bytes(), requests)
    env = {**os.environ, "HF_HOME": str(tmp_path / "home")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
    command = [sys.executable, "-m", "featviz", "cam", "-m", "timm/test_resnet.r160_in1k"]
    try:
        for out in ("first", "second"):
            done = subprocess.run(
                [*command, str(photo), "-o", out], cwd=tmp_path, env=env, capture_output=True
            )
            assert done.returncode == 0, done.stderr
    finally:
        server.shutdown()
    # One question whether the hub answers, the download; the second call asks nothing.
    assert requests == ["HEAD /", f"HEAD {url_path}", f"GET {url_path}"]
    snapshot = tmp_path / "home/hub/models--timm--test_resnet.r160_in1k/snapshots" / ("1" * 40)
    assert (snapshot / "model.safetensors").read_bytes() == (tmp_path / "w").read_bytes()
    first, second = (sorted((tmp_path / out).rglob("*.png")) for out in ("first", "second"))
    assert len(first) == 1
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]


def test_timm_unknown_names_and_tags_are_usage_errors(photo: Path) -> None:
    unknown = invoke("layers", "-m", "timm/vit_tiny_patch16_22")
    assert unknown.exit_code == 2
    assert unknown.stderr.splitlines()[0] == "Error: unknown timm model 'vit_tiny_patch16_22'"
    assert "'vit_tiny_patch16_224'" in unknown.stderr
    tag = invoke("cam", "-m", "timm/vit_tiny_patch16_224", "--weights", "nope", photo)
    assert tag.exit_code == 2
    assert tag.stderr.splitlines() == [
        "Error: timm model 'vit_tiny_patch16_224' has no pretrained tag 'nope'",
        "Hint: choose one of augreg_in21k, augreg_in21k_ft_in1k, or --weights none",
    ]


@pytest.mark.parametrize(
    ("module", "spec", "extra"), [("timm", "timm/x", "timm"), ("transformers", "hf:x", "hf")]
)
def test_a_missing_library_gives_the_pip_command(
    module: str, spec: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    result = invoke("layers", "-m", spec)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: --model {spec} needs {module}, which is not installed",
        f"Hint: pip install 'featviz[{extra}]'",
    ]


def test_models_lists_timm_names_with_their_tags() -> None:
    result = invoke("models", "--source", "timm", "vit_tiny_patch16_2")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1] == (
        "timm/vit_tiny_patch16_224  augreg_in21k, augreg_in21k_ft_in1k"
    )


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    """A tiny ViT saved as a Hugging Face model folder, with its image-processor config."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "tiger cat"},
        label2id={"cat": 0, "dog": 1, "tiger cat": 2},
    )
    folder = tmp_path / "tiny-vit"
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "resample": 3,
                "size": {"height": 32, "width": 32},
                "do_center_crop": True,
            }
        )
    )
    return folder


def test_hugging_face_folder_runs_with_its_own_names_and_preprocessing(
    hf_folder: Path, photo: Path, tmp_path: Path
) -> None:
    from featviz.model.load import load_model
    from featviz.model.options import ModelRequest

    loaded = load_model(ModelRequest(f"hf:{hf_folder}", device="cpu"))
    assert loaded.categories == ["cat", "dog", "tiger cat"]
    assert loaded.preprocessing.input_size == 32 and loaded.preprocessing.interpolation == "bicubic"
    assert loaded.preprocessing.multiple == 8  # any size, on the 8-pixel patch grid
    assert loaded.default_cam_layer() == "vit.layers.1.layernorm_before"
    out = tmp_path / "o"
    result = invoke(
        "cam",
        "-m",
        f"hf:{hf_folder}",
        "-M",
        "gradcam",
        "-M",
        "gradrollout",
        "-t",
        "tiger",
        "--save-raw",
        photo,
        "-o",
        out,
    )
    assert result.exit_code == 0, result.stderr
    assert "Warning" not in result.stderr  # logits taken without a word: HF's output object
    # 40×30 → shorter side 32 → 43×32 → rounded to the patch grid: 40×32, a 5×4 grid.
    for folder in ("gradcam/vit.layers.1.layernorm_before", "gradrollout/attention"):
        raw = np.load(image_folder(out, "photo") / "cam" / folder / "2_tiger_cat.npz")
        assert raw["layer_cam"].shape == (4, 5) and raw["heatmap"].shape == (30, 40)
    layers = invoke("layers", "-m", f"hf:{hf_folder}")
    assert layers.exit_code == 0
    assert "input: sides that are multiples of 8" in layers.stdout


def test_hugging_face_repo_not_cached_offline_is_exit_1(photo: Path, hub_cache) -> None:
    result = invoke("cam", "-m", "hf:google/vit-base-patch16-224", photo)
    assert result.exit_code == 1
    error = result.stderr.splitlines()[0]
    assert error.startswith(
        "Error: hf:google/vit-base-patch16-224: the model is not cached and cannot be downloaded"
    )
    none = invoke("cam", "-m", "hf:google/vit-base-patch16-224", "--weights", "none", photo)
    assert none.exit_code == 1
    assert "its config (--weights none needs it locally) is not cached" in none.stderr
