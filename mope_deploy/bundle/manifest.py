"""The typed manifest of an export bundle, its ONE reader (:func:`read_manifest`) and ONE writer
(:func:`write_manifest`, atomic).

Schema 3 (this module) is dataclasses all the way down; ``to_dict``/``from_dict`` are the JSON form. Older
manifests are read and upgraded in memory: format 2 (the untyped dict the exporter wrote until schema 3) and
format 1 (tower key ``image``). Anything else, or a manifest that does not parse, is refused with a
:class:`~.names.BundleError` saying how to re-export. Records keep what they do not model in ``details`` (the
quantiser's settings, fused-op counts, builder features...), so nothing an exporter measured is lost.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..models.identity import file_sha256, json_hash
from ..vocab import TOWERS
from .names import MANIFEST_FILE, REEXPORT, BundleError

SCHEMA_VERSION = 3  # 3: typed (this module); 2: untyped dict, towers "vision"/"text"; 1: tower key "image"
LIBRARIES = ("mope-deploy", "torch", "onnx", "onnxruntime", "onnxscript", "open_clip_torch", "tensorrt",
             "torch_tensorrt", "openvino", "numpy")
#: runtime keys of the ``runtime`` section: ONNX Runtime, and "portable" = every runtime that reads standard ONNX
#: ops only (TensorRT's execution provider, TensorRT's parser, OpenVINO...)
ONNXRUNTIME, PORTABLE = "onnxruntime", "portable"


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _split(cls, d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``d``'s keys that are fields of ``cls``, and the rest (for ``details``)."""
    names = _fields(cls)
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


class Record:
    """JSON form of a record dataclass: ``to_dict`` (plain values) and ``from_dict`` (unknown keys go to
    ``details`` where the record has one, else they are an error)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known, rest = _split(cls, dict(d))
        if rest:
            if "details" not in _fields(cls):
                raise TypeError(f"{cls.__name__}: unknown keys {sorted(rest)}")
            known["details"] = {**known.get("details", {}), **rest}
        return cls(**known)


@dataclass
class FileRecord(Record):
    sha256: str
    bytes: int


@dataclass
class TensorSpec(Record):
    name: str
    dtype: str
    shape: list[Any]  # ints, and "batch" for the dynamic axis


@dataclass
class EncoderSpec(Record):
    """One tower's graph contract (the fp32 graph's file, inputs and outputs; every variant keeps the I/O)."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderSpec":
        return cls(d["file"], [TensorSpec.from_dict(x) for x in d["inputs"]],
                   [TensorSpec.from_dict(x) for x in d["outputs"]])


@dataclass
class Variant(Record):
    """One pair of ONNX graphs: ``files`` per tower, what it was ``made_from`` (another variant's name; None for
    the fp32 graphs, made from the model), the ``runtimes`` that can run it (``["any"]``: standard ops only),
    ``precision``, its gate figures (``parity``: vs torch, or vs the fp32 graphs; ``recall``/``recall_delta``/
    ``recall_gate``: Recall Mean vs fp32) and ``batch_invariant`` (a row's embedding does not depend on the rest of
    its batch; None: not measured)."""

    files: dict[str, str]
    precision: str
    made_from: str | None = None
    runtimes: list[str] = field(default_factory=lambda: ["any"])
    parity: dict[str, Any] | None = None
    recall: dict[str, float] | None = None
    recall_delta: float | None = None
    recall_gate: str | None = None
    batch_invariant: bool | None = None
    method: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the runtime opens these paths: a variant without both towers' files is not a variant
        if not isinstance(self.files, dict) or set(self.files) != set(TOWERS) or \
                not all(isinstance(f, str) and f for f in self.files.values()):
            raise ValueError(f"a variant's files name one graph per tower ({', '.join(TOWERS)}), got {self.files!r}")
        if not isinstance(self.precision, str):
            raise ValueError(f"a variant's precision is a name, got {self.precision!r}")


