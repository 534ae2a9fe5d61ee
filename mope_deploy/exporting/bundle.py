"""The export bundle format, owned here and only here: file names per tower and variant, engine and program
names, the Triton folder, ``manifest.json`` (read, upgrade, write, verify) and the model config it carries.

Exporters, runtimes and benchmarks name or find a bundle file only through :class:`Bundle` and the name
functions below. Layout::

    image_encoder.onnx, text_encoder.onnx          fp32 reference graphs (always)
    *.onnx.data                                    external weights of large graphs
    {image,text}_encoder.{variant}.onnx            variants: optimized (ORT fusions), int8, fp16
    {image,text}_encoder.{precision}.engine        TensorRT engines, with tensorrt_build.log
    {image,text}_encoder.{precision}.ep            torch-tensorrt programs (torch.export)
    triton/                                        a Triton model repository
    manifest.json

Towers are ``vision`` and ``text`` in Python and in the manifest (format 2). Deployed names keep the
word ``image`` for the vision tower (file names, the image graph's input ``image``, Triton model names):
they are the contract clients already hold. Format-1 manifests (tower keys ``image``) are read and upgraded.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from ..atomic import Owner
from ..errors import MopeError
from ..models.config import CLIPConfig, ConfigError
from ..vocab import TOWERS, VARIANTS

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2  # 2: tower keys "vision"/"text" everywhere (1 said "image")
#: the word for each tower in deployed names (files, graph inputs, Triton models)
DEPLOY_NAMES = {"vision": "image", "text": "text"}
#: each graph's input tensor name; the output is always OUTPUT_NAME
INPUT_NAMES = {"vision": "image", "text": "tokens"}
OUTPUT_NAME = "embedding"
BUILD_LOG_FILE = "tensorrt_build.log"
TIMING_CACHE_FILE = "tensorrt_timing.cache"
TRITON_DIR = "triton"
#: The ownership rule for ``--out`` (mope_deploy.atomic): a folder with a manifest that holds only bundle files
#: may be replaced by a new export; anything else only with --force.
BUNDLE_OWNER = Owner("export bundle", markers=[(MANIFEST_FILE,)],
                     allowed=(MANIFEST_FILE, "image_encoder*", "text_encoder*", BUILD_LOG_FILE, TIMING_CACHE_FILE,
                              TRITON_DIR))
LIBRARIES = ("mope-deploy", "torch", "onnx", "onnxruntime", "onnxscript", "open_clip_torch", "tensorrt",
             "torch_tensorrt", "numpy")


class BundleError(MopeError, ValueError):
    """An export bundle that is missing files or whose files do not fit together."""


def _check_tower(tower: str) -> None:
    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}: use one of {', '.join(TOWERS)}")


def onnx_name(tower: str, variant: str = "fp32") -> str:
    """``image_encoder.onnx`` (fp32) or ``image_encoder.<variant>.onnx``."""
    _check_tower(tower)
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}: use one of {', '.join(VARIANTS)}")
    return f"{DEPLOY_NAMES[tower]}_encoder{'' if variant == 'fp32' else '.' + variant}.onnx"


def variant_names(variant: str) -> dict[str, str]:
    """``{tower: file name}`` of one ONNX variant."""
    return {t: onnx_name(t, variant) for t in TOWERS}


def engine_name(tower: str, precision: str) -> str:
    """``image_encoder.<precision>.engine`` (TensorRT)."""
    _check_tower(tower)
    return f"{DEPLOY_NAMES[tower]}_encoder.{precision}.engine"


def program_name(tower: str, precision: str) -> str:
    """``image_encoder.<precision>.ep`` (torch-tensorrt ExportedProgram)."""
    _check_tower(tower)
    return f"{DEPLOY_NAMES[tower]}_encoder.{precision}.ep"


# ------------------------------------------------------------------------------------------- manifest
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


def plan_hash(config: CLIPConfig) -> str | None:
    """The pruning plan's hash when the model came from ``mope prune``/``compress`` (from its provenance)."""
    prov = config.provenance or {}
    for key in ("plan_hash", "plan_sha256"):
        if prov.get(key):
            return str(prov[key])
    plan = prov.get("plan")
    if isinstance(plan, dict):
        return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    return None


def upgrade_manifest(m: dict[str, Any]) -> dict[str, Any]:
    """A format-1 manifest (tower key ``image``) in the current format (``vision``); others unchanged."""
    if m.get("format_version", 1) >= FORMAT_VERSION:
        return m

    def rename(x: Any) -> Any:
        if isinstance(x, dict):
            return {("vision" if k == "image" else k): rename(v) for k, v in x.items()}
        if isinstance(x, list):
            return [rename(v) for v in x]
        return x

    out = rename(m)
    for entry in ((out.get("triton") or {}).get("models") or {}).values():
        if isinstance(entry, dict) and entry.get("tower") == "image":
            entry["tower"] = "vision"
    out["format_version"] = FORMAT_VERSION
    out["upgraded_from"] = m.get("format_version", 1)
    return out


