"""The docs name tests that exist: every `tests/x.py::test_name` (and `::test_name` after it) in docs/*.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`(tests/\w+\.py)((?:::\w+)?)(?:\[[^\]`]*\])?`|`::(\w+)(?:\[[^\]`]*\])?`")


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def references(text: str) -> list[tuple[str, str | None]]:
    """(test file, test name or None) for each reference; a bare `::name` belongs to the file named before it."""
    found, current = [], None
    for match in REFERENCE.finditer(text):
        if match.group(1):
            current = match.group(1)
            found.append((current, match.group(2)[2:] or None))
        elif current is not None:
            found.append((current, match.group(3)))
    return found


def test_every_test_the_docs_name_exists():
    missing, checked = [], 0
    for doc in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        for file, name in references(doc.read_text()):
            checked += 1
            path = ROOT / file
            if not path.is_file() or (name is not None and name not in defined_tests(path)):
                missing.append(f"{doc.name}: {file}::{name}")
    assert checked > 40, "the docs cite the tests of every fault (docs/reliability.md)"
    assert not missing, "\n".join(missing)


def test_the_reference_reader_follows_the_file_named_before():
    text = "`tests/test_a.py::test_one`, `::test_two[x]`; `tests/test_b.py` (`::test_three`)"
    assert references(text) == [("tests/test_a.py", "test_one"), ("tests/test_a.py", "test_two"),
                                ("tests/test_b.py", None), ("tests/test_b.py", "test_three")]
