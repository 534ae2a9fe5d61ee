"""ScoreTable: per-tower cost tables (heads, FFN neuron groups, blocks) as plain JSON.

Every method (MoPE, magnitude, loss gradient) writes the same format, so a pruning plan can be made from any
of them. Higher score = more important = keep. Neuron groups are recorded as an importance ORDER of the
block's original neurons plus a group count: group ``g`` of block ``l`` is the contiguous slice
``order[l][bounds[g]:bounds[g+1]]`` (see :func:`group_bounds`), i.e. exactly the contiguous group of the
rewired FFN, expressed in the teacher's own neuron indices so that no weights ever need to be permuted.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import FileOwner, atomic_write_text, check_file_target, json_with
from ..errors import MopeError
from ..models.config import CLIPConfig
from ..models.identity import model_hash, weights_hash  # noqa: F401  (re-exported; one definition)
from ..vocab import METHODS, TOWERS

#: what a score table file looks like (the output policy of every command that writes one)
SCORE_TABLE_FILE = FileOwner("score table", json_with("method", "towers", "model_hash"))

FORMAT_VERSION = 1


class ScoreTableError(MopeError, ValueError):
    """A score table that is malformed or does not belong to the model it is used with."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_numbers(values: Any, where: str) -> None:
    """Scores are finite numbers: a NaN or a string would silently reorder what gets pruned."""
    if not isinstance(values, list):
        raise ScoreTableError(f"{where} must be a list of scores, got {type(values).__name__}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ScoreTableError(f"{where}[{i}]: score {v!r} is not a finite number")


def group_bounds(n_neurons: int, n_groups: int) -> list[int]:
    """Boundaries of ``n_groups`` contiguous groups over ``n_neurons`` (sizes differ by at most one)."""
    n = max(1, min(n_groups, n_neurons)) if n_neurons else 0
    return [g * n_neurons // n for g in range(n + 1)] if n else [0]


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
        for name, t in self.towers.items():
            self._check_shape(name, t, config.tower(name))

    def _check_shape(self, name: str, t: TowerScores, cfg) -> None:
        """Every list must have the model's own sizes: the hash alone does not prove an untampered table."""
        redo = "; the table does not match the model: re-run mope importance"
        if len(t.layer) != cfg.depth:
            raise ScoreTableError(f"{name}: the score table covers {len(t.layer)} blocks but the model has "
                                  f"{cfg.depth}{redo}")
        for b, bc in enumerate(cfg.blocks):
            if len(t.head[b]) != bc.heads:
                raise ScoreTableError(f"{name} block {b}: {len(t.head[b])} head scores for {bc.heads} heads{redo}")
            if len(t.neuron_order[b]) != bc.mlp:
                raise ScoreTableError(f"{name} block {b}: neuron_order lists {len(t.neuron_order[b])} neurons but "
                                      f"the block has {bc.mlp}{redo}")
            groups = len(group_bounds(bc.mlp, self.n_groups)) - 1
            if len(t.neuron[b]) != groups:
                raise ScoreTableError(f"{name} block {b}: {len(t.neuron[b])} neuron-group scores but {bc.mlp} "
                                      f"neurons in {self.n_groups} groups make {groups}{redo}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreTable":
        try:
            d = dict(d)
            if d.get("version") != FORMAT_VERSION:
                raise ScoreTableError(f"score table format version {d.get('version')!r} is not supported "
                                      f"(expected {FORMAT_VERSION}); re-run mope importance")
            raw = d.pop("towers")
            if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
                raise ScoreTableError("not a score table (written by mope importance): 'towers' must map "
                                      "vision/text to their tables")
            towers = {k: TowerScores(**v) for k, v in raw.items()}
            table = cls(towers=towers, **d)
        except (KeyError, TypeError, AttributeError) as e:
            raise ScoreTableError(f"not a score table (written by mope importance): {e}") from None
        table.validate()
        return table

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ScoreTableError(f"unknown scoring method {self.method!r}; expected one of {METHODS}")
        if not isinstance(self.model_hash, str) or ":" not in self.model_hash:
            raise ScoreTableError(f"model_hash must be 'ARCH:WEIGHTS' hashes, got {self.model_hash!r}")
        if not _is_int(self.n_groups) or self.n_groups < 1:
            raise ScoreTableError(f"n_groups must be a positive integer, got {self.n_groups!r}")
        for name, t in self.towers.items():
            if name not in TOWERS:
                raise ScoreTableError(f"unknown tower {name!r} in score table; expected vision or text")
            _check_numbers(t.layer, f"{name}.layer")
            for key in ("head", "neuron", "neuron_order"):
                rows = getattr(t, key)
                if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
                    raise ScoreTableError(f"{name}.{key} must be a list with one list per block")
                for b, row in enumerate(rows):
                    if key == "neuron_order":
                        bad = next((i for i, v in enumerate(row) if not _is_int(v)), None)
                        if bad is not None:
                            raise ScoreTableError(f"{name}.neuron_order[{b}][{bad}]: {row[bad]!r} is not an integer "
                                                  "neuron index")
                    else:
                        _check_numbers(row, f"{name}.{key}[{b}]")
            n = len(t.layer)
            if not (len(t.head) == len(t.neuron) == len(t.neuron_order) == n):
                raise ScoreTableError(f"{name}: head/neuron/layer/neuron_order tables cover different numbers "
                                      f"of blocks ({len(t.head)}, {len(t.neuron)}, {n}, {len(t.neuron_order)})")
            for l, order in enumerate(t.neuron_order):
                if sorted(order) != list(range(len(order))):
                    raise ScoreTableError(f"{name} block {l}: neuron_order is not a permutation of 0..{len(order) - 1}")

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write the table as JSON atomically; ``path`` must be absent or a score table (the output policy,
        :data:`SCORE_TABLE_FILE`), unless ``force``."""
        check_file_target(path, SCORE_TABLE_FILE, force)
        return atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "ScoreTable":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"score table {path} not found; create it with `mope importance MODEL "
                                    "--data SPEC --out scores.json`")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ScoreTableError(f"{path} is not valid JSON ({e}); re-run mope importance") from None
        except RecursionError:
            raise ScoreTableError(f"{path} is not valid JSON (nested too deeply); re-run mope importance") from None
        if not isinstance(d, dict):
            raise ScoreTableError(f"{path} is not a score table (written by mope importance)")
        try:
            return cls.from_dict(d)
        except ScoreTableError as e:
            raise ScoreTableError(f"{path}: {e}") from None
