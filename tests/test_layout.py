"""The output folder's layout: what one run writes never overwrites or hides another's, whatever
the models, settings and input names (featviz.sinks: layout, variants; featviz.inputs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL_SOURCE
from PIL import Image
from typer.testing import CliRunner

import featviz.sinks.layout
from featviz.cli.app import app
from featviz.errors import RunError
from featviz.explainer.names import MAX_NAME_BYTES, safe_name
from featviz.sinks.layout import write_atomic


def invoke(*args: str | Path, input: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def json_lines(result) -> dict[str, dict]:
    return {line["input"]: line for line in map(json.loads, result.stdout.splitlines())}


def gallery_data(out: Path) -> dict:
    text = (out / "gallery" / "data.js").read_text()
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


@pytest.fixture(autouse=True)
def _workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("tiny.py").write_text(TINY_MODEL_SOURCE)
    Path("other.py").write_text(TINY_MODEL_SOURCE.replace("manual_seed(0)", "manual_seed(1)"))
    Image.new("RGB", (40, 30), (200, 40, 90)).save("img.png")


def test_a_second_model_never_overwrites_the_first_ones_pictures() -> None:
    """Issue 21.1: resnet18 then resnet50 into one folder both wrote
    share/img/cam/gradcam/layer4/281_tabby.png; the gallery showed resnet50's only."""
    common = ["--weights", "none", "-t", "tabby", "img.png", "-o", "share", "--json"]
    first = json_lines(invoke("cam", "-m", "resnet18", *common))["img.png"]
    second = json_lines(invoke("cam", "-m", "resnet50", *common))["img.png"]
    assert first["outputs"] == ["share/resnet18@none/img/cam/gradcam/layer4/281_tabby.png"]
    assert second["outputs"] == ["share/resnet50@none/img/cam/gradcam/layer4/281_tabby.png"]
    pictures = [np.asarray(Image.open(run["outputs"][0])) for run in (first, second)]
    assert not np.array_equal(*pictures)  # two different pictures, both still there
    data = gallery_data(Path("share"))
    [card] = data["images"]
    assert sorted(output[0] for output in card["outputs"]) == ["resnet18@none", "resnet50@none"]
    assert data["models"]["resnet18@none"].startswith("resnet18, weights none")
    assert data["models"]["resnet50@none"].startswith("resnet50, weights none")


def test_other_settings_or_another_file_of_the_same_name_take_a_folder_of_their_own() -> None:
    def overlay(*args: str) -> str:
        result = invoke("cam", *args, "--input-size", "32", "img.png", "-o", "o", "--json")
        assert result.exit_code == 0, result.stderr
        folders = {path.split("/")[1] for path in json_lines(result)["img.png"]["outputs"]}
        [folder] = folders
        return folder

    Path("sub").mkdir()
    Path("sub/tiny.py").write_text(TINY_MODEL_SOURCE.replace("manual_seed(0)", "manual_seed(2)"))
    assert overlay("-m", "tiny.py:build") == "tiny"
    assert overlay("-m", "tiny.py:build", "-M", "layercam", "--heatmap") == "tiny"  # more files
    assert overlay("-m", "tiny.py:build", "--alpha", "0.3") == "tiny-2"  # other pixels
    assert overlay("-m", "sub/tiny.py:build") == "tiny-3"  # another model, the same name
    assert overlay("-m", "./tiny.py:build", "--alpha", "0.3") == "tiny-2"  # the same again
    assert overlay("-m", "other.py:build", "--seed", "4") == "other"
    claims = json.loads(Path("o/models/tiny-3.json").read_text())
    assert claims["model"]["spec"] == f"{Path('sub/tiny.py').resolve()}:build"
    assert json.loads(Path("o/models/tiny-2.cam.json").read_text())["options"]["alpha"] == 0.3


def test_input_names_never_meet_the_names_featviz_keeps_for_itself() -> None:
    """Issue 21.2: inputs called gallery.png, runs.png, filters.png and sub/records.png had
    their outputs in out/gallery/…, out/runs/…; the gallery hid four images, showed two bogus."""
    Path("in/sub").mkdir(parents=True)
    names = ["gallery", "runs", "filters", "records", "models", "index", "manifest", "sub"]
    for index, name in enumerate(names):
        Image.new("RGB", (40, 30), (index * 30, 90, 60)).save(f"in/{name}.png")
    Image.new("RGB", (40, 30), (9, 9, 9)).save("in/sub/records.png")
    result = invoke("cam", "-m", "tiny.py:build", "--input-size", "32", "-r", "in", "-o", "out")
    assert result.exit_code == 0, result.stderr
    inputs = [f"in/{name}.png" for name in names] + ["in/sub/records.png"]
    data = gallery_data(Path("out"))
    assert sorted(card["name"] for card in data["images"]) == sorted(inputs)
    assert all(len(card["outputs"]) == 1 for card in data["images"])
    manifest = json.loads(Path("out/manifest.json").read_text())
    assert manifest["counts"]["done"] == len(inputs)
    assert sorted(p.name for p in Path("out").iterdir()) == [
        ".featviz-output", "gallery", "index.html", "manifest.json", "models", "records",
        "runs", "tiny",
    ]  # fmt: skip
    assert sorted(p.name for p in Path("out/tiny/sub").iterdir()) == ["records"]
    assert Path("out/tiny/sub-2/cam").is_dir()  # in/sub.png, beside the folder in/sub


