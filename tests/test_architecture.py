"""Dependencies point one way and never in a circle; every module imports on its own.

The graph is read from the source (every ``import``, at module level or inside a function), so a lazy
import that papers over a cycle counts as an edge too. Rule (DESIGN.md): ``shared`` <- ``client``,
``server`` <- ``simulations``, ``deploy``, ``fedrec``; ``client`` and ``server`` never import each other;
nothing in ``client``, ``server``, ``shared`` or ``deploy`` imports ``simulations``.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

from tests.support import REPO

PACKAGES = ("shared", "client", "server", "deploy", "simulations", "fedrec")
ALLOWED = {  # package -> the project packages it may import
    "shared": {"shared"},
    "client": {"shared", "client"},
    "server": {"shared", "server"},
    "deploy": {"shared", "deploy"},
    "simulations": {"shared", "client", "server", "deploy", "simulations"},
    "fedrec": {"shared", "client", "server", "deploy", "simulations", "fedrec"},
}


def modules() -> dict[str, ast.Module]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            if "_pb2" in name:  # generated gRPC stubs
                continue
            out[name.removesuffix(".__init__")] = ast.parse(path.read_text(), filename=str(path))
    return out


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (resolved to the longest known module name)."""
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known and candidate != name:
                    found.add(candidate)
                    break
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    trees = modules()
    return {name: imports(name, tree, set(trees)) for name, tree in trees.items()}


def test_dependencies_point_one_way(graph):
    bad = [f"{m} imports {d}" for m, deps in sorted(graph.items()) for d in sorted(deps)
           if d.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert bad == []


def test_no_import_cycles(graph):
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_graph_is_real(graph):
    """The checks above would pass on an empty graph: make sure the known edges are there."""
    assert "shared.config" in graph["client.app"] or "shared.config" in graph["client.local"]
    assert "client.app" in graph["simulations.client_app"] and "simulations.faults" in graph["simulations.client_app"]


@pytest.mark.parametrize("package", ["shared", "client", "server", "deploy"])
def test_every_production_module_imports_alone_without_the_simulation_layer(package):
    """A fresh interpreter imports each module of the package and must not have loaded ``simulations``."""
    names = sorted(m for m in modules() if m.split(".")[0] == package)
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "loaded = sorted(m for m in sys.modules if m == 'simulations' or m.startswith('simulations.'))\n"
            "print(loaded)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_the_production_fab_carries_no_simulation_code():
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["fab-include"]
    assert include and not any(p.startswith("simulations") or p.startswith("tests") for p in include)
    assert importlib.import_module("deploy.flower_app").PACKAGES == ("shared", "client", "server")
