"""The perturbation and pixel-level methods on a video model's clips: masks over (T, H, W)
brought from the layer's (t, h, w) trilinearly, gradients per voxel with the colour channels
summed into a (T, H, W) map, occlusion boxes of frames × pixels; equal to captum where it takes
5-D input, else to a recomputation by the formula."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VIDEO_MODEL, bar_frames, write_video
from typer.testing import CliRunner

from featviz.cam import forward_for_cam
from featviz.cam.methods import pixel
from featviz.cli.app import app
from featviz.explainer.batch import Explainer
from featviz.model.load import load_model
from featviz.model.options import ModelRequest

TARGET = 2
# Two clips of the model's 4 frames, of 48 × 48: occlusion's 32-pixel squares every 16 pixels
# through the 4 frames make 2 × 2 boxes, as captum's sliding windows do.
CLIPS = torch.randn(2, 3, 4, 48, 48, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny3d(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny3d") / "tiny3d.py"
    path.write_text(TINY_VIDEO_MODEL)
    return load_model(ModelRequest(f"{path}:build", device="cpu"))


def _maps(model, methods: tuple[str, ...], layer: str = "2") -> dict[str, torch.Tensor]:
    explainer = Explainer(model, methods, [layer], [TARGET], top_k=None, cam_batch_size=16)
    rows = explainer.explain(CLIPS).maps
    return {
        entry.method: torch.stack([row[i].layer_cam for row in rows])
        for i, entry in enumerate(rows[0])
    }


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to float32 summation-order noise, relative to the map's largest value."""
    assert ours.shape == theirs.shape and theirs.abs().amax() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().amax()))


def _captum(attribution, **options) -> torch.Tensor:
    leaf = CLIPS.clone().requires_grad_()
    targets = torch.full((len(CLIPS),), TARGET)
    return attribution.attribute(leaf, target=targets, **options).detach().sum(dim=1)


def test_the_pixel_methods_on_clips_equal_captums(tiny3d) -> None:
    import captum.attr as ca

    net = tiny3d.module
    names = ("saliency", "inputxgradient", "integratedgradients", "guidedbackprop")
    ours = _maps(tiny3d, (*names, "deconvolution", "occlusion"))
    assert ours["saliency"].shape == (2, 4, 48, 48)
    _close(ours["saliency"], _captum(ca.Saliency(net)))
    _close(ours["inputxgradient"], _captum(ca.InputXGradient(net)))
    _close(ours["integratedgradients"], _captum(ca.IntegratedGradients(net)))
    _close(ours["guidedbackprop"], _captum(ca.GuidedBackprop(net)))
    _close(ours["deconvolution"], _captum(ca.Deconvolution(net)))
    window, stride = pixel.OCCLUSION_WINDOW, pixel.OCCLUSION_STRIDE
    frames, every = pixel.OCCLUSION_FRAMES, pixel.OCCLUSION_FRAME_STRIDE
    occluded = _captum(
        ca.Occlusion(net),
        sliding_window_shapes=(3, frames, window, window),
        strides=(3, every, stride, stride),
    )
    _close(ours["occlusion"], occluded / 3)  # the same in each colour channel


def test_smoothgrad_on_clips_averages_the_gradients_at_each_clips_own_noise(tiny3d) -> None:
    ours = _maps(tiny3d, ("smoothgrad",))["smoothgrad"]
    ctx = forward_for_cam(tiny3d.module, CLIPS, [], gradients=False)
    ctx.seeds = (0, 1)  # the Explainer's: --seed 0 and each clip's place in the run
    expected = []
    for i in range(len(CLIPS)):
        noisy = (CLIPS[i] + pixel.smoothgrad_noise(ctx, i)).requires_grad_()
        assert noisy.shape == (pixel.SMOOTHGRAD_SAMPLES, 3, 4, 48, 48)
        with torch.enable_grad():
            [grads] = torch.autograd.grad(tiny3d.module(noisy)[:, TARGET].sum(), noisy)
        expected.append(grads.mean(dim=0).sum(dim=0))
    _close(ours, torch.stack(expected))


