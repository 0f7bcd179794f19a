"""A two-tower (CLIP-style) model you can explain offline, with text prompts: an image tower and
a text tower over a toy vocabulary, trained on the scenes of ``synthetic_shapes.py`` and their
captions ("a red square", "green disc", "a photo of a blue cross"…).

    featviz cam -m examples/shapes_clip.py:build -t "text:a red square" \
        -t "text:a blue cross" sample_images/shapes.png

What makes featviz read prompts is ``encode_text`` (a list of prompts → (P, D) embeddings)
beside the forward (images → (N, D) embeddings), and the two numbers of the similarity,
``logit_scale`` and ``logit_bias``: any model of yours with them takes ``-t "text:…"`` and
``--prompts FILE``. It trains itself the first time (about 10 s on 2 CPU cores), with
SigLIP's sigmoid loss (a scene with two objects matches two captions), and keeps its weights
in ``$XDG_CACHE_HOME/featviz/`` (``~/.cache/featviz/``).
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_shapes import CLASSES, batch, cached, trained

INPUT_SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

COLOURS = ["red", "green", "blue"]  # of CLASSES: a red square, a green disc, a blue cross
VOCABULARY = ["<unknown>", "a", "an", "the", "photo", "picture", "of", *COLOURS, *CLASSES]
TEMPLATES = ["a {colour} {shape}", "{colour} {shape}", "a {shape}", "a photo of a {colour} {shape}",
             "the {colour} {shape}", "a picture of the {shape}"]  # fmt: skip
EMBEDDING = 32


def tokens(text: str) -> list[int]:
    """The vocabulary's indices of the words of ``text``; unknown words are index 0."""
    words = re.findall(r"[a-z]+", text.lower())
    return [VOCABULARY.index(word) if word in VOCABULARY else 0 for word in words] or [0]


class ShapesClip(nn.Module):
    """Image tower: three convolutions (32 × 64 → a 16 × 32 grid of 32 channels), average
    pooling and a projection to (N, 32) embeddings. Text tower: the mean of the prompt's word
    embeddings, projected to (P, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = nn.Linear(32, EMBEDDING)
        self.words = nn.EmbeddingBag(len(VOCABULARY), EMBEDDING, mode="mean")
        self.text_project = nn.Linear(EMBEDDING, EMBEDDING)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-2.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.pool(self.visual(images)).flatten(1))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = [tokens(text) for text in texts]
        flat = torch.tensor([i for words in ids for i in words], device=self.bias.device)
        offsets = torch.tensor([0, *[len(words) for words in ids[:-1]]], device=self.bias.device)
        return self.text_project(self.words(flat, offsets.cumsum(0)))

    @property
    def logit_scale(self) -> float:
        return float(self.log_scale.exp())

    @property
    def logit_bias(self) -> float:
        return float(self.bias)

    def logits(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """(N, P) = scale · cos(image, text) + bias, differentiable (for training)."""
        image = F.normalize(self(images), dim=1)
        text = F.normalize(self.encode_text(texts), dim=1)
        return image @ text.T * self.log_scale.exp() + self.bias


def captions() -> list[str]:
    """One caption per class, each from a template drawn from torch's global generator."""
    picked = torch.randint(0, len(TEMPLATES), (len(CLASSES),)).tolist()
    return [
        TEMPLATES[t].format(colour=colour, shape=shape)
        for t, colour, shape in zip(picked, COLOURS, CLASSES)
    ]


def trained_clip() -> nn.Module:
    """ShapesClip trained on the multi-label scenes against freshly drawn captions of the three
    classes (a sigmoid per scene and caption: SigLIP's loss)."""

    def error(model: nn.Module, x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model.logits(x, captions()), truth)

    return trained(ShapesClip, steps=200, scenes=batch, weight_decay=0.0, error_of=error)


def build() -> nn.Module:
    return cached("shapes_clip", ShapesClip, trained_clip, "about 10 s")
