"""Model specs, weights from torch's cache, checkpoints, seeding, labels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from featviz.errors import RunError, UsageError
from featviz.model.load import LoadedModel, load_model
from featviz.model.options import ModelRequest

RESNET18_FILE = "resnet18-f37072fd.pth"


def load(spec: str, **options: object) -> LoadedModel:
    return load_model(ModelRequest(spec, **options))


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download fail as it would offline, and record the attempts."""
    attempts: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        attempts.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return attempts


def _cache_resnet18(torch_home: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / RESNET18_FILE)
    return state


def test_unknown_model_names_the_closest() -> None:
    with pytest.raises(UsageError, match="unknown model 'resnet5'") as info:
        load("resnet5")
    assert info.value.hint.startswith("closest: 'resnet50', 'resnet152', 'resnet34';")
    assert "featviz models" in info.value.hint


def test_pretrained_weights_come_from_the_torch_cache_without_network(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = _no_network(monkeypatch)
    saved = _cache_resnet18(torch_home)
    loaded = load("resnet18", device="cpu")
    assert attempts == []
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert loaded.weights == "IMAGENET1K_V1"
    assert loaded.categories[281] == "tabby"
    assert not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())


def test_pretrained_build_skips_the_random_initialisation(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_network(monkeypatch)
    _cache_resnet18(torch_home)
    real_init = nn.Conv2d.reset_parameters
    initialised_on: list[str] = []

    def spy(self: nn.Conv2d) -> None:
        initialised_on.append(self.weight.device.type)
        real_init(self)

    monkeypatch.setattr(nn.Conv2d, "reset_parameters", spy)
    load("resnet18", device="cpu")
    assert initialised_on and set(initialised_on) == {"meta"}


def test_missing_weights_offline_say_where_they_belong_and_what_else_works(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = _no_network(monkeypatch)
    with pytest.raises(RunError) as info:
        load("resnet18", device="cpu")
    folder = torch_home / "hub" / "checkpoints"
    assert info.value.message == (
        "pretrained weights ResNet18_Weights.IMAGENET1K_V1 are not cached and cannot be "
        f"downloaded (expected {RESNET18_FILE} in {folder})"
    )
    assert "--weights none" in info.value.hint and "--checkpoint FILE" in info.value.hint
    assert attempts == ["https://download.pytorch.org/models/" + RESNET18_FILE]


def test_unknown_weights_name_lists_the_real_ones() -> None:
    with pytest.raises(UsageError, match="model 'resnet18' has no weights 'IMAGENET9K'") as info:
        load("resnet18", weights="IMAGENET9K")
    assert "IMAGENET1K_V1" in info.value.hint


def test_random_initialisation_is_seeded() -> None:
    first = load("resnet18", weights="none", device="cpu").module.conv1.weight
    again = load("resnet18", weights="none", device="cpu").module.conv1.weight
    other = load("resnet18", weights="none", seed=1, device="cpu").module.conv1.weight
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("nesting", ["bare", "state_dict", "model"])
def test_checkpoint_nested_and_prefixed_loads(tmp_path: Path, nesting: str) -> None:
    torch.manual_seed(5)
    state = torchvision.models.resnet18(num_classes=3).state_dict()
    prefixed = {f"module.{key}": value for key, value in state.items()}
    payload = prefixed if nesting == "bare" else {nesting: prefixed, "epoch": 7}
    path = tmp_path / "finetuned.pt"
    torch.save(payload, path)
    loaded = load("resnet18", checkpoint=path, num_classes=3, device="cpu")
    assert torch.equal(loaded.module.fc.weight, state["fc.weight"])
    assert loaded.categories is None  # 3 classes are not ImageNet's
    assert loaded.label(2) == "class 2"


def test_checkpoint_for_another_head_lists_the_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    with pytest.raises(RunError) as info:
        load("resnet18", checkpoint=path, device="cpu")
    assert info.value.message == (
        f"checkpoint '{path}' does not fit this model: keys 2 with another shape "
        "(fc.weight [3, 512] vs model [1000, 512], fc.bias [3] vs model [1000])"
    )
    assert "--num-classes" in info.value.hint


def test_checkpoint_for_another_architecture_lists_missing_and_unexpected(tmp_path: Path) -> None:
    path = tmp_path / "alexnet.pt"
    torch.save(torchvision.models.alexnet().state_dict(), path)
    with pytest.raises(
        RunError,
        match=r"keys 122 missing \(conv1.weight, bn1.weight, .*; "
        r"16 unexpected \(features.0.weight",
    ):
        load("resnet18", checkpoint=path, device="cpu")


class _Payload:
    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload()}, path)
    with pytest.raises(
        RunError,
        match="needs arbitrary Python code to load, and featviz "
        "refuses to run code from a weights file",
    ) as info:
        load("resnet18", checkpoint=path, device="cpu")
    assert "state_dict()" in info.value.hint


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(
        UsageError,
        match=r"checkpoint '.*cut.pt' is not a PyTorch checkpoint: it is cut short or damaged",
    ):
        load("resnet18", checkpoint=path, device="cpu")