def _layer(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 2's (N, 6, 2, 24, 24) output for ``x`` and the gradient of the target's score."""
    taken = {}
    handle = model.module[2].register_forward_hook(
        lambda m, i, o: taken.setdefault("a", o.detach().requires_grad_())
    )
    try:
        with torch.enable_grad():
            [grads] = torch.autograd.grad(model.module(x)[:, TARGET].sum(), taken["a"])
    finally:
        handle.remove()
    return taken["a"].detach(), grads


def _to_clip(maps: torch.Tensor) -> torch.Tensor:
    """(B, t, h, w) → the clips' (B, T, H, W), trilinear."""
    return F.interpolate(maps[:, None], size=CLIPS.shape[2:], mode="trilinear")[:, 0]


def test_scorecam_iscam_and_guidedgradcam_on_clips_are_their_3d_formulas(tiny3d) -> None:
    ours = _maps(tiny3d, ("scorecam", "iscam", "guidedbackprop", "guidedgradcam"))
    activations, grads = _layer(tiny3d, CLIPS)
    assert activations.shape == (2, 6, 2, 24, 24)
    masks = _to_clip(activations.flatten(0, 1))  # (N·K, T, H, W), each channel's
    low = masks.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = masks.flatten(1).amax(1).view(-1, 1, 1, 1)
    masks = ((masks - low) / (high - low + 1e-8)).unflatten(0, (2, 6))
    with torch.no_grad():
        scores = torch.stack(
            [tiny3d.module(CLIPS * masks[:, k, None])[:, TARGET] for k in range(6)], dim=1
        )
    weights = scores.softmax(dim=1)[:, :, None, None, None]
    _close(ours["scorecam"], (weights * activations).sum(dim=1).clamp(min=0))
    # IS-CAM scales each channel over its (t, h, w) first, then brings it to the clip; its
    # masked clips scaled by Σ_{j≤s} j/S, s = 1…S = 10.
    flat = activations.flatten(2)
    low, high = flat.amin(2)[..., None, None, None], flat.amax(2)[..., None, None, None]
    masks = _to_clip(((activations - low) / (high - low + 1e-8)).flatten(0, 1)).unflatten(0, (2, 6))
    steps = torch.arange(1, 11.0)
    with torch.no_grad():
        scaled_scores = [
            sum(
                tiny3d.module(c * CLIPS * masks[:, k, None])[:, TARGET]
                for c in steps.cumsum(0) / 10
            )
            for k in range(6)
        ]
    weights = (torch.stack(scaled_scores, dim=1) / 10).softmax(dim=1)[:, :, None, None, None]
    _close(ours["iscam"], (weights * activations).sum(dim=1).clamp(min=0))
    gradcam = (grads.mean(dim=(2, 3, 4), keepdim=True) * activations).sum(dim=1).clamp(min=0)
    scaled = _to_clip(gradcam)
    scaled = scaled / scaled.flatten(1).amax(1).view(-1, 1, 1, 1)  # its minimum is 0 here
    assert scaled.flatten(1).amin(1).eq(0).all()
    _close(ours["guidedgradcam"], ours["guidedbackprop"] * scaled)


def test_occlusion_boxes_cover_every_voxel_of_a_clip() -> None:
    boxes = pixel.occlusion_windows((8, 48, 48), torch.device("cpu"))
    assert boxes.shape == (3 * 2 * 2, 8, 48, 48)  # frames 0–3, 2–5, 4–7 × 2 × 2 squares
    assert boxes.flatten(1).sum(1).eq(4 * 32 * 32).all() and boxes.sum(0).min() >= 1
    assert torch.equal(boxes[4, 2:6, :32, :32], torch.ones(4, 32, 32))


def test_methods_written_for_pictures_are_refused_on_clips_by_name(tmp_path: Path) -> None:
    (tmp_path / "tiny3d.py").write_text(TINY_VIDEO_MODEL)
    video = write_video(tmp_path / "bar.mp4", bar_frames(4, 16, 16), "libx264")
    for method in ("lrp", "fullgrad", "legrad"):
        done = CliRunner().invoke(
            app,
            [
                "cam",
                "-m",
                f"{tmp_path / 'tiny3d.py'}:build",
                "-M",
                method,
                "-o",
                str(tmp_path / "o"),
                str(video),
            ],
        )
        assert done.exit_code == 2
        assert (
            done.stderr.splitlines()[0] == f"Error: --method {method} does not take video clips yet"
        )
    assert not (tmp_path / "o").exists()
