"""Batch norms folded into the convolutions before them: which pairs the trace finds, that the
folded model computes the same maps, and that the model's own weights come back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.layers.folding import FoldedBatchNorms, folded_for
from featviz.layers.trace import trace_model
from featviz.run import prepare as runner

BN_MODEL_SOURCE = '''
import torch
from torch import nn


class Block(nn.Module):
    """conv → bn → relu twice, with a residual: the classic pair layout."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block = Block(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def build() -> nn.Module:
    torch.manual_seed(0)
    net = Net()
    for module in net.modules():  # statistics far from the identity, as trained ones are
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.uniform_(0.5, 2.0)
            module.bias.data.normal_(0, 0.3)
    return net
'''


def _build() -> nn.Module:
    namespace: dict = {}
    exec(BN_MODEL_SOURCE, namespace)
    return namespace["build"]().eval().requires_grad_(False)


class _Shapes(nn.Module):
    """Pairs that must not fold: a conv output read twice, one returned beside its norm, a norm
    before its conv, a conv run twice, and a BatchNorm2d subclass that does more."""

    class _NormAct(nn.BatchNorm2d):
        def forward(self, x):
            return torch.relu(super().forward(x))

    def __init__(self) -> None:
        super().__init__()
        self.read_twice, self.bn_a = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.returned, self.bn_b = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.bn_first, self.after_bn = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)
        self.twice, self.bn_twice = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.fine, self.bn_fine = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.before_act, self.norm_act = nn.Conv2d(4, 4, 1), self._NormAct(4)

    def forward(self, x):
        a = self.read_twice(x)
        x = self.bn_a(a) + a
        b = self.returned(x)
        x = self.after_bn(self.bn_first(self.bn_b(b)))
        x = self.twice(self.twice(x))
        x = self.bn_fine(self.fine(self.bn_twice(x)))
        return self.norm_act(self.before_act(x)), b


def test_the_trace_finds_exactly_the_pairs_whose_conv_only_its_norm_reads() -> None:
    assert trace_model(_build(), (1, 3, 16, 16)).foldable == (
        ("stem.0", "stem.1"),
        ("block.conv1", "block.bn1"),
        ("block.conv2", "block.bn2"),
    )
    assert trace_model(_Shapes().eval(), (1, 3, 8, 8)).foldable == (("fine", "bn_fine"),)


class _ModeShy(nn.Module):
    """A conv → bn pair in a model whose forward refuses to run under a TorchFunctionMode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.real_forwards = 0

    def forward(self, x):
        self.real_forwards += x.device.type != "meta"
        if torch._C._is_torch_function_mode_enabled():
            raise RuntimeError("not under a mode")
        return self.bn(self.conv(x)).mean((2, 3))


def test_a_model_the_watch_upsets_is_still_traced_on_meta_and_not_folded() -> None:
    model = _ModeShy().eval()
    trace = trace_model(model, (1, 3, 8, 8))
    assert trace.foldable == () and trace.get("bn").shape == (1, 4, 8, 8)
    assert trace.num_classes == 4 and model.real_forwards == 0  # the meta retry, not a real run


def test_folded_forward_agrees_and_the_weights_come_back() -> None:
    model = _build()
    x = torch.randn(2, 3, 20, 24)
    own = {name: value.clone() for name, value in model.state_dict().items()}
    expected = model(x)
    folding = folded_for(model, trace_model(model, (1, 3, 16, 16)).foldable, ["block.bn2"])
    assert len(folding) == 2  # a tapped norm keeps its pair as it is
    with folding.applied():
        folded = model(x)
        assert model.block.conv1.bias is not None and "forward" in vars(model.block.bn1)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(folded, expected)  # the folded arithmetic really ran
    assert model.block.conv1.bias is None and "forward" not in vars(model.block.bn1)
    assert all(torch.equal(own[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), expected)
    with pytest.raises(RuntimeError), folding.applied():
        raise RuntimeError("a batch failed")
    assert model.block.conv1.bias is None and torch.equal(model(x), expected)


def test_channels_last_weights_stay_channels_last() -> None:
    model = _build().to(memory_format=torch.channels_last)
    folding = FoldedBatchNorms(model, [("block.conv1", "block.bn1")])
    with folding.applied():
        assert model.block.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture
def bn_model(tmp_path: Path) -> Path:
    path = tmp_path / "bn_model.py"
    path.write_text(BN_MODEL_SOURCE)
    return path


def _cam(bn_model: Path, photo: Path, out: Path, *extra: str):
    result = CliRunner().invoke(
        app,
        ["cam", "-m", f"{bn_model}:build", "--input-size", "32", str(photo), "-o", str(out),
         "--save-raw", "-M", "gradcam", "-M", "scorecam", *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    maps = {
        str(path.relative_to(out)): np.load(path)["layer_cam"]
        for path in sorted(out.rglob("*.npz"))
    }
    return manifest["resolved"]["folded_batch_norms"], maps


def test_cam_on_a_folded_model_gives_the_unfolded_maps(
    bn_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), np.uint8)).save(photo)
    folded, maps = _cam(bn_model, photo, tmp_path / "folded", "-l", "block.conv2")
    assert folded == 2  # block.conv2 is tapped: its pair stays
    monkeypatch.setattr(runner, "_folding", lambda *args: FoldedBatchNorms(nn.Module(), []))
    none, plain = _cam(bn_model, photo, tmp_path / "plain", "-l", "block.conv2")
    assert none == 0 and maps.keys() == plain.keys() and len(maps) == 2
    for key in maps:
        np.testing.assert_allclose(maps[key], plain[key], rtol=1e-4, atol=1e-5 * plain[key].max())
    monkeypatch.undo()
    folded, _ = _cam(bn_model, photo, tmp_path / "block", "-l", "block")
    assert folded == 3


def test_timms_batchnorm_act_folds_and_keeps_its_activation(lite0) -> None:
    """EfficientNet-Lite0 (timm's layers): every conv feeds a BatchNormAct2d, whose ReLU6 must
    still run once the normalisation is folded away."""
    module = lite0.module
    assert len(lite0.trace.foldable) == 49
    assert {type(dict(module.named_modules())[n]).__name__ for _, n in lite0.trace.foldable} == {
        "BatchNormAct2d"
    }
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = module(x)
        acts = []
        handle = module.bn1.act.register_forward_hook(lambda m, i, o: acts.append(o))
        try:
            with folded_for(module, lite0.trace.foldable, []).applied():
                folded = module(x)
        finally:
            handle.remove()
    assert len(acts) == 1 and float(acts[0].min()) >= 0.0 and float(acts[0].max()) <= 6.0
    torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert torch.equal(module(x), expected)