def test_factory_in_a_file(tiny_model_file: Path) -> None:
    loaded = load(f"{tiny_model_file}:build", device="cpu")
    assert type(loaded.module).__name__ == "TinyNet"
    assert loaded.module.fc.out_features == 5
    assert loaded.categories is None and loaded.preprocessing.input_size == 224
    resized = load(f"{tiny_model_file}:build", num_classes=2, device="cpu")
    assert resized.module.fc.out_features == 2


def test_factory_in_a_package() -> None:
    loaded = load("torchvision.models:alexnet", labels="imagenet", device="cpu")
    assert isinstance(loaded.module, torchvision.models.AlexNet)
    assert loaded.label(281) == "tabby"


def test_factory_errors_are_usage_errors(tiny_model_file: Path) -> None:
    with pytest.raises(UsageError, match="has no callable 'nope'"):
        load(f"{tiny_model_file}:nope")
    with pytest.raises(UsageError, match=r"file 'missing\.py' does not exist"):
        load("missing.py:build")
    with pytest.raises(UsageError, match="cannot import 'no_such_package_xyz'"):
        load("no_such_package_xyz:build")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_labels_file(tiny_model_file: Path, tmp_path: Path, encoding: str) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\nbird\nfish\nowl\n", encoding=encoding)
    loaded = load(f"{tiny_model_file}:build", labels=str(labels), device="cpu")
    assert loaded.categories == ["cat", "dog", "bird", "fish", "owl"]


def test_unavailable_device_is_a_usage_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="--device cuda: no CUDA GPU is available here"):
        load("resnet18", weights="none", device="cuda")


def test_lite0_example_predicts_a_cat(lite0) -> None:
    from PIL import Image

    from featviz.inputs.preprocess import to_tensor

    image = Image.open(Path(__file__).parent.parent / "sample_images" / "chelsea.png")
    x = to_tensor(image.convert("RGB"), lite0.preprocessing)
    with torch.inference_mode():
        top = lite0.module(x[None]).softmax(1)[0].argmax().item()
    assert lite0.label(top) in {"tabby", "tiger cat", "Egyptian cat"}


def test_importing_featviz_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, featviz, featviz.cli.app; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_torchvision_models_run_channels_last_and_user_models_keep_their_layout(
    tiny_model_file: Path,
) -> None:
    torchvision_model = load("resnet18", weights="none", device="cpu")
    assert torchvision_model.module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    batch = torchvision_model.batch([torch.zeros(3, 8, 10), torch.ones(3, 8, 10)])
    assert batch.shape == (2, 3, 8, 10)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    user = load(f"{tiny_model_file}:build", device="cpu")
    assert user.module.features[0].weight.is_contiguous()
    assert user.batch([torch.zeros(3, 8, 10)]).is_contiguous()
