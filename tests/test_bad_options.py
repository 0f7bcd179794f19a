"""Every bad option or argument: exit 2 (usage) or 1 (runtime), one ``Error:`` line, a ``Hint:``
line where there is a likely fix, never a traceback (unless FEATVIZ_DEBUG=1 asks for it).

Messages that featviz writes are pinned whole; for the option checks done by Typer (ranges,
choices) its wording is not ours, so only the line's shape and our hint are pinned.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL_SOURCE
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app

TINY = ["-m", "tiny_model.py:build", "--input-size", "32"]
PHOTO = "photos/cat.png"


@pytest.fixture(autouse=True)
def _workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Short relative paths in messages: a tiny model, one photo, a labels file."""
    monkeypatch.chdir(tmp_path)
    Path("tiny_model.py").write_text(TINY_MODEL_SOURCE)
    Path("photos").mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(PHOTO)
    Path("labels.txt").write_text("cat\ndog\ntabby\ntiger cat\ncar\n")


def invoke(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_error(result, code: int, error: str, hint: str | None = None) -> None:
    """Exactly the error line and the hint line (or none) on stderr, nothing on stdout."""
    assert result.exit_code == code, result.stderr
    assert result.stderr.splitlines() == [error] + ([hint] if hint else [])
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "error", "hint"),
    [
        (
            ["-m", "resnet5"],
            "Error: unknown model 'resnet5'",
            "Hint: closest: 'resnet50', 'resnet152', 'resnet34'; list them with "
            "`featviz models`, or pass your own as file.py:callable",
        ),
        (
            [*TINY, "-l", "feature"],
            "Error: unknown layer 'feature'",
            "Hint: closest: 'features', 'features.3', 'features.2'; list them all with "
            "`featviz layers --model MODEL`",
        ),
        (
            [*TINY, "-l", "fc"],
            "Error: layer 'fc' (Linear, output shape [1, 5]) has no spatial output "
            "(feature maps or patch tokens) to draw",
            "Hint: try one of the last spatial layers: features.2, features.3, features",
        ),
        (
            [*TINY, "--labels", "labels.txt", "-t", "tabbby"],
            "Error: --target 'tabbby': no such class",
            "Hint: closest: 'tabby'",
        ),
        (
            ["-m", "resnet18", "--weights", "none", "--labels", "imagenet", "-t", "cat"],
            "Error: --target 'cat' is ambiguous: 5 classes have those words: 'tiger cat', "
            "'Persian cat', 'Siamese cat', 'Egyptian cat', 'Madagascar cat'",
            "Hint: give the whole name, e.g. -t 'tiger cat', or the class index (282)",
        ),
        (
            [*TINY, "-t", "tabby"],
            "Error: --target 'tabby': this model has no class names",
            "Hint: pass a class index, or names with --labels imagenet|FILE",
        ),
        ([*TINY, "-t", "5"], "Error: --target 5: the model has classes 0 to 4", None),
        ([*TINY, "-t", "-1"], "Error: --target -1: the model has classes 0 to 4", None),
        ([*TINY, "--top-k", "6"], "Error: --top-k 6: the model has only 5 classes", None),
        ([*TINY, "--top-k", "0"], "Error: --top-k 0: must be at least 1", None),
        ([*TINY, "--top-k", "-2"], "Error: --top-k -2: must be at least 1", None),
        (
            [*TINY, "-t", "1", "--top-k", "2"],
            "Error: --target and --top-k exclude each other",
            "Hint: explain given classes with --target, or the k best with --top-k",
        ),
        (
            [*TINY, "--cmap", "jett"],
            "Error: unknown colormap 'jett'",
            "Hint: closest: 'jet', 'jet_r'; any matplotlib colormap name works "
            "(gray, viridis, jet, magma…)",
        ),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_unknown_names_and_impossible_choices_exit_2(
    args: list[str], error: str, hint: str | None
) -> None:
    assert_error(invoke("cam", *args, PHOTO, "-o", "out"), 2, error, hint)
    assert not Path("out").exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("content", "line"),
    [("cat\ndog\nGürteltier\n".encode("latin-1"), 3), (b"\xff\xfec\x00a\x00t\x00", 1)],
    ids=["latin-1", "utf-16"],
)
def test_labels_that_are_not_utf8_name_the_line(content: bytes, line: int) -> None:
    Path("latin.txt").write_bytes(content)
    assert_error(
        invoke("cam", *TINY, "--labels", "latin.txt", PHOTO, "-o", "out"),
        2,
        f"Error: --labels: 'latin.txt' line {line} is not UTF-8 text",
        "Hint: save it as UTF-8, one class name per line",
    )


