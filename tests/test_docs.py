"""The documentation site builds offline with every warning an error, and says what the code says.

``mkdocs build --strict`` (mkdocs.yml sets link and anchor validation to warnings) fails on a
broken internal link or anchor, a missing snippet file, an unknown table marker and a bad
mkdocstrings reference. The checks below read the built HTML: the method table and the option
tables are generated from the registry and the click command (docs/hooks.py), so each must list
exactly what the code has; the pages load nothing from the network; README.md names every
command and links only to pages that exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    # The package's end-of-life banner is not a build warning; keep it out of the output.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def generated_table(page: Path, css_class: str) -> list[str]:
    """The HTML of each table that docs/hooks.py generated with ``css_class`` on ``page``."""
    html = page.read_text(encoding="utf-8")
    return re.findall(rf'<div class="featviz-table {css_class}">(.*?)</div>', html, re.DOTALL)


def cells(row_html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td>(.*?)</td>", row_html)]


def test_the_method_table_lists_every_registered_method_with_its_flags(site: Path) -> None:
    from featviz.cam.registry import method_info, method_names

    (table,) = generated_table(site / "methods.html", "featviz-methods")
    rows = [cells(row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL)[1:]]
    assert [row[0] for row in rows] == method_names()
    for row in rows:
        name, flags = row[0], row[2:]
        info = method_info(name)
        expected = [
            info.needs_gradients,
            info.class_specific,
            info.needs_attention,
            info.pixel_level,
            info.signed,
            info.random,
        ]
        assert flags == ["✓" if flag else "–" for flag in expected], name


def commands_and_pages() -> list[tuple[list[str], str]]:
    """Every featviz command (worker's sub-commands each), with the page that documents it."""
    from featviz.cli.app import click_command

    group = click_command()
    context = group.context_class(group)
    found = []
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if hasattr(command, "list_commands"):  # a group (Typer's click is its own copy)
            found += [([name, sub], name) for sub in command.list_commands(context)]
        else:
            found.append(([name], name))
    return found


@pytest.mark.parametrize(("path", "page"), commands_and_pages(), ids=lambda x: str(x))
def test_each_command_page_lists_every_option(site: Path, path: list[str], page: str) -> None:
    from featviz.cli.app import click_command

    command = click_command()
    for name in path:
        command = command.get_command(command.context_class(command), name)
    html = "".join(generated_table(site / "commands" / f"{page}.html", "featviz-options"))
    listed = set(re.findall(r"--[a-z][a-z0-9-]*", html))
    options = {
        opt
        for param in command.params
        if param.param_type_name == "option" and not getattr(param, "hidden", False)
        for opt in param.opts
        if opt.startswith("--")
    }
    assert "--help" in listed
    assert options <= listed, sorted(options - listed)


def test_the_reference_page_is_rendered_from_the_docstrings(site: Path) -> None:
    html = (site / "reference.html").read_text(encoding="utf-8")
    for name in ("FeatvizError", "UsageError", "RunError", "InputError", "closest"):
        assert f'id="featviz.errors.{name}"' in html, name
    assert "the CLI exits with when this ends the run" in html  # FeatvizError's docstring


def test_pages_load_nothing_from_the_network(site: Path) -> None:
    """No web fonts, scripts, styles or pictures from elsewhere: the site reads offline, and
    the theme's Google Fonts (theme.font) stay off."""
    external = re.compile(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//')
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    offending = [str(page.relative_to(site)) for page in pages if external.search(page.read_text())]
    assert offending == []


def test_the_readme_names_every_command_and_links_only_to_pages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in {page for _, page in commands_and_pages()}:
        assert f"featviz {name}" in readme, name
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert local, "README.md links to no docs page"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []
