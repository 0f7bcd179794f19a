"""The faithfulness metrics and the sanity check's similarities, against independent code:
torchcam's ClassificationMetric and DeletionInsertionMetric, pytorch-grad-cam's ROAD and its
imputer, scipy and scikit-image, and small cases worked out by hand."""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from featviz.cam import normalise
from featviz.judge.imputation import impute
from featviz.judge.metrics import (
    centre_map,
    confidence,
    deletion_insertion,
    drop_and_increase,
    gaussian_blur,
    random_map,
    road,
)
from featviz.judge.similarity import spearman, ssim
from featviz.layers.grids import upsample


def _small_cnn(classes: int = 7) -> nn.Module:
    torch.manual_seed(3)
    return (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, classes),
        )
        .eval()
        .requires_grad_(False)
    )


@pytest.fixture(scope="module")
def case():
    """A model, 4 inputs (3 × 24 × 32), smooth maps in [0, 1] at input resolution, targets,
    and each target's probability on its input."""
    model = _small_cnn()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 24, 32, generator=generator) * 2
    E = normalise(upsample(torch.rand(4, 3, 4, generator=generator), (24, 32)))
    targets = torch.tensor([0, 3, 5, 6])
    Y = model(x).softmax(1).gather(1, targets[:, None])[:, 0]
    return model, x, E, targets, Y


class _FixedMaps:
    """What torchcam's metrics call a CAM extractor, returning maps given in advance."""

    def __init__(self, model: nn.Module, maps: torch.Tensor) -> None:
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **_):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1)


def test_average_drop_and_increase_match_torchcam(case):
    from torchcam.metrics import ClassificationMetric

    model, x, E, targets, Y = case
    drop, increase = drop_and_increase(model, x, E, targets, Y, batch_size=3)
    for i in range(len(x)):
        theirs = ClassificationMetric(_FixedMaps(model, E[i : i + 1]), _softmax)
        theirs.update(x[i : i + 1], class_idx=[int(targets[i])])
        summary = theirs.summary()
        assert float(drop[i]) == pytest.approx(summary["avg_drop"], abs=1e-6)
        assert float(increase[i]) == summary["conf_increase"]
    assert 0 < float(drop.max()) <= 1  # the case is not trivial


def test_deletion_and_insertion_match_torchcam(case):
    from torchcam.metrics import DeletionInsertionMetric

    model, x, E, targets, Y = case
    curves = deletion_insertion(model, x, E, targets, Y, steps=7, batch_size=5)
    for i in range(len(x)):
        extractor = _FixedMaps(model, E[i : i + 1])
        deleting = DeletionInsertionMetric(extractor, _softmax, steps=7, batch_size=4)
        inserting = DeletionInsertionMetric(
            extractor, _softmax, steps=7, batch_size=4, baseline=gaussian_blur
        )
        deleting.update(x[i : i + 1], class_idx=[int(targets[i])])
        inserting.update(x[i : i + 1], class_idx=[int(targets[i])])
        assert float(curves.deletion_auc[i]) == pytest.approx(deleting.deletion, abs=1e-6)
        assert float(curves.insertion_auc[i]) == pytest.approx(inserting.insertion, abs=1e-6)
    # 24 × 32 = 768 pixels in steps of ceil(768 / 7) = 110: 7 removals then the last 108.
    assert curves.fractions.tolist() == pytest.approx([k * 110 / 768 for k in range(7)] + [1.0])
    assert torch.allclose(curves.deletion[:, 0], Y) and torch.allclose(curves.insertion[:, -1], Y)


