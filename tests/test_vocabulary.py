"""Each shared fact is written once: no module restates a vocabulary tuple (mope_deploy/vocab.py) or a bundle
file name (mope_deploy/bundle/names.py) as a literal."""

from __future__ import annotations

import ast
from pathlib import Path

import mope_deploy.vocab as vocab

PKG = Path(__file__).resolve().parents[1] / "mope_deploy"
WORDS = {name: frozenset(v) for name, v in vars(vocab).items() if name.isupper() and isinstance(v, tuple)}
# the bundle format's names: only bundle/names.py spells them (others call onnx_name / Bundle)
BUNDLE_LITERALS = ("image_encoder", "text_encoder", "manifest.json", "tensorrt_build.log")


def _literals(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and \
                all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node, frozenset(e.value for e in node.elts)


def test_no_module_restates_a_vocabulary_tuple():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "vocab.py":
            continue
        for node, values in _literals(ast.parse(path.read_text())):
            for name, words in WORDS.items():
                if values == words:
                    found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {sorted(values)} is vocab.{name}")
    assert not found, "import these from mope_deploy.vocab instead:\n" + "\n".join(found)


def test_bundle_file_names_are_spelled_only_by_the_bundle_module():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path.relative_to(PKG).as_posix() == "bundle/names.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                hits = [w for w in BUNDLE_LITERALS if w in node.value]
                if hits and not _is_message(node, tree):
                    found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "name bundle files through mope_deploy.bundle:\n" + "\n".join(found)


def _is_message(node: ast.Constant, tree: ast.AST) -> bool:
    """Text inside an f-string or a call's message (an error or help text may mention a file by name)."""
    for parent in ast.walk(tree):
        if isinstance(parent, ast.JoinedStr) and node in parent.values:
            return True
        if isinstance(parent, ast.Call) and any(node is a for a in parent.args) and \
                isinstance(parent.func, ast.Name) and parent.func.id.endswith(("Error", "Exception")):
            return True
    return False
