"""examples/notebook.py, the notebook-style tour of the library, runs top to bottom as it is
(its own asserts check that each map sits on its object)."""

from __future__ import annotations

import runpy

import pytest
from conftest import ROOT


def test_the_notebook_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # its cells name files from the repository's root
    namespace = runpy.run_path(str(ROOT / "examples" / "notebook.py"), run_name="notebook")
    cat, cup = namespace["cat"], namespace["cup"]
    assert (cat.label, cup.label) == ("tabby", "espresso")
    assert len(namespace["maps"]) == 4
    assert list(namespace["batch"]["label"]) == [namespace["maps"][0].label] * 2