def test_deletion_auc_by_hand():
    """Logit 0 = 0.1 × the sum of the input, logit 1 = 0: pixel values 1, 2, 3, 4 ranked by
    E = .9, .1, .5, .3 are deleted in the order 1, 3, 4, 2."""

    def scorer(batch: torch.Tensor) -> torch.Tensor:
        total = 0.1 * batch.sum(dim=(1, 2, 3))
        return torch.stack([total, torch.zeros_like(total)], dim=1)

    x = torch.zeros(1, 3, 6, 6)  # 6 × 6: room for the blur of the insertion curve
    x[:, :, 0, :4] = torch.tensor([1.0, 2, 3, 4])
    E = torch.zeros(1, 6, 6)
    E[0, 0, :4] = torch.tensor([0.9, 0.1, 0.5, 0.3])
    target = torch.tensor([0])
    Y = confidence(scorer, x, target, batch_size=8)
    curves = deletion_insertion(scorer, x, E, target, Y, steps=36, batch_size=8)

    def sigmoid(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    remaining = [30, 27, 18, 6] + [0] * 33  # 3 channels × what is left after each pixel
    expected = [sigmoid(0.1 * r) for r in remaining]
    assert curves.deletion[0].tolist() == pytest.approx(expected, abs=1e-6)
    auc = sum((a + b) / 2 for a, b in itertools.pairwise(expected)) / 36
    assert float(curves.deletion_auc[0]) == pytest.approx(auc, abs=1e-6)

    drop, increase = drop_and_increase(scorer, x, E.clamp(0, 1), target, Y, batch_size=8)
    masked = sigmoid(0.1 * 3 * (0.9 * 1 + 0.1 * 2 + 0.5 * 3 + 0.3 * 4))
    assert float(drop[0]) == pytest.approx((sigmoid(3) - masked) / sigmoid(3), abs=1e-6)
    assert float(increase[0]) == 0.0


def test_blur_is_a_gaussian_filter_with_mirrored_edges():
    from scipy.ndimage import gaussian_filter

    x = torch.randn(2, 3, 20, 27, generator=torch.Generator().manual_seed(1))
    ours = gaussian_blur(x).numpy()
    # Kernel 11 at σ = 5: radius 5 = truncate 1σ; torch's "reflect" is scipy's "mirror".
    theirs = gaussian_filter(x.numpy(), sigma=(0, 0, 5, 5), truncate=1.0, mode="mirror")
    assert np.allclose(ours, theirs, atol=1e-5)


def test_imputation_by_hand():
    """The centre of a 3 × 3 image: the weighted mean of its 8 neighbours; a missing corner:
    the mean of its 3 neighbours inside the image, weighted 1/6, 1/6, 1/12."""
    x = torch.arange(9.0).view(1, 1, 3, 3)
    centre = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    centre[..., 1, 1] = True
    edges = x[0, 0, 0, 1] + x[0, 0, 1, 0] + x[0, 0, 1, 2] + x[0, 0, 2, 1]
    corners = x[0, 0, 0, 0] + x[0, 0, 0, 2] + x[0, 0, 2, 0] + x[0, 0, 2, 2]
    out = impute(x, centre, noise=0.0)
    assert float(out[0, 0, 1, 1]) == pytest.approx(float(edges / 6 + corners / 12), abs=1e-5)
    assert torch.equal(out[~centre], x[~centre])

    corner = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    corner[..., 0, 0] = True
    out = impute(x, corner, noise=0.0)
    expected = (x[0, 0, 0, 1] / 6 + x[0, 0, 1, 0] / 6 + x[0, 0, 1, 1] / 12) / (
        1 / 6 + 1 / 6 + 1 / 12
    )
    assert float(out[0, 0, 0, 0]) == pytest.approx(float(expected), abs=1e-5)


def test_imputation_matches_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, 53, generator=generator)
    smooth = normalise(upsample(torch.rand(1, 5, 6, generator=generator), (40, 53)))[0]
    masks = [smooth >= float(np.percentile(smooth.numpy(), p)) for p in (10, 50, 90)]
    masks.append(torch.rand(40, 53, generator=generator) < 0.5)  # scattered holes
    missing = torch.stack(masks)[:, None]
    ours = impute(x.expand(4, -1, -1, -1), missing, noise=0.0)
    theirs = NoisyLinearImputer(noise=0.0)
    for i, mask in enumerate(masks):
        reference = theirs(x, (~mask).float())
        assert torch.allclose(ours[i], reference, atol=2e-3), float(
            (ours[i] - reference).abs().max()
        )


