"""The method registry: every entry loads, names agree, no silent overwrite, no torch import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from featviz.cam import registry
from featviz.cam.registry import load_method, method_info, method_names, register
from featviz.errors import UsageError

EXPECTED_ORDER = [
    "cam",
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "scorecam",
    "ablationcam",
    "eigencam",
    "gradrollout",
    "rollout",
    "gradcamelementwise",
    "eigengradcam",
    "kpcacam",
    "fem",
    "shapleycam",
    "finercam",
    "sscam",
    "iscam",
    "smoothgradcam++",
    "saliency",
    "inputxgradient",
    "integratedgradients",
    "smoothgrad",
    "occlusion",
    "guidedbackprop",
    "deconvolution",
    "guidedgradcam",
    "fullgrad",
    "lrp",
    "attnlrp",
    "legrad",
]


def test_names_in_fixed_order():
    assert method_names() == EXPECTED_ORDER


@pytest.mark.parametrize("name", method_names())
def test_every_method_loads_and_agrees_with_its_entry(name):
    info = method_info(name)
    method = load_method(name)
    assert type(method).__name__ == info.class_name
    assert type(method).__module__ == info.module
    assert method.name == name
    assert method.info is info  # its flags are the entry's: said once


@pytest.mark.parametrize("name", method_names())
def test_summary_is_one_line_saying_the_cost(name):
    summary = method_info(name).summary
    assert "\n" not in summary
    assert "forward" in summary
    assert len(summary) <= 100


def test_gradient_flags():
    needing = [name for name in method_names() if method_info(name).needs_gradients]
    assert needing == [
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "gradrollout",
        "gradcamelementwise",
        "eigengradcam",
        "shapleycam",
        "finercam",
        "smoothgradcam++",
        "saliency",
        "inputxgradient",
        "guidedbackprop",
        "deconvolution",
        "guidedgradcam",
        "legrad",
    ]
    agnostic = [name for name in method_names() if not method_info(name).class_specific]
    assert agnostic == ["eigencam", "rollout", "kpcacam", "fem"]
    attention = [name for name in method_names() if method_info(name).needs_attention]
    assert attention == ["gradrollout", "rollout", "legrad"]
    random = [name for name in method_names() if method_info(name).random]
    assert random == ["sscam", "smoothgradcam++", "smoothgrad"]  # iscam's steps are fixed


def test_duplicate_registration_is_refused():
    before = dict(registry._METHODS)
    with pytest.raises(
        ValueError,
        match=r"CAM method .gradcam. is already registered "
        r"\(featviz\.cam\.methods\.gradient\.GradCam\)",
    ):
        register(
            "gradcam",
            module="elsewhere",
            class_name="Other",
            summary="x; 1 forward",
            needs_gradients=False,
        )
    assert dict(registry._METHODS) == before


def test_register_adds_a_new_entry(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    info = register(
        "gradcam-copy",
        module="featviz.cam.methods.gradient",
        class_name="GradCam",
        summary="a copy; 1 forward",
        needs_gradients=True,
    )
    assert method_names()[-1] == "gradcam-copy"
    assert method_info("gradcam-copy") is info
    assert type(load_method("gradcam-copy")).__name__ == "GradCam"


def test_unknown_method_suggests_the_closest():
    with pytest.raises(UsageError, match=r"^unknown method 'gradcamm'$") as caught:
        method_info("gradcamm")
    assert (
        caught.value.hint
        == f"closest: 'gradcam', 'xgradcam', 'gradcam++'; choose one of {', '.join(EXPECTED_ORDER)}"
    )
    assert caught.value.exit_code == 2


def test_unknown_method_without_a_close_name():
    with pytest.raises(UsageError, match="unknown method 'zzz'") as caught:
        load_method("zzz")
    assert caught.value.hint.startswith("choose one of cam, gradcam, ")


def test_batch_size_must_be_positive():
    with pytest.raises(UsageError, match="the CAM batch size must be at least 1, got 0"):
        load_method("scorecam", batch_size=0)
    assert load_method("ablationcam", batch_size=5).batch_size == 5


def test_registry_queries_do_not_import_torch():
    code = (
        "import sys, featviz.cam as cam; names = cam.method_names(); "
        "cam.method_info('scorecam'); "
        "print(len(names), 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(EXPECTED_ORDER)), "False"]


def test_tensor_helpers_load_lazily():
    import featviz.cam as cam
    from featviz.cam import base, context

    assert cam.normalise is base.normalise
    assert cam.forward_for_cam is context.forward_for_cam
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        _ = cam.nothing
