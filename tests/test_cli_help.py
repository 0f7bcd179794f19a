"""Every command's --help reads well in an 80-column terminal: nothing lost to markup, no
Typer type names as metavars, a description column wide enough to read."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from featviz.cam.registry import method_names
from featviz.cli.app import app

COMMANDS = [
    [],
    ["maps"],
    ["cam"],
    ["compare"],
    ["score"],
    ["sanity"],
    ["layers"],
    ["models"],
    ["filters"],
    ["worker"],
    ["worker", "start"],
    ["worker", "stop"],
    ["worker", "status"],
]


def help_text(command: list[str], columns: int = 80) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "featviz")
@pytest.mark.parametrize("columns", [80, 120])
def test_help_fits_the_terminal_and_shows_no_type_names(command: list[str], columns: int) -> None:
    text = help_text(command, columns)
    too_long = [line for line in text.splitlines() if len(line) > columns]
    assert too_long == []
    for typer_metavar in ("<bool>", "<list[", "<int", "<float", "<str>", "<path>", "[["):
        assert typer_metavar not in text
    assert not re.search(r"-[\w-]+ <[^>]+>", text)  # an option followed by a <type>
    assert "╭" not in text and "│" not in text  # no boxes


def test_tensorboard_help_keeps_the_extra_name() -> None:
    assert "featviz[tensorboard]" in " ".join(help_text(["cam"]).split())


def test_top_line_speaks_of_vision_models_not_only_convolutional_ones() -> None:
    assert "convolutional" not in help_text([]).splitlines()[2]
    assert help_text([]).splitlines()[2].strip().startswith("See what a vision model sees")


def test_cam_help_is_short_and_its_descriptions_wide_enough_to_read() -> None:
    lines = help_text(["cam"]).splitlines()
    # 302 lines with Typer's rich panels; the options (Ray's and the prompts' included) take
    # 127 now, and the method list grows with the registry (≤ 3 lines a method, and its note).
    methods = lines.index("Methods (--method):")
    assert methods < 135
    assert len(lines) - methods < 3 * len(method_names()) + 8
    alpha = next(line for line in lines if line.lstrip().startswith("--alpha"))
    assert len(alpha) - alpha.index("Heatmap") >= 45  # was 18 characters in the boxes


def test_options_are_grouped_with_the_methods_listed_last() -> None:
    lines = help_text(["cam"]).splitlines()
    headings = [line for line in lines if line and not line.startswith(" ")]
    assert headings[1:] == [
        "Arguments:",
        "Options:",
        "Input:",
        "Ray cluster:",
        "Model:",
        "Output:",
        "Methods (--method):",
    ]
    # The summaries start in one column after the longest method name.
    [entry] = [line for line in lines if line.startswith("  gradcam++ ")]
    assert entry.split(None, 1)[1].startswith("gradients at the layer, 2nd/3rd-order weighted;")
    longest = max(len(name) for name in method_names())
    assert entry.index("gradients") == 2 + longest + 2


def test_usage_lines_name_arguments_as_click_does() -> None:
    assert help_text(["cam"]).startswith("Usage: featviz cam [OPTIONS] INPUTS...\n")
    assert help_text(["models"]).startswith("Usage: featviz models [OPTIONS] [FILTER]\n")


def test_words_with_hyphens_are_not_broken_across_lines() -> None:
    text = help_text(["cam"])
    assert re.search(r"\w-\n", text) is None
    assert "--check-precision" in text and "--no-check-precision" not in text  # off unless given
    assert "--gallery / --no-gallery" in text  # on unless refused: --no-gallery shown


def test_a_flag_off_by_default_still_takes_its_no_form() -> None:
    result = CliRunner().invoke(app, ["layers", "-m", "alexnet", "--no-check-precision"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [[], ["worker"]], ids=["featviz", "worker"])
def test_a_group_without_a_command_shows_its_help_on_stderr(command: list[str]) -> None:
    result = CliRunner().invoke(app, command, env={"COLUMNS": "80"})
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"Usage: {' '.join(['featviz', *command])} [OPTIONS] COMMAND")
    assert "Error:" not in result.stderr and "Commands:" in result.stderr