def test_an_output_folder_inside_the_inputs_is_never_read_back() -> None:
    """Issue 21.3: `-r in -o in/out` twice explained its own thumbnails the second time."""
    Path("in").mkdir()
    for index in range(3):
        Image.new("RGB", (40, 30), (index * 60, 90, 60)).save(f"in/{index}.png")
    args = ["cam", "-m", "tiny.py:build", "--input-size", "32", "-r", "in", "-o", "in/out"]
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == second.exit_code == 0
    assert "Note:" not in first.stderr
    assert len(second.stdout.splitlines()) == 3
    assert second.stderr.splitlines()[-1] == (
        "Note: left out in/out: a featviz output folder is never read as input"
    )
    pattern = invoke(*args[:-4], "in/**/*.png", "-o", "in/out")
    assert len(pattern.stdout.splitlines()) == 3, pattern.stdout
    named = invoke(*args[:-4], "in/out", "-o", "elsewhere")
    assert named.exit_code == 1
    assert "error: in/out: is a featviz output folder, which is never read as input" in (
        named.stderr
    )


def test_a_missing_input_fails_alone_whichever_way_it_arrived() -> None:
    """Issue 21.5: a missing path on the command line stopped the run (exit 2)."""
    Path("empty").mkdir()
    args = ["cam", "-m", "tiny.py:build", "--input-size", "32", "-o", "o", "--json"]
    named = invoke(*args, "img.png", "nosuch.png", "empty", "no*.jpg", "img2.png")
    assert named.exit_code == 1
    lines = json_lines(named)
    assert lines["img.png"]["error"] is None
    assert lines["nosuch.png"]["error"] == "nosuch.png: does not exist"
    assert lines["empty"]["error"] == (
        "empty: has no image files (featviz looks for .bmp .gif .jpeg .jpg .png .tif .tiff .webp "
        "files, any case)"
    )
    assert lines["no*.jpg"]["error"] == "no*.jpg: no file or folder matches this pattern"
    assert lines["img2.png"]["error"] == "img2.png: does not exist (closest: 'img.png')"
    streamed = invoke(*args, "-", input="img.png\nnosuch.png\n")
    assert streamed.exit_code == 1
    assert json_lines(streamed)["nosuch.png"]["error"] == "nosuch.png: does not exist"


def test_temporary_files_are_created_afresh_and_never_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21.6: a link planted at `.<name>.<pid>.partial` made featviz overwrite its target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "shared"
    folder.mkdir()
    final = folder / "x.png"
    (folder / f".x.png.{os.getpid()}.partial").symlink_to(victim)  # the old, guessable name
    final.symlink_to(victim)
    write_atomic(final, b"new bytes")
    assert victim.read_text() == "precious"
    assert not final.is_symlink() and final.read_bytes() == b"new bytes"
    # Even a link at the very name picked (random bits) is refused, not followed.
    monkeypatch.setattr(featviz.sinks.layout.secrets, "token_hex", lambda n: "cafe")
    (folder / f".y.png.{os.getpid()}.cafe.partial").symlink_to(victim)
    with pytest.raises(RunError, match=r"^cannot write '.*/y.png': File exists$"):
        write_atomic(folder / "y.png", b"more")
    assert victim.read_text() == "precious"


def test_long_class_names_are_cut_and_stay_unique() -> None:
    """Issue 21.9: a 235-character label stopped the run: File name too long."""
    long = "a very long class name " * 10
    Path("labels.txt").write_text("\n".join([long + "one", long + "two", "c", "d", "e"]))
    result = invoke(
        "cam", "-m", "tiny.py:build", "--input-size", "32", "--labels", "labels.txt",
        "-t", "0", "-t", "1", "img.png", "-o", "o", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    names = [Path(path).name for path in json_lines(result)["img.png"]["outputs"]]
    assert len(set(names)) == 2
    assert all(len(name.encode()) <= MAX_NAME_BYTES + len(".png") for name in names)
    assert names[0].startswith("0_a_very_long_class_name_a_very")
    assert safe_name("x" * 300) != safe_name("x" * 299)
    assert safe_name("é" * 150).encode("utf-8").decode("utf-8")  # cut between characters