@dataclass
class Engine(Record):
    """One compiled encoder (a TensorRT plan or a torch-tensorrt program) and the gate it passed."""

    file: str
    precision: str
    made_from: str | None = None  # the ONNX graph (TensorRT) or "module" (torch-tensorrt) it was built from
    profile: dict[str, list[int]] | None = None
    gate: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineSet(Record):
    """The engines of one format (``tensorrt`` or ``torch-tensorrt``), per tower."""

    format: str
    version: str
    precision: str
    engines: dict[str, Engine]
    recall_gate: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineSet":
        d = dict(d)
        d["engines"] = {t: Engine.from_dict(e) for t, e in (d.get("engines") or {}).items()}
        return super().from_dict(d)


@dataclass
class Sparsity(Record):
    pattern: str
    sparsity: float
    towers: dict[str, Any]
    recorded: Any = None
    tensorrt_sparse_weights: bool = False
    auto_sparse_weights: bool = False


@dataclass
class Source(Record):
    """Where the model came from: the spec given, the architecture, config, weights and pruning-plan hashes
    (:mod:`mope_deploy.models.identity`), and its recorded provenance."""

    spec: str | None
    arch_hash: str
    config_hash: str | None = None
    weights_hash: str | None = None
    plan_hash: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Gates(Record):
    parity_atol: float
    max_recall_drop: float
    recall_gate: str


@dataclass
class Manifest(Record):
    """Everything a bundle holds and how each piece was made and judged. ``runtime[backend][tower]`` is the
    variant a runtime opens (the exporter decides it once; runtimes never re-decide)."""

    formats: list[str]
    precision: str
    normalize: bool
    batch_sizes: dict[str, int]
    config: dict[str, Any]
    export_config: dict[str, Any]
    source: Source
    encoders: dict[str, EncoderSpec]
    tokenizer: dict[str, Any]
    gates: Gates
    variants: dict[str, Variant] = field(default_factory=dict)
    deploy_variant: str = "fp32"
    runtime: dict[str, dict[str, str]] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    refused_variants: dict[str, str] = field(default_factory=dict)
    engines: dict[str, EngineSet] = field(default_factory=dict)
    triton: dict[str, Any] | None = None
    sparsity: Sparsity | None = None
    intermediate_onnx: bool = False
    opset: int | None = None
    exporter: str | None = None
    external_data: dict[str, bool] = field(default_factory=dict)
    export_seconds: float | None = None
    eval: dict[str, Any] | None = None
    files: dict[str, FileRecord] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    created: str = ""
    kind: str = "mope-export"
    schema_version: int = SCHEMA_VERSION
    upgraded_from: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        d["source"] = Source.from_dict(d["source"])
        d["gates"] = Gates.from_dict(d["gates"])
        d["encoders"] = {t: EncoderSpec.from_dict(e) for t, e in d["encoders"].items()}
        d["variants"] = {n: Variant.from_dict(v) for n, v in (d.get("variants") or {}).items()}
        d["engines"] = {n: EngineSet.from_dict(e) for n, e in (d.get("engines") or {}).items()}
        d["files"] = {p: FileRecord.from_dict(f) for p, f in (d.get("files") or {}).items()}
        if d.get("sparsity") is not None:
            d["sparsity"] = Sparsity.from_dict(d["sparsity"])
        known, rest = _split(cls, d)
        if rest:
            raise TypeError(f"unknown manifest keys {sorted(rest)}")
        return cls(**known)

    def runtime_variant(self, backend: str, tower: str) -> str:
        """The variant ``backend`` opens for ``tower`` (``onnxruntime`` or ``portable``, or a backend a newer
        exporter added); the deployed variant when the manifest names none for that backend."""
        return self.runtime.get(backend, {}).get(tower, self.deploy_variant)


