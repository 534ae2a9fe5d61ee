"""What identifies a model and its artefacts, each hash computed ONE way and used everywhere.

- :func:`file_sha256`: sha256 (64 hex) of a file's bytes, read in chunks (bundle files, model files, indexes).
- :func:`weights_hash`: sha256 (16 hex) over every tensor of a module's state dict in key order: name, shape,
  dtype and raw bytes, so a dtype change or a renamed tensor changes it (score tables, indexes, manifests).
- :func:`model_hash`: ``arch_hash:weights_hash``, the shape and the weights together.
- :func:`plan_hash`: sha256 (16 hex) of a pruning plan's JSON dict with sorted keys, **without** its ``info``
  entry. ``info`` describes how a plan was made (target, methods, notes); two plans keeping the same blocks,
  heads and neurons of the same teacher make the same model and must hash alike, and the hash already stored in
  every pruned model's provenance (``plan_hash``) was computed without it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch

CHUNK = 1 << 20
SHORT = 16  # hex digits kept by the short (identifier) hashes


def file_sha256(path: str | Path, chunk: int = CHUNK) -> str:
    """sha256 (64 hex) of the bytes of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_hash(data: Any, length: int = SHORT) -> str:
    """sha256 of ``data`` as JSON with sorted keys (``length`` hex digits)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:length]


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 (16 hex) over every tensor of the state dict, in key order (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:SHORT]


def model_hash(model: Any) -> str:
    """``arch_hash:weights_hash``: identifies both the shape and the weights of a SlimCLIP."""
    return f"{model.config.arch_hash()}:{weights_hash(model)}"


def plan_hash(plan: Mapping[str, Any]) -> str:
    """The hash of a pruning plan given as its dict (``PruningPlan.to_dict()``); ``info`` is left out (see the
    module docstring for why)."""
    d = {k: v for k, v in plan.items() if k != "info"}
    return json_hash(d)


def provenance_plan_hash(provenance: Mapping[str, Any] | None) -> str | None:
    """The plan hash a model's provenance records (``plan_hash``), or the hash of the plan it embeds; None for
    a model that was not pruned by a plan."""
    prov = provenance or {}
    if prov.get("plan_hash"):
        return str(prov["plan_hash"])
    plan = prov.get("plan")
    return plan_hash(plan) if isinstance(plan, Mapping) else None


__all__ = ["file_sha256", "json_hash", "weights_hash", "model_hash", "plan_hash", "provenance_plan_hash"]
