"""Layer tracing, default CAM layer, name and glob resolution."""

from __future__ import annotations

import pytest

from featviz.errors import UsageError
from featviz.layers.catalog import resolve_layers
from featviz.layers.trace import trace_model
from featviz.model.load import load_model
from featviz.model.options import ModelRequest


def _trace(name: str, size: int = 224):
    """Traced on the meta device, as `featviz layers` does: no weights, no initialisation."""
    return load_model(ModelRequest(name, input_size=size), structure_only=True).trace


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("alexnet", "features.11"),  # not features.12 (max-pool) nor avgpool (6×6)
        ("vgg16", "features.29"),
        ("resnet50", "layer4"),
        ("densenet121", "features"),  # = features.norm5, before the functional ReLU
        ("mobilenet_v3_large", "features"),
    ],
)
def test_default_cam_layer_is_the_last_convolutional_stage(model: str, expected: str) -> None:
    assert _trace(model).default_cam_layer() == expected


def test_default_cam_layer_of_the_real_example(lite0) -> None:
    assert trace_model(lite0.module, (1, 3, 224, 224)).default_cam_layer() == "bn2"


def test_trace_records_shapes_params_and_repeated_calls() -> None:
    trace = _trace("resnet18")
    structure = load_model(ModelRequest("resnet18"), structure_only=True).module
    assert all(p.is_meta for p in structure.parameters())
    layer4 = trace.get("layer4")
    assert layer4.shape == (1, 512, 7, 7) and layer4.spatial and not layer4.pooled
    assert trace.get("layer1.0.conv1").params == 64 * 64 * 3 * 3
    assert trace.get("layer1.0.relu").calls == 2  # BasicBlock reuses its ReLU
    assert trace.get("avgpool").pooled and not trace.get("avgpool").spatial
    assert trace.get("fc").shape == (1, 1000) and not trace.get("fc").spatial


def test_globs_match_within_one_name_part_and_double_star_across() -> None:
    trace = _trace("resnet18")
    assert resolve_layers(trace, ["layer4.*"], spatial_only=True) == ["layer4.0", "layer4.1"]
    deep = resolve_layers(trace, ["layer4.**.conv1"], spatial_only=True)
    assert deep == ["layer4.0.conv1", "layer4.1.conv1"]


def test_resolved_layers_come_in_execution_order_without_duplicates() -> None:
    trace = _trace("alexnet")
    chosen = resolve_layers(trace, ["features.10", "features.0", "features.0"], spatial_only=True)
    assert chosen == ["features.0", "features.10"]
    assert len(resolve_layers(trace, ["features.*"], spatial_only=True)) == 13


def test_unknown_layer_suggests_close_names_and_the_layers_command() -> None:
    with pytest.raises(UsageError, match="unknown layer 'layer5'") as info:
        resolve_layers(_trace("resnet18"), ["layer5"], spatial_only=True)
    assert info.value.hint == (
        "closest: 'layer4', 'layer3', 'layer2'; list them all with `featviz layers --model MODEL`"
    )


def test_non_spatial_layer_explains_and_lists_candidates() -> None:
    with pytest.raises(UsageError) as info:
        resolve_layers(_trace("alexnet"), ["classifier.1"], spatial_only=True)
    assert info.value.message == (
        "layer 'classifier.1' (Linear, output shape [1, 4096]) has no spatial output "
        "(feature maps or patch tokens) to draw"
    )
    assert (
        info.value.hint == "try one of the last spatial layers: features.9, features.10, "
        "features.11"
    )


def test_glob_matching_nothing_spatial_is_an_error() -> None:
    with pytest.raises(UsageError, match=r"no spatial layer matches 'classifier\.\*'"):
        resolve_layers(_trace("alexnet"), ["classifier.*"], spatial_only=True)


def test_outputs_split_by_attention_head_are_not_maps() -> None:
    """timm's ViT runs its queries and keys through q_norm and k_norm as (N, heads, T, d):
    neither a map nor tokens, where the block around them gives tokens."""
    trace = _trace("timm/vit_tiny_patch16_224")
    assert trace.get("blocks.0.attn").spatial
    for name in ("blocks.0.attn.q_norm", "blocks.0.attn.k_norm"):
        info = trace.get(name)
        assert info.shape == (1, 3, 197, 64) and info.layout is None and not info.spatial
    assert resolve_layers(trace, ["blocks.0.attn.*"], spatial_only=True) == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.norm",
        "blocks.0.attn.proj",
        "blocks.0.attn.proj_drop",
    ]


def test_top_also_takes_layers_with_one_value_per_channel() -> None:
    trace = _trace("resnet18")
    assert trace.get("fc").per_channel and trace.get("avgpool").per_channel
    assert not trace.get("layer4").per_channel and not trace.get("layer4").pooled
    chosen = resolve_layers(trace, ["layer4", "avgpool", "fc"], spatial_only=True, per_channel=True)
    assert chosen == ["layer4", "avgpool", "fc"]
    assert resolve_layers(trace, ["*"], spatial_only=True, per_channel=True)[-2:] == [
        "avgpool",
        "fc",
    ]


def test_the_layers_table_says_what_each_layer_is_good_for() -> None:
    from featviz.cli.text import layer_table

    trace = _trace("resnet18")
    rows = {line.split()[0]: line for line in layer_table(trace, "layer4", 1).splitlines()[2:]}
    assert rows["layer4"].endswith("cam, ← default cam layer")
    assert rows["avgpool"].endswith("top, dream: one value per channel")
    assert rows["fc"].endswith("top, dream: one value per channel")
    assert rows["layer1.0.relu"].endswith("cam, runs 2× per forward: a tap keeps the last call")