@pytest.mark.parametrize(
    ("command", "option", "value", "reason"),
    [
        ("cam", "--method' / '-M", "gradcam+++", "'gradcam+++' is not one of 'cam', 'gradcam'"),
        ("cam", "--alpha", "1.5", "less than or equal to 1"),
        ("cam", "--alpha", "-0.1", "greater than or equal to 0"),
        ("cam", "--input-size", "0", "greater than or equal to 8"),
        ("cam", "--input-size", "-8", "greater than or equal to 8"),
        ("cam", "--batch-size", "0", "greater than or equal to 1"),
        ("cam", "--cam-batch-size", "-1", "greater than or equal to 1"),
        ("cam", "--max-pixels", "0", "greater than or equal to 1"),
        ("cam", "--num-classes", "0", "greater than or equal to 1"),
        ("cam", "--top-k", "two", "valid integer"),
        ("maps", "--cell-size", "0", "greater than or equal to 1"),
        ("maps", "--max-channels", "-3", "greater than or equal to 1"),
    ],
)
def test_out_of_range_option_values_exit_2_on_one_line(
    command: str, option: str, value: str, reason: str
) -> None:
    flag = option.split("'")[0]
    result = invoke(command, *TINY, flag, value, PHOTO, "-o", "out")
    assert result.exit_code == 2
    error, hint = result.stderr.splitlines()
    assert error.startswith(f"Error: Invalid value for '{option}': ") and reason in error
    assert hint == f"Hint: see `featviz {command} --help`"
    assert not Path("out").exists()


def test_unknown_option_and_missing_input_exit_2_on_one_line() -> None:
    unknown = invoke("cam", *TINY, "--alph", "0.3", PHOTO)
    assert unknown.exit_code == 2
    assert unknown.stderr.splitlines() == [
        "Error: No such option: --alph (Possible options: --alpha, --cmap, --help)",
        "Hint: see `featviz cam --help`",
    ]
    missing = invoke("cam")
    assert missing.exit_code == 2
    assert missing.stderr.splitlines() == [
        "Error: Missing argument 'inputs'.",
        "Hint: see `featviz cam --help`",
    ]


def test_featviz_own_options_and_refused_choices_are_told_in_the_same_two_lines() -> None:
    bogus = invoke("--bogus")
    assert bogus.exit_code == 2
    assert bogus.stderr.splitlines() == [
        "Error: No such option: --bogus",
        "Hint: see `featviz --help`",
    ]
    method = invoke("cam", *TINY, "-M", "nosuch", PHOTO)
    assert method.exit_code == 2
    error, hint = method.stderr.splitlines()
    assert error.startswith("Error: Invalid value for '--method' / '-M': 'nosuch' is not one of")
    assert "'gradcam'" in error and "Value error" not in error
    assert hint == "Hint: see `featviz cam --help`"


@pytest.mark.parametrize(
    ("inputs", "error"),
    [
        (["photos/cta.png"], "error: photos/cta.png: does not exist (closest: 'photos/cat.png')"),
        (["photos/*.webp"], "error: photos/*.webp: no file or folder matches this pattern"),
        ([PHOTO, "elsewhere/dog.png"], "error: elsewhere/dog.png: does not exist"),
        (["nested"], "error: nested: has no image files (it has sub-folders: add --recursive)"),
        (
            ["notes"],
            "error: notes: has no image files (featviz looks for .bmp .gif .jpeg .jpg .png .tif "
            ".tiff .webp files, any case)",
        ),
    ],
)
def test_inputs_that_give_no_images_fail_alone_with_exit_1(inputs: list[str], error: str) -> None:
    """Issue 21.5: these were usage errors (exit 2) that stopped the whole run."""
    Path("nested/deeper").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save("nested/deeper/dog.png")
    Path("notes").mkdir()
    Path("notes/readme.txt").write_text("no images here\n")
    result = invoke("cam", *TINY, *inputs, "-o", "out", "-q")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [error]
    manifest = json.loads(Path("out/manifest.json").read_text())
    assert manifest["counts"]["done"] == (1 if PHOTO in inputs else 0)


