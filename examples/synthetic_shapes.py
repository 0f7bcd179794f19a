"""A task where the right answer is known: coloured shapes on clutter, and tiny transformers
trained on it in seconds (examples/shapes_vit.py; the tests train both models).

A scene is 32 × 64: random noise and grey strokes, and one or two objects, each in its own half
(left: x < 32, right: x ≥ 32), each a different class: 0 a red square, 1 a green disc, 2 a blue
cross. Models learn it multi-label (sigmoid per class), so a scene with two objects has two
high scores and each class's evidence is where its object is. Everything is seeded.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

HEIGHT, WIDTH = 32, 64
CLASSES = ["square", "disc", "cross"]
_COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.3, 1.0]])


def _shape(kind: int, size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2
    if kind == 0:
        return torch.ones(size, size, dtype=torch.bool)
    if kind == 1:
        return (yy - centre) ** 2 + (xx - centre) ** 2 <= centre**2
    return ((yy - centre).abs() < size / 6) | ((xx - centre).abs() < size / 6)


def scene(
    objects: list[tuple[int, int]],
    generator: torch.Generator,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(3, 32, 64) in [0, 1]; ``objects``: (half 0 = left / 1 = right, class) pairs. ``mask``
    (32, 64) int64, if given, gets 1 + class on each object's pixels."""
    image = torch.rand(3, HEIGHT, WIDTH, generator=generator) * 0.35
    for _ in range(6):
        y = int(torch.randint(0, HEIGHT, (1,), generator=generator))
        x = int(torch.randint(0, WIDTH - 8, (1,), generator=generator))
        image[:, y, x : x + 8] = float(torch.rand(1, generator=generator)) * 0.5
    for half, kind in objects:
        size = int(torch.randint(10, 15, (1,), generator=generator))
        y = int(torch.randint(0, HEIGHT - size + 1, (1,), generator=generator))
        x = half * WIDTH // 2 + int(
            torch.randint(0, WIDTH // 2 - size + 1, (1,), generator=generator)
        )
        image[:, y : y + size, x : x + size][:, _shape(kind, size)] = _COLOURS[kind][:, None]
        if mask is not None:
            mask[y : y + size, x : x + size][_shape(kind, size)] = 1 + kind
    return image


def batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes of one or two objects, normalised with mean = std = 0.5, and their labels."""
    images, labels = [], torch.zeros(n, len(CLASSES))
    for i in range(n):
        count = int(torch.randint(1, 3, (1,), generator=generator))
        kinds = torch.randperm(len(CLASSES), generator=generator)[:count].tolist()
        halves = torch.randperm(2, generator=generator).tolist()
        images.append(scene(list(zip(halves, kinds)), generator))
        labels[i, kinds] = 1
    return (torch.stack(images) - 0.5) / 0.5, labels


def two_object_scenes(count: int, seed: int) -> list[tuple[torch.Tensor, int, int]]:
    """(normalised (1, 3, 32, 64) scene, left class, right class), the two classes different."""
    generator = torch.Generator().manual_seed(seed)
    scenes = []
    for _ in range(count):
        left, right = torch.randperm(len(CLASSES), generator=generator)[:2].tolist()
        image = scene([(0, left), (1, right)], generator)
        scenes.append((((image - 0.5) / 0.5)[None], left, right))
    return scenes


def vit() -> nn.Module:
    """A ViT with a class token and two register tokens, 4-pixel patches (an 8 × 16 grid), any
    input size (``dynamic_img_size``)."""
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=(HEIGHT, WIDTH),
        patch_size=4,
        embed_dim=48,
        depth=3,
        num_heads=3,
        reg_tokens=2,
        dynamic_img_size=True,
        num_classes=len(CLASSES),
    )


def swin() -> nn.Module:
    """A two-stage Swin with 4 × 4 windows, channels-last stages, built for 32 × 64 only."""
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=(HEIGHT, WIDTH),
        patch_size=4,
        window_size=4,
        embed_dim=24,
        depths=(2, 2),
        num_heads=(2, 4),
        num_classes=len(CLASSES),
    )


def cnn() -> nn.Module:
    """A small convolutional classifier: three conv → ReLU stages (the last at 8 × 16), global
    average pooling, one Linear; ``nn.ReLU`` modules, which the guided methods rewrite."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, len(CLASSES)),
    )


def trained(
    build,
    steps: int = 150,
    batch_size: int = 32,
    *,
    scenes=None,
    loss=F.binary_cross_entropy_with_logits,
    weight_decay: float = 0.05,
    error_of=None,
) -> nn.Module:
    """``build()`` trained with AdamW and a one-cycle schedule on fresh ``scenes`` (default:
    the multi-label ``batch``; measured here: 11 s for the Swin, 17 s for the ViT on 2 cores;
    every label right on 128 held-out scenes), then eval and frozen. ``error_of(model, x,
    truth)``, if given, replaces ``loss(model(x), truth)`` (a detector computes its own losses
    in training mode)."""
    scenes = scenes or batch
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    model.train()
    error_of = error_of or (lambda model, x, truth: loss(model(x), truth))
    for _ in range(steps):
        x, truth = scenes(batch_size, generator)
        error = error_of(model, x, truth)
        optimiser.zero_grad()
        error.backward()
        optimiser.step()
        schedule.step()
    return model.eval().requires_grad_(False)