# ------------------------------------------------------------------------------------------- upgrade
def _rename_image(x: Any) -> Any:
    if isinstance(x, dict):
        return {("vision" if k == "image" else k): _rename_image(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rename_image(v) for v in x]
    return x


def _upgrade_variant(name: str, v: dict[str, Any]) -> dict[str, Any]:
    v = dict(v)
    # format 2 wrote "from" for int8/fp16; optimized graphs are ORT's rewrite of fp32; fp32 and fused were exported
    # from the model itself (None)
    v["made_from"] = v.pop("from", "fp32" if name == "optimized" else None)
    v.setdefault("runtimes", ["any"])
    return v


def _upgrade_engines(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    trt = m.get("tensorrt")
    if isinstance(trt, dict):
        engines = {t: {**e, "made_from": e.get("source_graph"), "precision": e.get("precision", trt.get("precision"))}
                   for t, e in (trt.get("engines") or {}).items()}
        for e in engines.values():
            e.pop("source_graph", None)
        rest = {k: v for k, v in trt.items() if k not in ("version", "precision", "engines", "recall_gate")}
        out["tensorrt"] = {"format": "tensorrt", "version": str(trt.get("version", "?")),
                           "precision": trt.get("precision", m.get("precision", "fp32")), "engines": engines,
                           "recall_gate": trt.get("recall_gate"), "details": rest}
    ttrt = m.get("torch_tensorrt")
    if isinstance(ttrt, dict):
        engines = {t: {"file": f, "precision": ttrt.get("precision", "fp32"), "made_from": "module",
                       "gate": (ttrt.get("gates") or {}).get(t)} for t, f in (ttrt.get("files") or {}).items()}
        rest = {k: v for k, v in ttrt.items() if k not in ("version", "precision", "files", "gates", "recall_gate")}
        out["torch-tensorrt"] = {"format": "torch-tensorrt", "version": str(ttrt.get("version", "?")),
                                 "precision": ttrt.get("precision", "fp32"), "engines": engines,
                                 "recall_gate": ttrt.get("recall_gate"), "details": rest}
    return out


def _upgrade_runtime(m: dict[str, Any], variants: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Format 2 recorded one variant per runtime (``runtime_variants``); format 1 none: then the choice format-2
    runtimes made (fused, else optimized, else fp32 on ONNX Runtime; fp32 for the rest) is written down here,
    once, so runtimes only ever read it."""
    chosen = dict(m.get("runtime_variants") or {})
    if ONNXRUNTIME not in chosen:
        deployed = m.get("deploy_variant")
        order = [deployed] if deployed and deployed != "fp32" else []
        chosen[ONNXRUNTIME] = next(v for v in (*order, "fused", "optimized", "fp32") if v == "fp32" or v in variants)
    chosen.setdefault(PORTABLE, "fp32")
    return {rt: {t: v for t in TOWERS} for rt, v in chosen.items()}


def upgrade(m: dict[str, Any]) -> dict[str, Any]:
    """A format-1 or format-2 manifest dict in the schema-3 JSON form (in memory; the file is not touched)."""
    old = int(m.get("format_version", 1))
    d = _rename_image(m) if old < 2 else dict(m)
    for entry in ((d.get("triton") or {}).get("models") or {}).values():
        if isinstance(entry, dict) and entry.get("tower") == "image":
            entry["tower"] = "vision"
    variants = {n: _upgrade_variant(n, v) for n, v in (d.get("variants") or {}).items()}
    for legacy in ("int8", "fp16"):  # format 1/2 also listed these files at the top ("the runtime looks here")
        files = d.pop(legacy, None)
        if isinstance(files, dict) and legacy not in variants:
            variants[legacy] = {"files": files, "precision": legacy, "made_from": None, "runtimes": ["any"]}
    if not variants and d.get("encoders"):
        variants["fp32"] = {"files": {t: e["file"] for t, e in d["encoders"].items()}, "precision": "fp32"}
    d["runtime"] = _upgrade_runtime(d, variants)
    d["variants"] = variants
    d["engines"] = _upgrade_engines(d)
    config = d.get("config") or {}
    src = dict(d.get("source") or {})
    src.setdefault("spec", (d.get("export_config") or {}).get("source"))
    src.setdefault("arch_hash", "")
    src.setdefault("config_hash", json_hash(config) if config else None)
    d["source"] = src
    gates = d.get("gates") or {}
    d["gates"] = {"parity_atol": gates.get("parity_atol", (d.get("parity") or {}).get("atol", 1e-4)),
                  "max_recall_drop": gates.get("max_recall_drop", 1.0),
                  "recall_gate": gates.get("recall_gate", "unknown")}
    for key in ("tensorrt", "torch_tensorrt", "runtime_variants", "format_version"):
        d.pop(key, None)
    d.setdefault("tokenizer", {})
    d.setdefault("export_config", {})
    d.setdefault("formats", ["onnx"])
    d.setdefault("precision", "fp32")
    d.setdefault("normalize", False)
    d.setdefault("batch_sizes", {})
    d["schema_version"], d["upgraded_from"] = SCHEMA_VERSION, old
    return d


# ------------------------------------------------------------------------------------- read and write
def manifest_path(root_or_file: str | Path) -> Path:
    p = Path(root_or_file)
    return p if p.is_file() or p.suffix == ".json" else p / MANIFEST_FILE


def read_manifest(root_or_file: str | Path) -> Manifest:
    """The manifest of a bundle folder (or of a manifest file) as a :class:`Manifest`; schema 1 and 2 are
    upgraded in memory; a missing, unreadable or newer manifest is a :class:`BundleError` that says how to
    re-export."""
    path = manifest_path(root_or_file)
    if not path.is_file():
        raise BundleError(f"{path.parent} is not an export bundle: {MANIFEST_FILE} not found "
                          "(write one with `mope export MODEL --out DIR`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: cannot read the manifest ({e}); {REEXPORT}") from None
    return manifest_from_json(data, where=str(path))


def manifest_from_json(data: Any, where: str = MANIFEST_FILE) -> Manifest:
    """:func:`read_manifest` for an already parsed JSON value."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: a manifest is a JSON object, got {type(data).__name__}; {REEXPORT}")
    version = data.get("schema_version", data.get("format_version", 1))
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise BundleError(f"{where}: manifest schema {version!r} is not one this mope-deploy reads (1-"
                          f"{SCHEMA_VERSION}); {REEXPORT}")
    try:
        return Manifest.from_dict(data if version == SCHEMA_VERSION else upgrade(data))
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration) as e:
        raise BundleError(f"{where}: the manifest (schema {version}) is incomplete or malformed "
                          f"({type(e).__name__}: {e}); {REEXPORT}") from None


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions of ``names`` (default: the libraries that shape an export; None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_table(root: str | Path) -> dict[str, FileRecord]:
    """``{relative path: FileRecord(sha256, bytes)}`` for every file under ``root`` except the manifest."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): FileRecord(file_sha256(p), p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}


def write_manifest(root: str | Path, manifest: Manifest, *, stamp: bool = True) -> Manifest:
    """Write ``manifest`` into bundle folder ``root`` atomically and return what was written. With ``stamp``
    (the exporter's case) the file table, library versions, creation time and schema version are filled in
    first; without it the manifest is written exactly as given."""
    root = Path(root)
    if stamp:
        manifest = dataclasses.replace(
            manifest, files=file_table(root), versions=library_versions(), schema_version=SCHEMA_VERSION,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), upgraded_from=None)
    atomic_write_text(root / MANIFEST_FILE, json.dumps(manifest.to_dict(), indent=2))
    return manifest


__all__ = ["SCHEMA_VERSION", "LIBRARIES", "ONNXRUNTIME", "PORTABLE", "Record", "FileRecord", "TensorSpec",
           "EncoderSpec", "Variant", "Engine", "EngineSet", "Sparsity", "Source", "Gates", "Manifest", "upgrade",
           "manifest_path", "read_manifest", "manifest_from_json", "library_versions", "file_table",
           "write_manifest"]
