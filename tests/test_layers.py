"""The package's layers point one way: cli -> api -> plan -> training -> core, and no import circles.

Every import counts, the ones inside functions included: an import hidden in a function to dodge
a circle is still a circle.  docs/modules.md draws the same layers and is checked against them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path


ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "transferkit"

# Higher imports lower, never the reverse.  The package's own __init__ (the public names) and
# __main__ sit on top of everything.
LAYERS = {"core": 0, "training": 1, "plan": 2, "api": 3, "serve": 3, "cli": 4, "__init__": 5, "__main__": 5}


def module_names(package: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``package`` (a folder named after the package)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its code."""
    names = module_names(package)
    top = package.name
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    base = ".".join([*here.split(".")[: len(here.split(".")) - node.level + 1], *([base] if base else [])])
                # `from a.b import c` imports the submodule a.b.c where there is one, else a.b
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in names:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name and target.split(".")[0] == top:
                    graph[name].add(target)
    return graph


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__" if len(parts) == 1 else parts[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_sits_in_a_layer():
    for name in module_names(PACKAGE):
        assert name == "transferkit" or name.split(".")[1] in LAYERS, f"{name}: put it in one of the layers {sorted(LAYERS)}"


def test_no_import_points_up_and_none_goes_round():
    graph = import_graph(PACKAGE)
    assert upward_imports(graph) == []
    assert cycles(graph) == []


def test_the_check_finds_a_planted_circle_and_an_upward_import(tmp_path):
    package = tmp_path / "transferkit"
    for folder in ("core", "training", "plan"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("def f():\n    from transferkit.core import b\n")  # hidden in a function
    (package / "core" / "b.py").write_text("import transferkit.core.a\n")
    (package / "training" / "t.py").write_text("from transferkit.plan.p import thing\n")  # train imports the plan above it
    (package / "plan" / "p.py").write_text("from transferkit.training import t\nfrom .q import x\n")
    (package / "plan" / "q.py").write_text("from transferkit.core.a import f\n")
    graph = import_graph(package)
    assert cycles(graph) == [["transferkit.core.a", "transferkit.core.b"], ["transferkit.plan.p", "transferkit.training.t"]]
    assert upward_imports(graph) == ["transferkit.training.t -> transferkit.plan.p"]
    assert graph["transferkit.plan.p"] == {"transferkit.training.t", "transferkit.plan.q"}


LAYER_NAMES = {0: "core", 1: "training", 2: "plan", 3: "api", 4: "cli", 5: "package"}


def test_docs_draw_the_layers_the_code_has():
    """docs/modules.md's table (module, layer, what it holds) lists every module in its layer."""
    rows = re.findall(r"^\| `([\w/]+\.py|cli/)` \| (\w+) \|", (ROOT / "docs" / "modules.md").read_text(), re.M)
    documented = dict(rows)
    present = {}
    for name, path in module_names(PACKAGE).items():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/"):
            present["cli/"] = "cli"
        elif not rel.endswith("/__init__.py"):
            present[rel] = LAYER_NAMES[layer_of(name)]
    assert set(documented) == set(present), f"in docs/modules.md only: {sorted(set(documented) - set(present))}; in the package only: {sorted(set(present) - set(documented))}"
    wrong = {rel: (documented[rel], layer) for rel, layer in present.items() if documented[rel] != layer}
    assert not wrong, f"listed in another layer than its folder's (doc, code): {wrong}"
