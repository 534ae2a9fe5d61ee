"""ScoreTable: per-tower cost tables (heads, FFN neuron groups, blocks) as plain JSON.

Every method (MoPE, magnitude, loss gradient) writes the same format, so a pruning plan can be made from any
of them. Higher score = more important = keep. Neuron groups are recorded as an importance ORDER of the
block's original neurons plus a group count: group ``g`` of block ``l`` is the contiguous slice
``order[l][bounds[g]:bounds[g+1]]`` (see :func:`group_bounds`), i.e. exactly the contiguous group of the
rewired FFN, expressed in the teacher's own neuron indices so that no weights ever need to be permuted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..models.config import CLIPConfig

TOWERS = ("vision", "text")
METHODS = ("mope", "magnitude", "gradient")
METRICS = ("recall_mean", "tr_mean", "ir_mean")
FORMAT_VERSION = 1


class ScoreTableError(ValueError):
    """A score table that is malformed or does not belong to the model it is used with."""


def group_bounds(n_neurons: int, n_groups: int) -> list[int]:
    """Boundaries of ``n_groups`` contiguous groups over ``n_neurons`` (sizes differ by at most one)."""
    n = max(1, min(n_groups, n_neurons)) if n_neurons else 0
    return [g * n_neurons // n for g in range(n + 1)] if n else [0]


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex) over every tensor of the state dict, in key order (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_hash(model) -> str:
    """``arch_hash:weights_hash``: identifies both the shape and the weights a table was measured on."""
    return f"{model.config.arch_hash()}:{weights_hash(model)}"


@dataclass
class TowerScores:
    """Cost tables of one tower; lists are indexed by block position in the scored model."""

    head: list[list[float]]          # [block][head]  (empty for a block without attention)
    neuron: list[list[float]]        # [block][group]  (empty for a block without FFN)
    layer: list[float]               # [block]
    neuron_order: list[list[int]]    # [block] all FFN neurons, most important first (the rewiring order)

    def groups(self, block: int) -> list[list[int]]:
        """Neuron indices of each group of ``block``, in importance order within the group."""
        order = self.neuron_order[block]
        b = group_bounds(len(order), len(self.neuron[block]))
        return [order[b[g]:b[g + 1]] for g in range(len(b) - 1)]


@dataclass
class ScoreTable:
    """Importance of every head, neuron group and block of the scored towers of one model.

    ``model_hash`` is ``arch_hash:weights_hash`` of the scored model; ``full_metric`` the unpruned model's
    metric (MoPE only, percent); ``towers`` maps ``"vision"``/``"text"`` to :class:`TowerScores`.
    """

    method: str
    model_hash: str
    towers: dict[str, TowerScores]
    n_groups: int
    metric: str | None = None
    dataset: str | None = None
    full_metric: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    @property
    def arch_hash(self) -> str:
        return self.model_hash.split(":")[0]

    def tower(self, name: str) -> TowerScores:
        if name not in self.towers:
            raise ScoreTableError(f"the {self.method} score table has no {name!r} tower (it scored "
                                  f"{sorted(self.towers)}); re-score with --tower {name} or --tower both")
        return self.towers[name]

    def check_model(self, config: CLIPConfig) -> None:
        """Refuse a table measured on a different architecture."""
        if self.arch_hash != config.arch_hash():
            raise ScoreTableError(f"score table ({self.method}) was computed for a model with arch hash "
                                  f"{self.arch_hash}, but this model's is {config.arch_hash()}; "
                                  "score this model first (mope importance MODEL ...)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreTable":
        try:
            d = dict(d)
            if d.get("version") != FORMAT_VERSION:
                raise ScoreTableError(f"score table format version {d.get('version')!r} is not supported "
                                      f"(expected {FORMAT_VERSION}); re-run mope importance")
            towers = {k: TowerScores(**v) for k, v in d.pop("towers").items()}
            table = cls(towers=towers, **d)
        except (KeyError, TypeError) as e:
            raise ScoreTableError(f"not a score table (written by mope importance): {e}") from None
        table.validate()
        return table

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ScoreTableError(f"unknown scoring method {self.method!r}; expected one of {METHODS}")
        for name, t in self.towers.items():
            if name not in TOWERS:
                raise ScoreTableError(f"unknown tower {name!r} in score table; expected vision or text")
            n = len(t.layer)
            if not (len(t.head) == len(t.neuron) == len(t.neuron_order) == n):
                raise ScoreTableError(f"{name}: head/neuron/layer/neuron_order tables cover different numbers "
                                      f"of blocks ({len(t.head)}, {len(t.neuron)}, {n}, {len(t.neuron_order)})")
            for l, order in enumerate(t.neuron_order):
                if sorted(order) != list(range(len(order))):
                    raise ScoreTableError(f"{name} block {l}: neuron_order is not a permutation of 0..{len(order) - 1}")

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON atomically (temporary sibling file, fsync, rename)."""
        return atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "ScoreTable":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"score table {path} not found; create it with `mope importance MODEL "
                                    "--data SPEC --out scores.json`")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ScoreTableError(f"{path} is not valid JSON ({e}); re-run mope importance") from None
        return cls.from_dict(d)