def test_output_path_that_is_a_file_exits_2() -> None:
    Path("taken").write_text("a file")
    assert_error(
        invoke("cam", *TINY, PHOTO, "-o", "taken"),
        2,
        "Error: output path 'taken' exists and is not a folder",
        "Hint: pass a folder with --out",
    )
    assert_error(
        invoke("cam", *TINY, PHOTO, "-o", "taken/out"),
        1,
        "Error: cannot create output folder 'taken/out': Not a directory",
        "Hint: choose another folder with --out",
    )


def test_unwritable_output_folder_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    locked = Path("locked")
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):  # root: permissions are not enforced; answer as for a user
        real_access = os.access

        def as_for_a_user(path: object, mode: int, **kwargs: object) -> bool:
            if Path(path) == locked and mode & os.W_OK:
                return False
            return real_access(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", as_for_a_user)
    assert_error(
        invoke("cam", *TINY, PHOTO, "-o", "locked"),
        1,
        "Error: output folder 'locked' is not writable",
        "Hint: choose another folder with --out",
    )
    assert list(locked.iterdir()) == []


# --- checkpoints ----------------------------------------------------------------------------


class _CreatesAFile:
    def __reduce__(self):
        return (exec, ("open('pwned', 'w').close()",))


def _tiny_state() -> dict[str, torch.Tensor]:
    namespace: dict = {}
    exec(compile(TINY_MODEL_SOURCE, "tiny_model.py", "exec"), namespace)
    return namespace["build"]().state_dict()


def test_checkpoint_that_would_run_code_is_refused_before_running_it() -> None:
    torch.save({"state_dict": _CreatesAFile()}, "evil.pt")
    result = invoke("cam", *TINY, "--checkpoint", "evil.pt", PHOTO, "-o", "out")
    assert result.exit_code == 1
    error, hint = result.stderr.splitlines()
    assert error.startswith(
        "Error: checkpoint 'evil.pt' needs arbitrary Python code to load, "
        "and featviz refuses to run code from a weights file (Unsupported global: GLOBAL "
    )
    assert error.endswith(")") and "\x1b" not in error  # torch's colour codes are dropped
    assert hint == "Hint: save the weights only: torch.save(model.state_dict(), 'weights.pt')"
    assert not Path("pwned").exists()


_SAVE_HINT = "Hint: save the weights with torch.save(model.state_dict(), 'weights.pt')"


def _zip_of_a_text_file(path: str) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not weights")


@pytest.mark.parametrize(
    ("write", "reason", "hint"),
    [
        (lambda: Path("w.pt").write_text("epoch 3, loss 0.25\n"), "it holds text", _SAVE_HINT),
        (lambda: Path("w.pt").write_text("conv1.weight 0.1\n"), "it holds text", _SAVE_HINT),
        (lambda: Path("w.pt").write_bytes(b""), "the file is empty", _SAVE_HINT),
        (
            lambda: Path("w.pt").write_bytes(random.Random(0).randbytes(3000)),
            "its bytes are neither torch's zip archive nor its older pickle format",
            _SAVE_HINT,
        ),
        (
            lambda: _zip_of_a_text_file("w.pt"),
            "it is a zip archive without torch's data.pkl",
            _SAVE_HINT,
        ),
        (
            lambda: Path("w.pt").write_bytes(pickle.dumps(_tiny_state())),
            "its bytes are neither torch's zip archive nor its older pickle format",
            _SAVE_HINT,
        ),
    ],
    ids=["text", "text-like-a-pickle-global", "empty", "random", "other-zip", "plain-pickle"],
)
def test_a_file_that_is_not_a_checkpoint_says_so(write, reason: str, hint: str) -> None:
    write()
    assert_error(
        invoke("cam", *TINY, "--checkpoint", "w.pt", PHOTO, "-o", "out"),
        2,
        f"Error: checkpoint 'w.pt' is not a PyTorch checkpoint: {reason}",
        hint,
    )


@pytest.mark.parametrize(
    ("zipped", "kept"),
    [(True, 300), (True, -200), (False, -50)],
    ids=["head", "all-but-the-end", "legacy-format"],
)
def test_truncated_checkpoint_is_not_a_checkpoint(zipped: bool, kept: int) -> None:
    torch.save(_tiny_state(), "full.pt", _use_new_zipfile_serialization=zipped)
    Path("cut.pt").write_bytes(Path("full.pt").read_bytes()[:kept])
    assert_error(
        invoke("cam", *TINY, "--checkpoint", "cut.pt", PHOTO, "-o", "out"),
        2,
        "Error: checkpoint 'cut.pt' is not a PyTorch checkpoint: it is cut short or damaged",
        "Hint: copy or save the file again, in full",
    )


def test_checkpoint_with_keys_that_are_not_names_is_not_a_state_dict() -> None:
    torch.save({1: torch.zeros(2)}, "w.pt")
    assert_error(
        invoke("cam", *TINY, "--checkpoint", "w.pt", PHOTO, "-o", "out"),
        1,
        "Error: checkpoint 'w.pt' holds a dict, not a state dict of tensors",
        _SAVE_HINT,
    )


def test_legacy_checkpoint_still_loads() -> None:
    torch.save(_tiny_state(), "old.pt", _use_new_zipfile_serialization=False)
    result = invoke("cam", *TINY, "--checkpoint", "old.pt", PHOTO, "-o", "out")
    assert result.exit_code == 0, result.stderr


def test_checkpoint_of_another_architecture_lists_the_keys() -> None:
    torch.save(torch.nn.Linear(3, 2).state_dict(), "other.pt")
    assert_error(
        invoke("cam", *TINY, "--checkpoint", "other.pt", PHOTO, "-o", "out"),
        1,
        "Error: checkpoint 'other.pt' does not fit this model: keys 6 missing (features.0.weight, "
        "features.0.bias, features.2.weight, features.2.bias, fc.weight, … 1 more); "
        "2 unexpected (weight, bias)",
        "Hint: check --model; for a fine-tuned head pass --num-classes N",
    )


def test_a_fitting_checkpoint_runs_and_is_recorded_in_the_manifest() -> None:
    torch.save({"model": _tiny_state()}, "good.pt")
    result = invoke("cam", *TINY, "--checkpoint", "good.pt", PHOTO, "-o", "out")
    assert result.exit_code == 0, result.stderr
    assert (
        json.loads(Path("out/manifest.json").read_text())["request"]["model"]["checkpoint"]
        == "good.pt"
    )


# --- tracebacks -----------------------------------------------------------------------------


def test_featviz_debug_shows_the_traceback_of_a_usage_error() -> None:
    args = ["cam", *TINY, "-l", "feature", PHOTO]
    quiet = invoke(*args)
    assert "Traceback" not in quiet.stderr
    debug = invoke(*args, env={"FEATVIZ_DEBUG": "1"})
    assert debug.exit_code == 2
    assert debug.stderr.startswith("Traceback (most recent call last):\n")
    assert "featviz.errors.UsageError: unknown layer 'feature'" in debug.stderr
    assert debug.stderr.splitlines()[-2:] == quiet.stderr.splitlines()


def test_an_unexpected_error_is_one_line_and_featviz_debug_shows_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something broke\n  on a second line")

    monkeypatch.setattr("featviz.run.prepare.prepare", broken)
    result = invoke("cam", *TINY, PHOTO)
    assert_error(
        result,
        1,
        "Error: internal error: RuntimeError: something broke on a second line",
        "Hint: rerun with FEATVIZ_DEBUG=1 for the traceback, and please report it",
    )
    debug = invoke("cam", *TINY, PHOTO, env={"FEATVIZ_DEBUG": "1"})
    assert debug.exit_code == 1
    assert debug.stderr.startswith("Traceback (most recent call last):\n")
    assert 'raise RuntimeError("something broke\\n  on a second line")' in debug.stderr
