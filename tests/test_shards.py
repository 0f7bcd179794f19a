"""--shard K/N: N shards cover every input exactly once; each writes its own manifest, and the
folder's manifest.json says which shards of the job have finished."""

from __future__ import annotations

import json
from pathlib import Path, PurePath

import pytest
from conftest import record_of
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.inputs.shards import Shard, shard_of

_PARTS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1
)


@given(
    st.lists(st.lists(_PARTS, min_size=1, max_size=4), min_size=1, max_size=60, unique_by=tuple),
    st.integers(1, 17),
)
def test_n_shards_hold_every_output_path_exactly_once(parts, count: int) -> None:
    paths = [PurePath(*p) for p in parts]
    shards = [Shard(k, count) for k in range(1, count + 1)]
    for path in paths:
        assert [shard.holds(path) for shard in shards].count(True) == 1
        assert shard_of(path, count) == shard_of(PurePath(path.as_posix()), count)  # stable


def test_shards_split_a_folder_without_gaps_or_overlaps(
    tmp_path: Path, tiny_model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for index in range(23):
        folder = Path("in") / f"part{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16), (index * 10, 50, 90)).save(folder / f"{index}.png")
    common = ["cam", "-m", f"{tiny_model_file}:build", "-r", "in", "-o", "out", "--json"]
    seen: list[str] = []
    for k in (1, 2, 3):
        done = CliRunner().invoke(app, [*common, "--shard", f"{k}/3"])
        assert done.exit_code == 0, done.output
        inputs = [json.loads(line)["input"] for line in done.stdout.splitlines()]
        assert inputs and all(Shard(k, 3).holds(PurePath(i[3:]).with_suffix("")) for i in inputs)
        seen += inputs
        manifest = json.loads(Path("out/manifest.json").read_text())
        assert manifest["request"]["run"]["shard"] == {"index": k, "count": 3}
        assert manifest["shards"]["finished"] == list(range(1, k + 1))
        assert manifest["shards"]["unfinished"] == list(range(k + 1, 4))
    assert sorted(seen) == sorted(str(p) for p in Path("in").rglob("*.png"))
    assert manifest["shards"]["counts"] == {"done": 23, "failed": 0, "skipped": 0}
    runs = sorted(Path("out/runs").glob("*.json"))
    assert [run.name.rsplit("-shard-", 1)[1] for run in runs] == [
        "1-of-3.json",
        "2-of-3.json",
        "3-of-3.json",
    ]
    for image in Path("in").rglob("*.png"):
        assert record_of(Path("out"), image.relative_to("in").with_suffix(""))
    # The gallery, rebuilt by each shard from every record, lists all 23.
    assert Path("out/gallery/data.js").read_text().count('"name":') == 23
    # A rerun of one shard with --skip-existing finds its own images done.
    again = CliRunner().invoke(app, [*common, "--shard", "2/3", "--skip-existing"])
    assert again.exit_code == 0
    assert all(json.loads(line)["skipped"] for line in again.stdout.splitlines())


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_a_bad_shard_is_a_usage_error(text: str, tiny_model_file: Path) -> None:
    done = CliRunner().invoke(
        app, ["cam", "-m", f"{tiny_model_file}:build", "x.png", "--shard", text]
    )
    assert done.exit_code == 2
    assert done.stderr.splitlines() == [
        f"Error: Invalid value for '--shard': --shard '{text}': expected K/N with 1 ≤ K ≤ N "
        "(e.g. --shard 1/4 … --shard 4/4; in a Slurm array: "
        "--shard $((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT)",
        "Hint: see `featviz cam --help`",
    ]
