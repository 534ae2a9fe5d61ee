"""``manifest.json``: what an export bundle holds and how it was checked.

Every file with its sha256 and size, the encoders' input/output names/shapes/dtypes, opset, precision,
parity and recall figures, the source model config and plan hash, and the library versions used.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
LIBRARIES = ("mope-deploy", "torch", "onnx", "onnxruntime", "onnxscript", "open_clip_torch", "tensorrt",
             "torch_tensorrt", "numpy")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions of ``names`` (default: the libraries that shape an export; None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_table(root: str | Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {sha256, bytes}}`` for every file under ``root`` except the manifest itself."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}


def plan_hash(config) -> str | None:
    """The pruning plan's hash when the model came from ``mope prune``/``compress`` (from its provenance)."""
    prov = config.provenance or {}
    for key in ("plan_hash", "plan_sha256"):
        if prov.get(key):
            return str(prov[key])
    plan = prov.get("plan")
    if isinstance(plan, dict):
        return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    return None


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add files/hashes, versions and a timestamp to ``manifest`` and write it to ``root/manifest.json``."""
    root = Path(root)
    manifest = dict(manifest)
    manifest.setdefault("format_version", FORMAT_VERSION)
    manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest["versions"] = library_versions()
    manifest["files"] = file_table(root)
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False))
    return manifest


def verify_bundle(root: str | Path) -> list[str]:
    """Files whose sha256 no longer matches the manifest (or that are missing); empty when intact."""
    root = Path(root)
    m = json.loads((root / MANIFEST_FILE).read_text())
    bad = []
    for rel, info in m.get("files", {}).items():
        p = root / rel
        if not p.is_file() or sha256_file(p) != info["sha256"]:
            bad.append(rel)
    return bad