def test_imputation_noise_is_seeded_and_only_on_the_missing_pixels():
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    missing = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    missing[..., 4:12, 4:12] = True
    a = impute(x, missing, generator=torch.Generator().manual_seed(5))
    b = impute(x, missing, generator=torch.Generator().manual_seed(5))
    clean = impute(x, missing, noise=0.0)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :, ~missing[0, 0]], x[:, :, ~missing[0, 0]])
    jitter = (a - clean)[:, :, missing[0, 0]]
    assert float(jitter.std()) == pytest.approx(0.01, rel=0.15)


def test_road_matches_pytorch_grad_cam(case, monkeypatch):
    from pytorch_grad_cam.metrics.road import (
        NoisyLinearImputer,
        ROADLeastRelevantFirstAverage,
        ROADMostRelevantFirstAverage,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, E, targets, Y = case
    monkeypatch.setattr(NoisyLinearImputer.__init__, "__defaults__", (0.0, None))
    wanted = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    cams = E.numpy()
    their_morf = ROADMostRelevantFirstAverage()(x, cams, wanted, model)
    their_lerf = ROADLeastRelevantFirstAverage()(x, cams, wanted, model)
    morf, lerf = road(model, x, E, targets, Y, batch_size=7, seeds=[0, 1, 2, 3], noise=0.0)
    assert np.allclose(morf.numpy(), their_morf, atol=1e-4), (morf, their_morf)
    assert np.allclose(lerf.numpy(), their_lerf, atol=1e-4), (lerf, their_lerf)
    assert float((lerf - morf).abs().max()) > 1e-3  # the case tells MoRF from LeRF


def test_road_is_reproducible_per_image_whatever_the_batch(case):
    model, x, E, targets, Y = case
    together = road(model, x, E, targets, Y, batch_size=64, seeds=[7, 8, 9, 10])
    alone = road(model, x[2:3], E[2:3], targets[2:3], Y[2:3], batch_size=5, seeds=[9])
    assert float(together[0][2]) == pytest.approx(float(alone[0][0]), abs=1e-6)
    assert float(together[1][2]) == pytest.approx(float(alone[1][0]), abs=1e-6)


def test_baselines():
    assert torch.equal(random_map((7, 9), seed=4), random_map((7, 9), seed=4))
    assert not torch.equal(random_map((7, 9), seed=4), random_map((7, 9), seed=5))
    centre = centre_map((7, 9))
    assert float(centre[3, 4]) == 1.0 and centre.argmax() == 3 * 9 + 4
    # σ = a quarter of the side: one σ from the middle the map is e^(−1/2).
    assert float(centre_map((9, 9))[3, 4 + 0]) == pytest.approx(math.exp(-0.5 * (1 / 2.25) ** 2))


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 6, 7), generator=generator).float()  # many ties
    b = a + torch.randint(0, 3, (3, 6, 7), generator=generator).float()
    ours = spearman(a, b)
    for i in range(3):
        expected = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert float(ours[i]) == pytest.approx(expected, abs=1e-9)
    assert float(spearman(a[:1], a[:1])[0]) == pytest.approx(1.0)
    assert float(spearman(a[:1], -a[:1])[0]) == pytest.approx(-1.0)
    assert float(spearman(torch.ones(1, 4, 4), a[:1, :4, :4])[0]) == 0.0


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    generator = torch.Generator().manual_seed(0)
    a = normalise(upsample(torch.rand(2, 4, 5, generator=generator), (40, 50)))
    b = (a + 0.2 * torch.rand(2, 40, 50, generator=generator)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(2):
        expected = structural_similarity(
            a[i].numpy().astype(np.float64),
            b[i].numpy().astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert float(ours[i]) == pytest.approx(expected, abs=1e-5)
    assert float(ssim(a, a)[0]) == pytest.approx(1.0)
