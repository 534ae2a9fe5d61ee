"""Model identity: the fingerprint an index records, so it is never searched with another model's embeddings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def model_fingerprint(model: Any) -> dict[str, str]:
    """What identifies the model behind embeddings: an export bundle's manifest sha256 (the manifest lists every
    file's sha256), a model directory's weights+config sha256, or an open_clip name.

    An index records it and refuses to be searched with another model's embeddings (different spaces).
    """
    from ..models import SlimCLIP
    from ..models.registry import resolve
    from ..runtime import is_bundle

    if isinstance(model, SlimCLIP):
        from ..models.identity import weights_hash

        h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
        h.update(weights_hash(model).encode())
        return {"kind": "model", "sha256": h.hexdigest(), "name": "SlimCLIP (in memory)"}
    if is_bundle(model):
        from ..bundle import MANIFEST_FILE
        return {"kind": "bundle", "sha256": _sha256(Path(model) / MANIFEST_FILE), "name": str(model)}
    directory = resolve(str(model))
    if directory is not None:
        h = hashlib.sha256()
        for name in ("config.json", "model.safetensors"):
            p = Path(directory) / name
            if p.is_file():
                h.update(_sha256(p).encode())
        return {"kind": "model", "sha256": h.hexdigest(), "name": str(model)}
    return {"kind": "open_clip", "sha256": hashlib.sha256(str(model).encode()).hexdigest(), "name": str(model)}


def _sha256(path: Path) -> str:
    from ..models.identity import file_sha256

    return file_sha256(path)
