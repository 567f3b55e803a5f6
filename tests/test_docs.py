"""The documentation holds: every python example of the README and of docs/ runs as written, the
README stays a front door (≤ 150 lines) linking every page of docs/, every relative link resolves,
and the demo prints the statistics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import srem_kernels.demo

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150
# SPEC.md lives beside the repository (../shared/SPEC.md from its root), not in it: a clean clone
# (CI's, .ci/run) has no such folder, so a link to it resolves by name even when it is absent.
OUTSIDE = {ROOT.parent / "shared" / "SPEC.md"}

FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
PYTHON = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _links(page: Path) -> list[str]:
    """The markdown link targets of a page, outside fenced blocks."""
    return LINK.findall(FENCE.sub("", page.read_text()))


def _relative_targets(page: Path) -> dict[str, Path]:
    """Each relative link of a page (http(s), mailto and pure #anchors left out) to the path it
    names, its #fragment stripped."""
    out = {}
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link) or link.startswith("#"):
            continue
        out[link] = (page.parent / link.split("#", 1)[0]).resolve()
    return out


def _examples(page: Path) -> list[re.Match]:
    return list(PYTHON.finditer(page.read_text()))


@pytest.mark.parametrize("page", [p for p in PAGES if _examples(p)], ids=_name)
def test_python_examples_run(page):
    """A page's ```python blocks, in order, in one namespace of their own (a block may use what an
    earlier block of its page defined); tracebacks carry the page's own line numbers."""
    text = page.read_text()
    namespace = {"__name__": f"docs:{_name(page)}"}
    for block in _examples(page):
        first_line = text.count("\n", 0, block.start(1))
        exec(compile("\n" * first_line + block.group(1), str(page), "exec"), namespace)


def test_readme_has_a_python_example():
    assert _examples(README), "the README has no python example"


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to a page under docs/"


def test_readme_links_every_docs_page():
    linked = set(_relative_targets(README).values())
    missing = [_name(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
    broken = [link for link, path in _relative_targets(page).items() if not path.exists() and path not in OUTSIDE]
    assert not broken, f"{_name(page)}: links to missing files {broken}"


def test_link_extraction(tmp_path):
    """What the link tests check: relative targets with their fragment stripped, images included;
    not URLs, pure anchors or links inside fenced blocks."""
    page = tmp_path / "page.md"
    page.write_text(
        '[a](https://x.org/a.md) [b](#top) [c](c.md#part) ![d](img/d.png "title")\n'
        "```text\n[e](e.md)\n```\n"
    )
    assert _relative_targets(page) == {"c.md#part": tmp_path / "c.md", "img/d.png": tmp_path / "img" / "d.png"}
    readme = set(_relative_targets(README).values())
    assert (ROOT / "docs" / "api.md") in readme and readme & OUTSIDE  # the README's own links are seen


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_names_the_sensitivity_options():
    text = README.read_text()
    for option in ('"weight"', '"margin"', '"clean"', '"rank"', "lambda_hard"):
        assert option in text, option


def test_demo_prints_every_statistic(capsys):
    srem_kernels.demo.main(["--batch", "32", "--dim", "8"])
    out = capsys.readouterr().out
    assert "[reference] loss =" in out
    for name in srem_kernels.SREMStats.names():
        if not name.endswith("_index"):
            assert f"\n  {name} " in out, name
