"""The GPU check (run by gpu_check.sh on a machine with CUDA, under 5 minutes):

1. agreement: every CAM method's heatmaps from the whole ``featviz cam`` pipeline on CUDA
   against the same run on the CPU (resnet18, random init, the sample photos), max |Δ| per
   method against its tolerance; and the overlays CUDA renders on the GPU
   (featviz.render.device) against the CPU's rendering (featviz.render.draw) of the very heatmaps
   the GPU computed: byte for byte. (The overlays of the two runs differ a little beside
   that, since their heatmaps differ by up to the tolerance: shown, not judged.)
2. throughput: ``featviz cam`` (library path, batches of 32, decode and writing in threads) on
   ``--images`` photos at 640×480 for resnet50 (``layer4``) and vit_b_16 (its default layer),
   fp32 and ``--precision bf16``, against pytorch-grad-cam's and torchcam's documented
   per-image loops on the same GPU (where installed; torchcam has no token layout, so not on
   the ViT), images/s and the ratio;
3. peak GPU memory of each featviz run.

``--device cpu`` runs the same script on the CPU (a smoke test of the script itself).
Usage: python benchmarks/gpu_check.py [--images 256] [--device cuda] [--methods gradcam …]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import SAMPLES, make_photos, table

from featviz.model.options import ModelRequest
from featviz.run.plan import CamRequest, Plan, RunRequest
from featviz.run.prepare import prepare
from featviz.sinks.options import OutputRequest

# Normalised heatmaps in [0, 1]: gradient methods agree to float rounding; the SVD of eigencam
# and the many forwards of the perturbation methods add cuDNN's different summation orders.
TOLERANCES = {
    "gradcam": 1e-3,
    "gradcam++": 1e-3,
    "xgradcam": 1e-3,
    "layercam": 1e-3,
    "hirescam": 1e-3,
    "eigencam": 1e-2,
    "scorecam": 1e-2,
    "ablationcam": 1e-2,
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def heatmaps(device: str, out: Path, methods: list[str]) -> dict[str, np.ndarray]:
    run = prepare(
        Plan(
            "cam",
            ModelRequest("resnet18", weights="none", device=device),
            OutputRequest(out, gallery=False),
            CamRequest(methods=tuple(methods), save_raw=True),
            RunRequest((str(SAMPLES),)),
        )
    )
    results = list(run.results())
    assert all(result.error is None for result in results), [r.error for r in results]
    found = {}
    for path in sorted(out.rglob("*.npz")):
        found[str(path.relative_to(out))] = np.load(path)["heatmap"]
    return found


def overlays(out: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {
        str(path.relative_to(out)): np.asarray(Image.open(path), dtype=np.int16)
        for path in sorted(out.rglob("*.png"))
        if "/cam/" in str(path)
    }


def agreement(device: str, work: Path, methods: list[str]) -> bool:
    cpu = heatmaps("cpu", work / "cpu", methods)
    other = heatmaps(device, work / device, methods)
    assert cpu.keys() == other.keys() and cpu
    rows, passed = [], True
    for method in methods:
        tolerance = TOLERANCES[method]
        worst = max(
            float(np.abs(cpu[key] - other[key]).max())
            for key in cpu
            if f"/cam/{method}/" in f"/{key}"
        )
        ok = worst <= tolerance
        passed &= ok
        rows.append([method, f"{worst:.2e}", f"{tolerance:.0e}", "ok" if ok else "FAILED"])
    print(f"### 1. {device} vs cpu, resnet18, {len(cpu)} heatmaps of the sample photos\n")
    print(table(["method", "max |Δ|", "tolerance", ""], rows))
    cpu_pixels, other_pixels = overlays(work / "cpu"), overlays(work / device)
    assert cpu_pixels.keys() == other_pixels.keys() and cpu_pixels
    changed = [cpu_pixels[key] != other_pixels[key] for key in cpu_pixels]
    share = sum(int(c.sum()) for c in changed) / sum(c.size for c in changed)
    print(
        f"\noverlays of the {device} run vs the CPU run ({len(cpu_pixels)}): {share:.2e} of the "
        "bytes differ, from the heatmaps' differences above (not judged)"
    )
    exact = rendered_alike(work / device, other_pixels)
    verdict = "ok" if exact == len(other_pixels) else "FAILED"
    print(
        f"overlays rendered on {device} vs the CPU's rendering of the same heatmaps: "
        f"{exact} of {len(other_pixels)} byte-identical: {verdict}"
    )
    return passed and exact == len(other_pixels)


def rendered_alike(out: Path, pictures: dict[str, np.ndarray]) -> int:
    """How many of ``pictures`` (overlays a run wrote under ``out``, with --save-raw) equal
    featviz.render.draw's overlay of their own heatmap over their photo, on the CPU."""
    from featviz.inputs.decode import decode
    from featviz.render.draw import colormap_lut, overlay

    lut = colormap_lut("jet")
    photos = {path.stem: np.asarray(decode(path)) for path in SAMPLES.glob("*.[pj][np]g")}
    alike = 0
    for name, pixels in pictures.items():
        heatmap = np.load(out / Path(name).with_suffix(".npz"))["heatmap"]
        photo = photos[Path(name).parts[1]]  # <model>/<image>/cam/<method>/<layer>/<class>.png
        alike += int(np.array_equal(overlay(photo, heatmap, lut=lut, alpha=0.5), pixels))
    return alike