class Bundle:
    """An export bundle directory: where each file is, what the manifest says, and the model config."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._manifest: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r})"

    @staticmethod
    def is_bundle(path: Any) -> bool:
        """Whether ``path`` is an export bundle directory (a manifest and the fp32 image graph)."""
        try:
            p = Path(path)
            return (p / MANIFEST_FILE).is_file() and (p / onnx_name("vision")).is_file()
        except TypeError:
            return False

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    # -------------------------------------------------------------------------------------- reading
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest (format-1 files upgraded in memory); read once."""
        if self._manifest is None:
            path = self.manifest_path
            if not path.is_file():
                raise BundleError(f"{self.root} is not an export bundle: {MANIFEST_FILE} not found "
                                  "(write one with `mope export MODEL --out DIR`)")
            try:
                self._manifest = upgrade_manifest(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise BundleError(f"{path}: cannot read the manifest ({e}); re-export the bundle") from None
        return self._manifest

    def config(self) -> CLIPConfig:
        """The model config stored with the bundle (the manifest's ``config``, or a ``config.json`` beside it)."""
        d = self.manifest.get("config")
        if d is None and (self.root / "config.json").is_file():
            d = json.loads((self.root / "config.json").read_text())
        if d is None:
            raise BundleError(f"{self.manifest_path} has no 'config' (and no config.json beside it): the bundle does "
                              "not say how to preprocess images and tokenise text; re-export it")
        try:
            return CLIPConfig.from_dict(d)
        except (ConfigError, TypeError, KeyError) as e:
            raise BundleError(f"{self.manifest_path}: not a valid model config ({e}); re-export the bundle") from None

    def onnx(self, tower: str, variant: str = "fp32") -> Path:
        """Where a graph of ``variant`` is (or would be) by the naming convention."""
        return self.root / onnx_name(tower, variant)

    def variant_files(self, variant: str) -> dict[str, Path] | None:
        """``{tower: path}`` of ``variant`` as the manifest lists it (else by convention), or None when a file
        is absent."""
        manifest = self.manifest
        listed = (manifest.get("variants") or {}).get(variant, {}).get("files")
        if listed is None and isinstance(manifest.get(variant), dict):
            listed = manifest[variant]
        if listed is None:
            listed = variant_names(variant)
        paths = {t: self.root / listed[t] for t in TOWERS}
        return paths if all(p.is_file() for p in paths.values()) else None

    def engines(self) -> dict[str, Any]:
        m = self.manifest
        return (m.get("tensorrt") or {}).get("engines") or m.get("engines") or {}

    def engine(self, tower: str) -> Path:
        """The TensorRT engine of ``tower``: as the manifest lists it, else the one ``*_encoder*.engine``."""
        entry = self.engines().get(tower)
        name = entry.get("file") if isinstance(entry, dict) else entry
        if name:
            return self.root / name
        stem = f"{DEPLOY_NAMES[tower]}_encoder"
        found = sorted(self.root.glob(f"{stem}*.engine"))
        if len(found) > 1:
            raise BundleError(f"{self.root} holds several {tower} engines ({[f.name for f in found]}) and the "
                              "manifest does not say which to use; re-export the bundle")
        return found[0] if found else self.root / f"{stem}.engine"

    # -------------------------------------------------------------------------------------- writing
    def write_manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Add files/hashes, versions and a timestamp to ``manifest`` and write it into the bundle."""
        manifest = dict(manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest["versions"] = library_versions()
        manifest["files"] = file_table(self.root)
        self.manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=False))
        self._manifest = manifest
        return manifest

    def verify(self) -> list[str]:
        """Files whose sha256 no longer matches the manifest (or that are missing); empty when intact."""
        bad = []
        for rel, info in self.manifest.get("files", {}).items():
            p = self.root / rel
            if not p.is_file() or sha256_file(p) != info["sha256"]:
                bad.append(rel)
        return bad


__all__ = ["BUNDLE_OWNER", "MANIFEST_FILE", "FORMAT_VERSION", "DEPLOY_NAMES", "INPUT_NAMES", "OUTPUT_NAME", "BUILD_LOG_FILE",
           "TIMING_CACHE_FILE", "TRITON_DIR", "Bundle", "BundleError", "onnx_name", "variant_names", "engine_name",
           "program_name", "sha256_file", "library_versions", "file_table", "plan_hash", "upgrade_manifest"]
