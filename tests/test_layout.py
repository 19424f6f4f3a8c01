"""The package's layout rules (docs/architecture.md): which rooms there are, and that imports only run downwards."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cifar_lit"

# Bottom to top; a module may import its own room and the rooms of lower layers, nothing else.
LAYERS = (
    ("phases", "lightning_compat", "models"),
    ("reliability",),
    ("hardware",),
    ("training",),
    ("data",),
    ("reporting",),
    ("run",),
    ("bench", "app", "sweep"),
)
LAYER_OF = {room: depth for depth, rooms in enumerate(LAYERS) for room in rooms}
TOP_LEVEL_FILES = {"__init__.py", "phases.py", "lightning_compat.py"}


def room_of(module: str) -> str:
    """'cifar_lit.reporting.summary' -> 'reporting'; 'cifar_lit.phases' -> 'phases'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def project_imports(path: Path) -> set[str]:
    """Every cifar_lit module `path` imports, at any depth of the file (type-checking imports included)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return imports_in(path.read_text(), module, path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("cifar_lit"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")[: -node.level] if not is_package else module.split(".")
                base = ".".join([*package, base] if base else package)
            if base.startswith("cifar_lit"):
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names
                             if (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/")).with_suffix(".py").exists())
    return found


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def test_the_top_level_holds_only_the_shared_files_and_the_rooms():
    files = {p.name for p in PACKAGE.iterdir() if p.is_file() and p.suffix == ".py"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files <= TOP_LEVEL_FILES
    assert folders <= set(LAYER_OF), f"a room not in docs/architecture.md: {folders - set(LAYER_OF)}"
    for folder in folders:
        init = PACKAGE / folder / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"{folder}/ says what it is for"


def test_no_module_imports_from_a_room_above_its_own():
    upward = []
    for name, path in modules().items():
        room = room_of(name)
        if not room or room == "__init__":
            continue
        for imported in project_imports(path):
            other = room_of(imported)
            if other and other != room and (other not in LAYER_OF or LAYER_OF[other] >= LAYER_OF[room]):
                upward.append(f"{name} imports {imported}")
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycles():
    graph = {name: {m for m in project_imports(path) if m in modules() and m != name}
             for name, path in modules().items()}
    visiting, done, cycles = set(), set(), []

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append(" -> ".join([*trail[trail.index(node):], node]))
            return
        visiting.add(node)
        for nxt in sorted(graph.get(node, ())):
            if not nxt.endswith("__init__"):
                visit(nxt, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_plain_relative_and_nested_imports():
    """A control: the import reader finds a plain, a relative and a function-level import of the project."""
    source = ("from cifar_lit.run import train\nfrom ..reporting import summary\n"
              "def f():\n    import cifar_lit.bench.host_sync\n")
    found = imports_in(source, "cifar_lit.data.probe", is_package=False)
    assert {"cifar_lit.run.train", "cifar_lit.reporting.summary", "cifar_lit.bench.host_sync"} <= found


def test_the_project_root_is_the_checkout_that_holds_the_commands():
    from cifar_lit.reporting.provenance import PROJECT_ROOT

    assert (PROJECT_ROOT / "train.py").is_file() and (PROJECT_ROOT / "configs" / "default.yaml").is_file()


# ------------------------------------------------------------------------------------------------- signatures

MOST_POSITIONAL = 4  # past four, parameters are taken by keyword: two of one type swapped would be silently wrong


def lightning_hooks() -> set[str]:
    """Methods Lightning calls with its own argument order: their signatures stay as Lightning defines them."""
    import pytorch_lightning as pl

    return (set(dir(pl.Callback)) | set(dir(pl.LightningModule)) | set(dir(pl.LightningDataModule))) - {"__init__"}


def long_positional_signatures(source: str, hooks: set[str]) -> list[str]:
    """`name (N positional)` for each function of `source` with more than MOST_POSITIONAL positional parameters
    (self and cls aside), and `name (N fields)` for each dataclass of more than MOST_POSITIONAL fields without
    kw_only=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in hooks:
            positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
            if len(positional) > MOST_POSITIONAL:
                found.append(f"{node.name} ({len(positional)} positional)")
        elif isinstance(node, ast.ClassDef):
            decorators = [ast.unparse(decorator) for decorator in node.decorator_list]
            fields = sum(isinstance(statement, ast.AnnAssign) for statement in node.body)
            if any(d.startswith("dataclass") for d in decorators) and fields > MOST_POSITIONAL and not any(
                    "kw_only=True" in d for d in decorators):
                found.append(f"{node.name} ({fields} fields)")
    return found


def test_functions_and_dataclasses_take_what_is_past_four_by_keyword():
    hooks = lightning_hooks()
    found = [f"{path.relative_to(PACKAGE.parent)}: {what}" for path in sorted(modules().values())
             for what in long_positional_signatures(path.read_text(), hooks)]
    assert not found, "\n".join(found)


def test_the_signature_rule_sees_long_functions_and_dataclasses():
    """A control: the reader finds a five-parameter function and a five-field dataclass, and lets a hook and a
    keyword-only signature pass."""
    source = ("def five(a, b, c, d, e): pass\ndef fine(a, b, c, d, *, e): pass\n"
              "def on_train_batch_end(self, trainer, module, outputs, batch, index): pass\n"
              "@dataclass\nclass Wide:\n    a: int\n    b: int\n    c: int\n    d: int\n    e: int\n"
              "@dataclass(kw_only=True)\nclass Named:\n    a: int\n    b: int\n    c: int\n    d: int\n    e: int\n")
    assert long_positional_signatures(source, lightning_hooks()) == ["five (5 positional)", "Wide (5 fields)"]


def test_the_datamodule_is_at_most_250_lines():
    """The DataModule wires the data's parts together; the parts live beside it (sources, cache, splits,
    normalization, the batch transforms, the PIL path)."""
    assert len((PACKAGE / "data" / "datamodule.py").read_text().splitlines()) <= 250


def test_no_test_file_implements_a_server():
    """Tests call the code in-process, or start the program a person would start; none serves or forks its own."""
    tests = Path(__file__).resolve().parent
    servers = [f"{path.name}: {word}" for path in sorted(tests.glob("*.py"))
               for word in ("os.fork(", ".accept(", "socketserver", "AF_UNIX", "pidfd")
               if word in path.read_text() and path.name != Path(__file__).name]
    assert not servers, servers
