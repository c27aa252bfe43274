"""The layers point one way: no import cycle in the library (imports inside functions count), the library
imports no tooling, and no module or function outgrows one screen's worth of jobs.

Read from the source (``ast``), nothing imported: ``docs/architecture.md`` draws the layers.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Where each installed package's source sits in the repository (pyproject.toml's package-dir).
PACKAGES = {"fastcarry": ROOT / "fastcarry", "fastcarry.kernels": ROOT / "kernels",
            "fastcarry.profiling": ROOT / "profiling"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# The command line's entry (`python -m fastcarry`): tooling, imported by nothing.
ENTRY_POINTS = {"fastcarry.__main__"}


def _modules():
    """``{module name: path}`` of every module fastcarry installs."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package] + parts)] = path
    return out


MODULES = _modules()


def _imports(name, path):
    """The fastcarry modules ``name`` imports, anywhere in it but under ``if TYPE_CHECKING:``."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # never runs
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle():
    """One import cycle as a list of modules, or None."""
    state = {}

    def walk(node, trail):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt, trail + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(GRAPH):
        if start not in state:
            found = walk(start, [start])
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_checker_finds_a_cycle_when_there_is_one(monkeypatch):
    monkeypatch.setitem(GRAPH, "fastcarry._protocol", GRAPH["fastcarry._protocol"] | {"fastcarry._unroll"})
    cycle = _cycle()
    assert cycle and cycle[0] == cycle[-1] and "fastcarry._unroll" in cycle


def test_the_library_imports_no_tooling():
    library = [m for m in GRAPH if not m.startswith("fastcarry.tools") and m not in ENTRY_POINTS]
    assert {m: sorted(t for t in GRAPH[m] if t.startswith("fastcarry.tools")) for m in library
            if any(t.startswith("fastcarry.tools") for t in GRAPH[m])} == {}
    assert "fastcarry.tools.cli" in GRAPH["fastcarry.__main__"]  # the checker sees imports at all


@pytest.mark.parametrize("name", sorted(m for m in MODULES if not m.startswith("fastcarry.tools")))
def test_library_modules_and_functions_stay_small(name):
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{name}: over {MAX_MODULE_LINES} lines"
    long = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
            if node.end_lineno - body[0].lineno + 1 > MAX_FUNCTION_LINES:
                long.append(node.name)
    assert not long, f"{name}: function bodies over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_tools_look_in_through_public_names_and_the_measurement_module():
    private = {m: sorted(t for t in GRAPH[m] if not t.startswith("fastcarry.tools") and t != "fastcarry._measure"
                         and any(part.startswith("_") for part in t.split(".")))
               for m in GRAPH if m.startswith("fastcarry.tools")}
    assert {m: ts for m, ts in private.items() if ts} == {}
    assert "fastcarry._measure" in GRAPH["fastcarry.tools.grid_bench"]  # the checker sees the tools' imports
