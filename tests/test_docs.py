"""The README's example runs as written, and the demo prints the statistics."""

from __future__ import annotations

import re
from pathlib import Path

import srem_kernels.demo

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_demo_prints_every_statistic(capsys):
    srem_kernels.demo.main(["--batch", "32", "--dim", "8"])
    out = capsys.readouterr().out
    assert "[reference] loss =" in out
    for name in srem_kernels.SREMStats.names():
        if not name.endswith("_index"):
            assert f"\n  {name} " in out, name
