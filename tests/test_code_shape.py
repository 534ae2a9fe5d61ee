"""The shape of the library code: every module is named in docs/ARCHITECTURE.md, functions stay short with few
parameters, and library calls leave process-wide state (loggers, torch's thread count) as they found it."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mope_deploy"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
MAX_LINES, MAX_PARAMS = 80, 10
#: The few functions kept above the limits, each with its reason. A stale entry fails the test.
ALLOWED_LONG = {
    # a test-model builder: one keyword per architecture knob, all defaulted, is the readable form
    ("mope_deploy/models/tiny.py", "tiny_config"): "keyword knobs of a tiny test config",
}


def _package_entries() -> dict[str, str]:
    """The package map (first code block of docs/ARCHITECTURE.md) cut into entries: top-level name -> text."""
    block = re.search(r"```\n(mope_deploy/.*?)```", DOC.read_text(), re.S)
    assert block, "docs/ARCHITECTURE.md has no package map block starting with mope_deploy/"
    entries: dict[str, str] = {}
    current = None
    for line in block.group(1).splitlines()[1:]:
        m = re.match(r"^  (\S+?)(/|\.py)?\s", line + " ")
        if m and not line.startswith("   "):
            current = m.group(1) + (m.group(2) or "")
            entries[current] = ""
        if current is not None:
            entries[current] += line + "\n"
    return entries


def _library_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "assets" not in p.parts)


def test_every_module_is_named_in_the_architecture_doc():
    entries = _package_entries()
    missing = []
    for path in _library_modules():
        rel = path.relative_to(PKG)
        if len(rel.parts) == 1:
            if rel.name != "__init__.py" and rel.name not in entries:
                missing.append(str(rel))
            continue
        text = entries.get(rel.parts[0] + "/", "")
        names = [f"{d}/" for d in rel.parts[1:-1]] + ([] if rel.name == "__init__.py" else [rel.name])
        if not text or any(n not in text for n in names):
            missing.append(str(rel))
    assert not missing, f"name these modules in docs/ARCHITECTURE.md's package map: {missing}"


def _function_shapes(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs] + [x for x in (a.vararg, a.kwarg) if x]
            if params and params[0].arg in ("self", "cls"):
                params = params[1:]
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1, len(params)


def test_library_functions_are_short_with_few_parameters():
    too_big, seen = [], set()
    for path in _library_modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("mope_deploy/cli/"):
            continue
        for name, line, length, params in _function_shapes(path):
            if length > MAX_LINES or params > MAX_PARAMS:
                if (rel, name) in ALLOWED_LONG:
                    seen.add((rel, name))
                else:
                    too_big.append(f"{rel}:{line} {name}: {length} lines, {params} parameters")
    assert not too_big, (f"split these (<= {MAX_LINES} lines, <= {MAX_PARAMS} parameters; pass a config object):\n"
                         + "\n".join(too_big))
    stale = set(ALLOWED_LONG) - seen
    assert not stale, f"remove stale entries from ALLOWED_LONG: {sorted(stale)}"


def test_the_shape_checker_counts_lines_and_parameters(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f(a, b, *c, d=1, **e):\n    return 1\n\nclass K:\n    def g(self, x):\n" + "        x\n" * 85)
    shapes = {n: (length, params) for n, _, length, params in _function_shapes(src)}
    assert shapes == {"f": (2, 5), "g": (86, 1)}


# ------------------------------------------------------------------------------------- process-wide state

def _state() -> dict:
    import torch

    # torch's exporter configures its own internal trace loggers lazily (torch._logging): torch's business, not ours
    loggers = {name: (lg.level, tuple(lg.handlers), lg.propagate)
               for name, lg in logging.Logger.manager.loggerDict.items()
               if isinstance(lg, logging.Logger) and not name.startswith("torch")}
    return {"root": (logging.root.level, tuple(logging.root.handlers)), "loggers": loggers,
            "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}


def _changed(before: dict, after: dict) -> list[str]:
    out = [k for k in ("root", "threads", "interop") if before[k] != after[k]]
    out += [f"logger {n!r}: {v} -> {after['loggers'].get(n)}" for n, v in before["loggers"].items()
            if after["loggers"].get(n) != v]
    return out


def test_export_and_open_encoder_leave_process_state_alone(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    import onnxruntime  # noqa: F401  (imported first: importing a library may create its loggers)
    from mope_deploy.exporting import ExportConfig, export_bundle
    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.tiny import tiny_config
    from mope_deploy.runtime import open_encoder

    model = SlimCLIP(tiny_config()).eval()
    before = _state()
    export_bundle(model, tmp_path / "bundle", ExportConfig(formats=("onnx",), precision="int8", skip_recall_gate=True))
    for backend in ("torch", "onnxruntime"):
        enc = open_encoder(tmp_path / "bundle" if backend != "torch" else model, backend, threads=1)
        image = Image.fromarray(np.zeros((40, 40, 3), np.uint8))
        assert enc.encode_images([image]).shape[0] == 1
        assert enc.encode_texts(["a photo"]).shape[0] == 1
    after = _state()
    assert not _changed(before, after), _changed(before, after)


def test_the_state_check_sees_a_change():
    import torch

    before = _state()
    n = torch.get_num_threads()
    logging.getLogger("mope-test-probe").setLevel(logging.ERROR)   # a new logger: not in `before`
    lg = next(iter(before["loggers"]))
    old = logging.getLogger(lg).level
    try:
        logging.getLogger(lg).setLevel(logging.CRITICAL if old != logging.CRITICAL else logging.DEBUG)
        torch.set_num_threads(n + 1)
        assert len(_changed(before, _state())) >= 2
    finally:
        logging.getLogger(lg).setLevel(old)
        torch.set_num_threads(n)


def test_readme_layout_names_every_package_and_top_level_module():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"## Layout\n+```\n(.*?)```", readme, re.S)
    assert m, "README.md has no Layout section with a code block"
    text = m.group(1)
    names = [f"{p.name}/" for p in sorted(PKG.iterdir()) if p.is_dir() and (p / "__init__.py").is_file()]
    names += [p.name for p in sorted(PKG.glob("*.py")) if p.name != "__init__.py"]
    missing = [n for n in names if n not in text]
    assert not missing, f"README.md's Layout does not name {missing}"