def cached(name: str, build, train, took: str) -> nn.Module:
    """``build()`` with the weights ``train()`` gave the first time, kept in
    ``$XDG_CACHE_HOME/featviz/<name>-<torch version>.pt`` for the next calls (the examples)."""
    import os
    import sys
    from pathlib import Path

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "featviz"
    weights = cache / f"{name}-{torch.__version__.split('+')[0]}.pt"
    model = build()
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model
    print(f"{name}: training the example once ({took})…", file=sys.stderr)
    model = train()
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    return model


def accuracy(model: nn.Module, seed: int = 99) -> float:
    """Share of held-out scenes whose every label the model gets right."""
    x, labels = batch(128, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float(((model(x) > 0).float() == labels).all(dim=1).float().mean())


# --- segmentation: the same scenes, a class for every pixel ------------------------------------

SEGMENTATION_CLASSES = ["background", *CLASSES]


def segmentation_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes of one or two objects (normalised) and their (n, 32, 64) pixel classes."""
    images, masks = [], torch.zeros(n, HEIGHT, WIDTH, dtype=torch.long)
    for i in range(n):
        count = int(torch.randint(1, 3, (1,), generator=generator))
        kinds = torch.randperm(len(CLASSES), generator=generator)[:count].tolist()
        halves = torch.randperm(2, generator=generator).tolist()
        images.append(scene(list(zip(halves, kinds)), generator, masks[i]))
    return (torch.stack(images) - 0.5) / 0.5, masks


class Segmenter(nn.Module):
    """A tiny encoder (to 1/4 resolution) and a decoder that upsamples back: per-pixel logits
    (N, 4, H, W) at the input's size, like torchvision's segmentation models."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def trained_segmenter(steps: int = 300, batch_size: int = 32) -> nn.Module:
    """``Segmenter`` trained with AdamW (its default weight decay) on fresh scenes and their
    pixel classes (about 15 s on 2 cores), then eval and frozen."""
    return trained(
        Segmenter,
        steps,
        batch_size,
        scenes=segmentation_batch,
        loss=F.cross_entropy,
        weight_decay=0.01,
    )


def pixel_accuracy(model: nn.Module, seed: int = 99) -> tuple[float, float]:
    """On held-out scenes: the share of all pixels, and of object pixels, classified right."""
    x, masks = segmentation_batch(64, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        right = model(x).argmax(1) == masks
    return float(right.float().mean()), float(right[masks > 0].float().mean())


# --- detection: the same scenes, a box for every object ----------------------------------------

DETECTION_CLASSES = ["__background__", *CLASSES]  # torchvision's convention: 0 is no object


def detection_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[dict]]:
    """``n`` scenes of one or two objects in [0, 1] (the detector normalises them itself) and
    their targets: one box (x0 y0 x1 y1, pixel edges) and label (1 + class) per object."""
    images, masks = segmentation_batch(n, generator)
    targets = []
    for mask in masks:
        boxes, labels = [], []
        for label in mask.unique().tolist()[1:]:
            ys, xs = (mask == label).nonzero(as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(label)
        targets.append(
            {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
        )
    return images * 0.5 + 0.5, targets


class _Backbone(nn.Sequential):
    """Three convolutions to 1/4 resolution: an 8 × 16 grid of 32 channels on a scene."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.out_channels = 32


def detector() -> nn.Module:
    """torchvision's FCOS on a tiny backbone, one feature level: it resizes the shorter side
    to 32 and pads every side to a multiple of 32, as torchvision's detectors do. Its head has
    one convolution per branch instead of four, so that what a box's score sees (3 × 3 cells,
    12 pixels) is about an object's size, as at a real detector's pyramid level."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    classes = len(DETECTION_CLASSES)
    return FCOS(
        _Backbone(),
        num_classes=classes,
        head=FCOSHead(32, 1, classes, num_convs=1),
        min_size=HEIGHT,
        max_size=4 * WIDTH,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        anchor_generator=AnchorGenerator(((8,),), ((1.0,),)),
        score_thresh=0.2,
        detections_per_img=10,
    )


def trained_detector(steps: int = 400, batch_size: int = 16) -> nn.Module:
    """``detector()`` trained on fresh scenes and their boxes (about 35 s on 2 cores)."""
    return trained(
        detector,
        steps,
        batch_size,
        scenes=detection_batch,
        error_of=lambda model, x, truth: sum(model(list(x), truth).values()),
        weight_decay=0.01,
    )


def detection_recall(model: nn.Module, seed: int = 99) -> tuple[float, int]:
    """On held-out scenes: the share of objects found (a box of its class scoring ≥ 0.5 with
    IoU ≥ 0.5), and how many boxes scoring ≥ 0.5 are not one of them."""
    from torchvision.ops import box_iou

    x, truth = detection_batch(64, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        found = model(x)
    hits, extra, objects = 0, 0, 0
    for image, wanted in zip(found, truth):
        keep = image["scores"] >= 0.5
        boxes, labels = image["boxes"][keep], image["labels"][keep]
        matched = (box_iou(wanted["boxes"], boxes) >= 0.5) & (wanted["labels"][:, None] == labels)
        hits += int(matched.any(1).sum())
        extra += int((~matched.any(0)).sum())
        objects += len(wanted["boxes"])
    return hits / objects, extra
