"""Every ```python block of README.md runs as pasted, each in a fresh namespace.

A block that needs an optional extra says so on a line of its own, ``# needs: torch``;
it is skipped when that extra is not installed. No block may need a downloaded data set:
the snippets build their inputs (random arrays, synthetic glyphs) themselves.
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS = {"torch": "torch"}
"""The ``# needs:`` markers a block may carry, each with the module it needs."""


def python_blocks(text):
    """``(line, code)`` of each ```python block of ``text``, line being its fence's (1-based)."""
    fences = re.finditer(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [(text.count("\n", 0, match.start()) + 1, match.group(1)) for match in fences]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_its_python_blocks():
    # The API and the interop snippets; fewer would mean the pattern above stopped matching.
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs_as_pasted(line, code):
    for need in re.findall(r"^# needs: (\w+)$", code, flags=re.MULTILINE):
        assert need in NEEDS, f"README.md:{line}: unknown marker '# needs: {need}'"
        pytest.importorskip(NEEDS[need])
    # A fresh namespace per block: a block may not lean on names an earlier one defined.
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__main__"})
