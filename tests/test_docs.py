"""docs/walkthrough.md, docs/pitfalls.md, docs/theory.md and docs/geometry.md run, and print
exactly what they show.

The convention the documents follow:

* every ```python block runs, in document order, in ONE namespace per document (a block
  may use the names earlier blocks defined);
* a ```text block that comes right after a python block (only blank lines between them)
  is that block's expected output: everything it prints to stdout, compared exactly;
* a python block with no ```text block after it must print nothing.

So the numbers the documents quote are computed by reptile_np at every test run, and a
change in them fails here with a diff of the expected and the printed output.
"""
import contextlib
import difflib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOCUMENTS = {"walkthrough.md": 8, "pitfalls.md": 8, "theory.md": 1, "geometry.md": 1}
"""Each executed document and the fewest python blocks it has (fewer: the pattern broke)."""
_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```\n(?:[ \t]*\n)*(?:^```text\n(?P<out>.*?)^```$)?",
                    flags=re.MULTILINE | re.DOTALL)


def doc_blocks(text):
    """``(line, code, expected)`` of each ```python block of ``text``, in order.

    ``line`` is the 1-based line of the block's fence; ``expected`` is the text of the
    ```text block right after it, or "" when there is none.
    """
    return [(text.count("\n", 0, match.start()) + 1, match.group("code"), match.group("out") or "")
            for match in _BLOCK.finditer(text)]


def run_blocks(name, blocks):
    """Run ``blocks`` in one namespace; yield ``(line, expected, printed)`` for each."""
    namespace = {"__name__": "__main__"}
    for line, code, expected in blocks:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{name}:{line}", "exec"), namespace)
        yield line, expected, printed.getvalue()


def test_the_convention_pairs_code_with_its_output():
    text = ("```python\nprint(1)\n```\n\n```text\n1\n```\n"
            "prose\n```python\nx = 2\n```\nprose\n```text\nnot an output\n```\n")
    assert doc_blocks(text) == [(1, "print(1)\n", "1\n"), (9, "x = 2\n", "")]


@pytest.mark.parametrize("name", DOCUMENTS)
def test_document_prints_what_it_shows(name):
    blocks = doc_blocks((DOCS / name).read_text(encoding="utf-8"))
    assert len(blocks) >= DOCUMENTS[name]
    for line, expected, printed in run_blocks(name, blocks):
        diff = "".join(difflib.unified_diff(expected.splitlines(True), printed.splitlines(True),
                                            f"{name}:{line} (shown)", f"{name}:{line} (printed)"))
        assert printed == expected, f"{name}:{line}: the block's output changed\n{diff}"


_CITED_TEST = re.compile(r"tests/(test_\w+\.py)::(\w+)")


def test_every_test_the_docs_cite_exists():
    """docs/*.md name the tests that check each derivation as ``tests/file.py::test``; a
    renamed or deleted test must not leave the docs pointing at nothing."""
    cited = {(name, test) for path in DOCS.glob("*.md")
             for name, test in _CITED_TEST.findall(path.read_text(encoding="utf-8"))}
    assert len(cited) >= 30   # derivations.md alone cites more; fewer: the pattern broke
    tests = DOCS.parent / "tests"
    missing = [f"tests/{name}::{test}" for name, test in sorted(cited)
               if not (tests / name).is_file()
               or f"def {test}(" not in (tests / name).read_text(encoding="utf-8")]
    assert not missing, f"the docs cite tests that do not exist: {missing}"
