"""A bundle folder: where each file is, what its (typed) manifest says, the model config it carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.config import CLIPConfig, ConfigError
from ..models.identity import file_sha256
from ..vocab import TOWERS
from .manifest import Engine, Manifest, read_manifest, write_manifest
from .names import MANIFEST_FILE, REEXPORT, BundleError, encoder_stem, onnx_name


class Bundle:
    """An export bundle directory. ``manifest`` is read once (:func:`~.manifest.read_manifest`: older schemas
    upgraded in memory); file lookups follow the manifest, never a second rule."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._manifest: Manifest | None = None

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

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = read_manifest(self.root)
        return self._manifest

    def write_manifest(self, manifest: Manifest) -> Manifest:
        """Stamp (files, versions, time) and write ``manifest`` atomically; it becomes :attr:`manifest`."""
        self._manifest = write_manifest(self.root, manifest)
        return self._manifest

    def config(self) -> CLIPConfig:
        """The model config stored in the manifest."""
        d = self.manifest.config
        if not d:
            raise BundleError(f"{self.manifest_path} has no 'config': the bundle does not say how to preprocess "
                              f"images and tokenise text; {REEXPORT}")
        try:
            return CLIPConfig.from_dict(d)
        except (ConfigError, TypeError, KeyError) as e:
            raise BundleError(f"{self.manifest_path}: not a valid model config ({e}); {REEXPORT}") from None

    def onnx(self, tower: str, variant: str = "fp32") -> Path:
        """Where a graph of ``variant`` is (or would be) by the naming convention."""
        return self.root / onnx_name(tower, variant)

    def variant_files(self, variant: str) -> dict[str, Path] | None:
        """``{tower: path}`` of ``variant`` as the manifest lists it, or None when it lists no such variant or a
        file is absent."""
        v = self.manifest.variants.get(variant)
        if v is None:
            return None
        paths = {t: self.root / v.files[t] for t in TOWERS}
        return paths if all(p.is_file() for p in paths.values()) else None

    def runtime_files(self, backend: str) -> tuple[dict[str, str], dict[str, Path]]:
        """The variant per tower the manifest's ``runtime`` section names for ``backend``, and its files;
        :class:`BundleError` when a listed file is missing."""
        m = self.manifest
        chosen = {t: m.runtime_variant(backend, t) for t in TOWERS}
        paths = {}
        for t, name in chosen.items():
            v = m.variants.get(name)
            if v is None:
                raise BundleError(f"{self.manifest_path}: the runtime section names variant {name!r} for {backend} "
                                  f"but the manifest lists no such variant; {REEXPORT}")
            paths[t] = self.root / v.files[t]
            if not paths[t].is_file():
                raise BundleError(f"{paths[t]} not found: the bundle is incomplete; {REEXPORT}")
        return chosen, paths

    def engine(self, tower: str, fmt: str = "tensorrt") -> Path:
        """The engine file of ``tower`` as the manifest lists it (format ``tensorrt`` by default)."""
        es = self.manifest.engines.get(fmt)
        entry: Engine | None = es.engines.get(tower) if es else None
        if entry is None:
            raise BundleError(f"{self.root}: the manifest lists no {fmt} engine for the {tower} tower "
                              f"({encoder_stem(tower)}.*); build the engines first (mope export MODEL --format "
                              f"{fmt} --out DIR, on the GPU that will run them)")
        return self.root / entry.file

    def verify(self) -> list[str]:
        """Files whose sha256 no longer matches the manifest (or that are missing); empty when intact."""
        bad = []
        for rel, info in self.manifest.files.items():
            p = self.root / rel
            if not p.is_file() or file_sha256(p) != info.sha256:
                bad.append(rel)
        return bad


__all__ = ["Bundle"]
