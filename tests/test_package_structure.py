"""The package's shape (issue 19): stages by pipeline order, imports one way, short modules.

``fungi_ssl`` is split into subpackages, one per stage of the pipeline the book
tells. A module may import its own stage and earlier ones, never a later one,
and the imports have no circle. The imports are read from the source (ast),
every one of them: module level, inside functions and under ``TYPE_CHECKING``,
so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fungi_ssl"

#: The stages in pipeline order; a module may import its own stage and earlier ones.
STAGES = (
    "core",  # settings, caches, hashing, threads, figure style, results files
    "data",  # field data: tables, coordinates, sites, richness, realism references
    "embeddings",  # the SSL encoder, embedding cubes, TESSERA tiles
    "simulate",  # the simulated world and the chapters' field data
    "predictors",  # the predictor table at the samples
    "validation",  # models, pipelines, cross-validation, comparisons
    "attribution",  # commonality analysis, SHAP
    "maps",  # the map model, map prediction, resolution
    "uncertainty",  # errors, calibration, intervals, AOA, held-out predictions
    "trends",  # polygon trends, trend maps
    "region",  # the whole pipeline on a user's region
    "book",  # the notebook runner
    "cli",  # the fungi-ssl command, one module per subcommand
)

#: Import edges allowed despite the rules, each with its reason.
ALLOWED_EDGES: dict[tuple[str, str], str] = {}

#: Modules allowed over MAX_LINES, each with its reason.
LONG_MODULES: dict[str, str] = {}

MAX_LINES = 1000
MAX_CLI_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage_of(module: str) -> int:
    """Index in :data:`STAGES` of a ``fungi_ssl`` module (the package root is stage 0)."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    return STAGES.index(parts[1])


def imported_modules(module: str) -> set[str]:
    """The ``fungi_ssl`` modules that ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                     for a in node.names]
        else:
            continue
        for name in names:
            if name == "fungi_ssl" or name.startswith("fungi_ssl."):
                while name not in MODULES:  # `import fungi_ssl.x.y` where y is a name
                    name = name.rpartition(".")[0]
                if name != module:
                    out.add(name)
    return out


GRAPH = {m: imported_modules(m) for m in MODULES}


def test_every_module_is_in_a_stage():
    """Only the command line and the package root sit outside the stage subpackages."""
    loose = [m for m in MODULES if m.count(".") == 1 and m.split(".")[1] not in STAGES]
    assert loose == []
    unknown = [m for m in MODULES if m.count(".") >= 1 and m.split(".")[1] not in STAGES]
    assert unknown == []
    assert all((PACKAGE / s / "__init__.py").is_file() for s in STAGES)


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "simulate"])
def test_stage_docstring_says_what_it_holds_and_may_import(stage):
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
    assert doc and "Holds" in doc and "May import" in doc, stage


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Edges from a module to a module of a later stage, less :data:`ALLOWED_EDGES`."""
    return sorted((a, b) for a, deps in graph.items() for b in deps
                  if stage_of(b) > stage_of(a) and (a, b) not in ALLOWED_EDGES)


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if (v, w) in ALLOWED_EDGES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_stage_imports_a_later_stage():
    assert upward_imports(GRAPH) == []


def test_no_import_circles():
    assert import_circles(GRAPH) == []


def test_the_checks_catch_what_they_should():
    """An upward edge and a circle planted in a copy of the graph are reported."""
    graph = {m: set(d) for m, d in GRAPH.items()}
    graph["fungi_ssl.data.io"].add("fungi_ssl.validation.cv")
    graph["fungi_ssl.validation.cv"].add("fungi_ssl.data.io")
    assert ("fungi_ssl.data.io", "fungi_ssl.validation.cv") in upward_imports(graph)
    assert any({"fungi_ssl.data.io", "fungi_ssl.validation.cv"} <= set(c)
               for c in import_circles(graph))


def test_no_package_module_imports_the_cli():
    assert [m for m, deps in GRAPH.items() if "fungi_ssl.cli" in deps] == []


def test_allowed_exceptions_are_still_needed():
    """An exception that no longer applies is removed from the lists above."""
    assert [e for e in ALLOWED_EDGES if e[1] not in GRAPH.get(e[0], ())] == []
    assert [m for m in LONG_MODULES if m not in MODULES or _lines(m) <= MAX_LINES] == []


def _lines(module: str) -> int:
    return len(MODULES[module].read_text().splitlines())


def test_no_module_over_1000_lines():
    long = {m: _lines(m) for m in MODULES if _lines(m) > MAX_LINES and m not in LONG_MODULES}
    assert long == {}


def test_cli_is_thin():
    """The command line is options, help and messages: no module of it over 500 lines."""
    cli = {m: _lines(m) for m in MODULES if m.split(".")[:2] == ["fungi_ssl", "cli"]}
    assert len(cli) > 1
    assert {m: n for m, n in cli.items() if n > MAX_CLI_LINES} == {}