def featviz_rate(model: str, device: str, photos: Path, out: Path, precision: str) -> tuple:
    request = ModelRequest(model, weights="none", device=device, precision=precision)
    run = prepare(
        Plan(
            "cam",
            request,
            OutputRequest(out, gallery=False),
            CamRequest(),
            RunRequest((str(photos),)),
        )
    )
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    results = list(run.results())
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert all(result.error is None for result in results)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")
    return len(results) / seconds, peak


def peer_model(name: str, device: str) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval().to(device)


def vit_tokens_to_maps(tokens: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented reshape for torchvision's ViT: drop the class token."""
    side = int((tokens.shape[1] - 1) ** 0.5)
    return tokens[:, 1:].reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)


def pytorch_grad_cam_rate(model_name: str, device: str, photos: list[Path], out: Path) -> float:
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image

    model = peer_model(model_name, device)
    if model_name == "resnet50":
        layer, reshape = model.layer4, None
    else:
        layer, reshape = model.encoder.layers[-1].ln_1, vit_tokens_to_maps
    start = time.perf_counter()
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        for path in photos:
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            size = (224, 224) if model_name == "vit_b_16" else (299, 224)
            small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            tensor = preprocess_image(np.float32(small) / 255, mean=MEAN, std=STD)
            grey = cam(input_tensor=tensor, targets=None)[0]
            full = cv2.resize(grey, (rgb.shape[1], rgb.shape[0]))
            picture = show_cam_on_image(np.float32(rgb) / 255, full, use_rgb=True)
            cv2.imwrite(str(out / f"{path.stem}.png"), picture[..., ::-1])
    if device == "cuda":
        torch.cuda.synchronize()
    return len(photos) / (time.perf_counter() - start)


def torchcam_rate(device: str, photos: list[Path], out: Path) -> float:
    from torchcam.methods import GradCAM
    from torchcam.utils import overlay_mask
    from torchvision.io import read_image
    from torchvision.transforms.functional import normalize, resize, to_pil_image

    model = peer_model("resnet50", device)
    start = time.perf_counter()
    with GradCAM(model, target_layer="layer4") as extractor:
        for path in photos:
            image = read_image(str(path))
            tensor = normalize(resize(image, 224) / 255.0, MEAN, STD).to(device)
            scores = model(tensor.unsqueeze(0))
            [activation] = extractor(int(scores.squeeze(0).argmax()), scores)
            picture = overlay_mask(
                to_pil_image(image), to_pil_image(activation.squeeze(0).cpu(), mode="F"), alpha=0.5
            )
            picture.save(out / f"{path.stem}.png")
    if device == "cuda":
        torch.cuda.synchronize()
    return len(photos) / (time.perf_counter() - start)


def throughput(device: str, images: int, work: Path) -> None:
    photos = make_photos(work / "photos", images)
    rows = []
    for model in ("resnet50", "vit_b_16"):
        featviz_rate(model, device, work / "photos", work / f"warm-{model}", "fp32")  # warm-up
        rates = {}
        for precision in ("fp32", "bf16"):
            out = work / f"featviz-{model}-{precision}"
            rate, peak = featviz_rate(model, device, work / "photos", out, precision)
            rates[precision] = rate
            rows.append([f"featviz cam ({precision})", model, f"{rate:.1f}", f"{peak:.2f}", ""])
        peers = {"pytorch-grad-cam": lambda o, m=model: pytorch_grad_cam_rate(m, device, photos, o)}
        if model == "resnet50":
            peers["torchcam"] = lambda o: torchcam_rate(device, photos, o)
        for name, measure in peers.items():
            out = work / f"{name}-{model}"
            out.mkdir()
            try:
                rate = measure(out)
            except ImportError as exc:
                rows.append([name, model, "not installed", "", str(exc)])
                continue
            ratio = f"featviz fp32 {rates['fp32'] / rate:.1f}× faster"
            rows.append([name, model, f"{rate:.1f}", "", ratio])
    print(f"\n### 2–3. Grad-CAM overlays of {images} photos (640×480) on {device}\n")
    print(table(["contender", "model", "images/s", "peak GPU GB", "ratio"], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--methods", nargs="+", default=list(TOLERANCES), choices=TOLERANCES)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this check needs one (or --device cpu for a smoke run)")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    work = Path(tempfile.mkdtemp(prefix="featviz-gpu-check-"))
    try:
        passed = agreement(args.device, work, args.methods)
        throughput(args.device, args.images, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
