"""The package's import graph: no cycles, and no import against the stage order that docs/ARCHITECTURE.md
declares (its fenced ``stage-order`` block). Every import counts, at module level or deferred inside a
function, except those under ``if TYPE_CHECKING:``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mope_deploy"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def stage_order() -> list[list[str]]:
    """Layers, lowest first, from the ``stage-order`` block: each line ``name`` or ``label: name name ...``."""
    m = re.search(r"```stage-order\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"{DOC} has no ```stage-order block"
    layers = []
    for line in m.group(1).splitlines():
        line = line.split("#")[0].strip()
        if line:
            layers.append(line.split(":", 1)[1].split() if ":" in line else [line])
    return layers


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """mope_deploy modules that module ``name`` imports (resolving relative imports; ``from pkg import mod``
    names the submodule when it is one)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == "mope_deploy":
                        found.add(_nearest(a.name, known))
            elif isinstance(child, ast.Call) and getattr(child.func, "attr", getattr(child.func, "id", "")) == \
                    "import_module" and child.args and isinstance(child.args[0], ast.Constant) and \
                    str(child.args[0].value).startswith("mope_deploy"):
                found.add(_nearest(child.args[0].value, known))  # importlib.import_module("mope_deploy.x")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    stem = base[: len(base) - child.level + 1]
                    target = ".".join(stem + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "mope_deploy":
                    for a in child.names:
                        sub = f"{target}.{a.name}"
                        found.add(sub if sub in known else _nearest(target, known))
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def _nearest(mod: str, known: set[str]) -> str:
    while mod not in known and "." in mod:
        mod = mod.rsplit(".", 1)[0]
    return mod


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports(n, p, set(mods)) for n, p in mods.items()}


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package root re-exports the public API
    for i, names in enumerate(layers):
        if parts[1] in names:
            return i
    return -1


def test_every_module_has_a_stage(graph):
    layers = stage_order()
    missing = sorted({m.split(".")[1] for m in graph if layer_of(m, layers) == -1})
    assert not missing, f"add {missing} to the stage-order block of docs/ARCHITECTURE.md"


def test_every_stage_names_a_real_module():
    """A typo in the stage-order block would silently exempt a package; every name must exist."""
    names = [n for layer in stage_order() for n in layer]
    assert len(names) == len(set(names)), "a stage is listed twice"
    missing = [n for n in names if not (PKG / n).is_dir() and not (PKG / f"{n}.py").is_file()]
    assert not missing, f"stage-order names with no module or package in mope_deploy/: {missing}"


def test_the_package_map_describes_every_stage():
    """docs/ARCHITECTURE.md's package map (its first code block) names every module of the stage order."""
    block = re.search(r"```\n(mope_deploy/.*?)```", DOC.read_text(), re.S)
    assert block, "the package map block (starting with mope_deploy/) is missing"
    text = block.group(1)
    undocumented = [n for layer in stage_order() for n in layer if f"{n}/" not in text and f"{n}.py" not in text]
    assert not undocumented, f"describe these in the package map of docs/ARCHITECTURE.md: {undocumented}"


def test_imports_follow_the_stage_order(graph):
    layers = stage_order()
    bad = []
    for mod, targets in graph.items():
        lm = layer_of(mod, layers)
        for t in targets:
            lt = layer_of(t, layers)
            if lm is None or lt is None:
                continue
            if lt > lm:
                bad.append(f"{mod} -> {t} (stage {layers[lm]} imports the later stage {layers[lt]})")
    assert not bad, "imports against the stage order:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles(graph):
    pruned = graph
    # the package root imports its public API; a module importing the root would be the cycle to catch
    root_users = sorted(m for m, ts in pruned.items() if "mope_deploy" in ts and m != "mope_deploy")
    assert not root_users, f"modules importing the package root (import the defining module instead): {root_users}"
    cycles = _cycles({m: ts for m, ts in pruned.items() if m != "mope_deploy"})
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_finds_what_it_should():
    """The graph walk itself: relative imports resolve, deferred and importlib imports count, TYPE_CHECKING ones
    do not, and a cycle and a backward import are both reported."""
    src = {"mope_deploy.a.x": "from ..b import y\ndef f():\n    from ..c import z\n"
                              "    importlib.import_module('mope_deploy.c')\n",
           "mope_deploy.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import q\n",
           "mope_deploy.b.y": "import mope_deploy.a.x\n"}
    known = {"mope_deploy.a", "mope_deploy.a.x", "mope_deploy.b", "mope_deploy.b.y", "mope_deploy.c",
             "mope_deploy.c.z"}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        g = {}
        for name, code in src.items():
            p = Path(d) / (name.replace(".", "_") + ".py")
            if name == "mope_deploy.a":
                p = Path(d) / "__init__.py"
            p.write_text(code)
            g[name] = imports(name, p, known)
    assert g["mope_deploy.a.x"] == {"mope_deploy.b.y", "mope_deploy.c.z", "mope_deploy.c"}
    assert g["mope_deploy.a"] == set()
    assert _cycles(g) == [["mope_deploy.a.x", "mope_deploy.b.y"]]
    layers = [["a"], ["b"], ["c"]]
    assert layer_of("mope_deploy.c.z", layers) > layer_of("mope_deploy.a.x", layers)
