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


# ------------------------------------------------------------------------------------------------- paths and numbers

TOP_FILES = ("train.py", "evaluate.py", "sweep.py", "pyproject.toml", "constraints.txt", "README.md")
PATH = re.compile(r"(?<![\w/~.-])(?:\.\./)?((?:cifar_lit|benchmarks|configs|docs|tests|notebooks|\.ci)/[\w./*{},<>-]*"
                  r"[\w*}]|(?:" + "|".join(re.escape(name) for name in TOP_FILES) + r")(?![\w/]))")


def named_paths(text: str) -> set[str]:
    """Every path into the repository a page names (in code, a link or prose), as written: folders, files, globs."""
    return {match.group(1) for match in PATH.finditer(text)}


def expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    return [expanded for choice in match.group(1).split(",")
            for expanded in expand_braces(pattern[:match.start()] + choice + pattern[match.end():])]


def path_problem(named: str) -> str | None:
    """None when `named` is there (a glob: exactly one file); else what is wrong."""
    if "<" in named:  # a pattern for files a command writes (gpu-lease-<device>-<date>.json): the folder must exist
        named = named[: named.index("<")].rsplit("/", 1)[0]
    for pattern in expand_braces(named):
        if "*" in pattern:
            matches = sorted(ROOT.glob(pattern))
            if len(matches) != 1:
                return f"{pattern} matches {len(matches)} files"
        elif not (ROOT / pattern).exists():
            return f"{pattern} does not exist"
    return None


def test_every_path_the_docs_name_exists_and_every_record_glob_matches_one_file():
    problems, checked = [], 0
    for doc in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        for named in sorted(named_paths(doc.read_text())):
            checked += 1
            problem = path_problem(named.split("::")[0])
            if problem:
                problems.append(f"{doc.name}: {problem}")
    assert checked > 50
    assert not problems, "\n".join(problems)


def test_the_path_reader_finds_paths_in_code_links_and_prose():
    text = ("see `benchmarks/results/data_path-*.json`, [picture](docs/app.png), [x](../configs/fast85.yaml) and "
            "python train.py --gpus 1; not lightning_logs/version_0/summary.json nor ~/docs/x or my_docs/y.md.")
    assert named_paths(text) == {"benchmarks/results/data_path-*.json", "docs/app.png", "configs/fast85.yaml",
                                 "train.py"}
    assert path_problem("benchmarks/results/data_path-*.json") == "benchmarks/results/data_path-*.json matches 3 files"
    assert path_problem("benchmarks/gpu_measurements.sh") == "benchmarks/gpu_measurements.sh does not exist"
    assert path_problem("benchmarks/results/framework_overhead-*-{before,after}-*.json") is None


def test_the_numbers_the_docs_quote_from_records_are_the_records():
    """The tables of numbers are made from the records by benchmarks/doc_tables.py: a page whose table differs from
    today's records (a number typed in, a record replaced) fails here; `python benchmarks/doc_tables.py --write`
    puts the records' numbers back."""
    import runpy

    tables = runpy.run_path(str(ROOT / "benchmarks" / "doc_tables.py"))
    found = {}
    for page in tables["PAGES"]:
        for name, body in tables["marked_tables"](page.read_text()).items():
            found[name] = page.name
            assert body == tables["TABLES"][name](), f"{page.name}: the table {name} is not what the records say"
    assert {"results", "cpu-speed", "h100"} <= set(found), found


def test_the_readme_reads_in_two_minutes_with_its_contents_first():
    text = (ROOT / "README.md").read_text()
    assert len(re.findall(r"\S+", text)) <= 2000, "at most 2,000 words: depth goes to docs/"
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    contents = text[: text.index("\n## ")]
    assert "**Contents:**" in contents
    for section in sections:
        anchor = "#" + re.sub(r"[^\w\- ]", "", section.lower()).replace(" ", "-")
        assert f"]({anchor})" in contents, f"the contents link to {section}"
