"""PruningPlan: the KEPT blocks, heads and FFN neurons of each tower, as JSON; made from scores + a target.

A plan records kept indices (never removed ones) in the teacher's own numbering, plus the teacher's arch hash,
so it re-applies to any copy of that teacher (e.g. the same architecture fine-tuned) and is easy to audit.

Targets (paper Sec. 3.2; section 2 of the design digest ALGORITHMS.md, kept outside the repository in ../shared/):
- ``width=W``: every kept block keeps ``W / head_dim`` heads and ``mlp_ratio * W`` FFN neurons (the paper's
  "width"; ``mlp_ratio`` is the teacher's, 4 for CLIP); ``allocation="per-block"`` takes the top-k in every
  block (the paper), ``"global"`` the same totals by top-k over all kept blocks (blocks then differ);
- ``depth=D``: keep ``D`` blocks, chosen by ``depth_method``: ``mope`` / ``gradient`` / ``magnitude`` (highest
  block score), ``every-other`` (evenly spaced drops, every other block at half depth), ``top`` (drop the
  top = last blocks), ``bottom`` (drop the first blocks);
- ``params=N``: the widest uniform width (a multiple of the head size, same fraction of heads in both
  towers) whose block parameters (paper convention, :func:`~mope_deploy.models.counting.model_stats`
  ``params``, over the pruned towers) fit in ``N``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import MopeError
from ..importance.table import ScoreTable
from ..models.config import BlockConfig, CLIPConfig
from ..models.counting import model_stats
from ..vocab import ALLOCATIONS, DEPTH_METHODS, METHODS, SCORED_DEPTH_METHODS, TOWERS

PLAN_VERSION = 1


class PlanError(MopeError, ValueError):
    """A target that cannot be met, or a plan that does not fit the model it is applied to."""


@dataclass
class TowerPlan:
    """Kept blocks (teacher block positions, ascending) and, for each kept block, its kept heads and neurons."""

    blocks: list[int]
    heads: list[list[int]]
    neurons: list[list[int]]


@dataclass
class PruningPlan:
    """What survives pruning, per tower; ``teacher_arch_hash`` names the model it applies to."""

    teacher_arch_hash: str
    vision: TowerPlan
    text: TowerPlan
    teacher: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def tower(self, name: str) -> TowerPlan:
        if name not in TOWERS:
            raise PlanError(f"unknown tower {name!r}: use 'vision' or 'text'")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        # one line per block's index list keeps the file short and diff-able
        text = json.dumps(self.to_dict(), indent=1)
        return re.sub(r"\[\s*([-\d,\s]*?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split(",")).replace(" ", "")
                      .replace(",", ", ").replace("\n", "") + "]", text)

    def hash(self) -> str:
        """:func:`mope_deploy.models.identity.plan_hash` of this plan (``info`` left out)."""
        from ..models.identity import plan_hash

        return plan_hash(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningPlan":
        try:
            d = dict(d)
            if d.get("version") != PLAN_VERSION:
                raise PlanError(f"plan format version {d.get('version')!r} is not supported (expected {PLAN_VERSION})")
            towers = {}
            for name in TOWERS:
                t = d.pop(name)
                if not isinstance(t, dict):
                    raise PlanError(f"{name} must be a mapping with blocks, heads and neurons")
                tp = TowerPlan(**t)
                _check_int_list(tp.blocks, f"{name}.blocks")
                for key in ("heads", "neurons"):
                    rows = getattr(tp, key)
                    if not isinstance(rows, list):
                        raise PlanError(f"{name}.{key} must be a list with one index list per kept block")
                    for i, row in enumerate(rows):
                        _check_int_list(row, f"{name}.{key}[{i}]")
                towers[name] = tp
            plan = cls(**towers, **d)
        except (KeyError, TypeError) as e:
            raise PlanError(f"not a pruning plan (written by mope prune): {e}") from None
        if not isinstance(plan.teacher_arch_hash, str):
            raise PlanError(f"teacher_arch_hash must be a string, got {plan.teacher_arch_hash!r}")
        if not isinstance(plan.info, dict):
            raise PlanError(f"info must be a mapping, got {type(plan.info).__name__}")
        return plan

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "PruningPlan":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"plan {path} not found (mope prune writes DIR/plan.json)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PlanError(f"{path} is not valid JSON ({e})") from None
        except RecursionError:
            raise PlanError(f"{path} is not valid JSON (nested too deeply)") from None
        if not isinstance(d, dict):
            raise PlanError(f"{path} is not a pruning plan (written by mope prune)")
        try:
            return cls.from_dict(d)
        except PlanError as e:
            raise PlanError(f"{path}: {e}") from None

    def validate(self, config: CLIPConfig) -> None:
        """Refuse a plan made for another teacher, or indices the teacher does not have."""
        if self.teacher_arch_hash != config.arch_hash():
            raise PlanError(f"this plan was made for a teacher with arch hash {self.teacher_arch_hash}"
                            f"{f' ({self.teacher})' if self.teacher else ''}, but the model has "
                            f"{config.arch_hash()}; apply it to a copy of its own teacher")
        for name in TOWERS:
            tp, cfg = self.tower(name), config.tower(name)
            if not tp.blocks:
                raise PlanError(f"{name}: the plan keeps no blocks; keep at least one")
            if not (len(tp.heads) == len(tp.neurons) == len(tp.blocks)):
                raise PlanError(f"{name}: heads/neurons must have one entry per kept block ({len(tp.blocks)})")
            if tp.blocks != sorted(set(tp.blocks)) or tp.blocks[0] < 0 or tp.blocks[-1] >= cfg.depth:
                raise PlanError(f"{name}: kept blocks {tp.blocks} must be increasing indices in 0..{cfg.depth - 1}")
            for b, hs, ns in zip(tp.blocks, tp.heads, tp.neurons):
                bc = cfg.blocks[b]
                _check_indices(hs, bc.heads, f"{name} block {b} heads")
                _check_indices(ns, bc.mlp, f"{name} block {b} FFN neurons")

    def apply_config(self, config: CLIPConfig) -> CLIPConfig:
        """The pruned model's config (sources map back to the original teacher's blocks)."""
        self.validate(config)
        d = config.to_dict()
        for name in TOWERS:
            tp, cfg = self.tower(name), config.tower(name)
            d[name]["blocks"] = [asdict(BlockConfig(heads=len(h), mlp=len(n), source=cfg.blocks[b].source))
                                 for b, h, n in zip(tp.blocks, tp.heads, tp.neurons)]
        d["provenance"] = {**config.provenance, "pruned_from": config.arch_hash(), "plan_hash": self.hash(),
                           **({"plan_info": self.info} if self.info else {})}
        return CLIPConfig.from_dict(d)


def _check_int_list(idx, where: str) -> None:
    """Indices are plain integers: 1.0 or "1" would pass a comparison and fail (or mislead) later."""
    if not isinstance(idx, list):
        raise PlanError(f"{where} must be a list of integer indices, got {type(idx).__name__}")
    for i, v in enumerate(idx):
        if not isinstance(v, int) or isinstance(v, bool):
            raise PlanError(f"{where}[{i}]: {v!r} is not an integer index")


def _check_indices(idx: list[int], n: int, where: str) -> None:
    if idx != sorted(set(idx)) or (idx and (idx[0] < 0 or idx[-1] >= n)):
        raise PlanError(f"{where}: kept indices must be increasing and within 0..{n - 1}, got {idx[:8]}...")


def full_plan(config: CLIPConfig, teacher: str | None = None) -> PruningPlan:
    """The identity plan: everything kept."""
    def tp(cfg):
        return TowerPlan(blocks=list(range(cfg.depth)), heads=[list(range(b.heads)) for b in cfg.blocks],
                         neurons=[list(range(b.mlp)) for b in cfg.blocks])
    return PruningPlan(teacher_arch_hash=config.arch_hash(), vision=tp(config.vision), text=tp(config.text),
                       teacher=teacher)


@dataclass
class Target:
    """What to prune to; see the module docstring. ``tower`` is ``vision``, ``text`` or ``both``."""

    tower: str = "both"
    width: int | None = None
    depth: int | None = None
    params: int | None = None
    depth_method: str = "mope"
    allocation: str = "per-block"
    mlp_ratio: float | None = None  # None: the teacher's own FFN / attention-width ratio
    method: str = "mope"  # the score table that ranks heads and neurons for a width or budget

    def towers(self) -> tuple[str, ...]:
        if self.tower == "both":
            return TOWERS
        if self.tower not in TOWERS:
            raise PlanError(f"tower must be vision, text or both, got {self.tower!r}")
        return (self.tower,)

    def check(self) -> None:
        self.towers()
        if self.width is None and self.depth is None and self.params is None:
            raise PlanError("no target given: set a width (--width), a depth (--depth) or a parameter budget (--params)")
        if self.width is not None and self.params is not None:
            raise PlanError("give either a width or a parameter budget, not both (the budget decides the width)")
        if self.depth_method not in DEPTH_METHODS:
            raise PlanError(f"unknown depth method {self.depth_method!r}; use one of {', '.join(DEPTH_METHODS)}")
        if self.method not in METHODS:
            raise PlanError(f"unknown width method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.allocation not in ALLOCATIONS:
            raise PlanError(f"unknown allocation {self.allocation!r}; use one of {', '.join(ALLOCATIONS)}")
        for name in ("width", "depth", "params"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise PlanError(f"{name} must be a positive integer, got {v!r}"
                                + ("; a plan must keep at least one block" if name == "depth" else ""))

    def required_tables(self) -> tuple[str, ...]:
        """The score tables (by method) this target needs: the width ranking when a width or a budget is set,
        the block ranking when a depth is chosen by score (every-other / top / bottom need none)."""
        need = [self.method] if self.width is not None or self.params is not None else []
        if self.depth is not None and self.depth_method in SCORED_DEPTH_METHODS and self.depth_method not in need:
            need.append(self.depth_method)
        return tuple(need)


def _top(scores: list[float], k: int) -> list[int]:
    """Indices of the ``k`` highest scores (ties: lower index first), ascending."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def select_blocks(n_blocks: int, depth: int, method: str, scores: list[float] | None = None) -> list[int]:
    """Which ``depth`` of ``n_blocks`` blocks to keep (ascending)."""
    if depth > n_blocks:
        raise PlanError(f"depth {depth} is more than the {n_blocks} blocks the tower has")
    if depth < 1:
        raise PlanError("depth must be at least 1: a plan with no blocks left cannot be built")
    drop = n_blocks - depth
    if method == "top":
        return list(range(depth))
    if method == "bottom":
        return list(range(drop, n_blocks))
    if method == "every-other":
        # drops evenly spaced, counted from the first block: every second block at half depth
        dropped = {(k + 1) * n_blocks // drop - 1 for k in range(drop)} if drop else set()
        return [i for i in range(n_blocks) if i not in dropped]
    if scores is None:
        raise PlanError(f"depth method {method!r} needs a score table with block scores")
    return _top(scores, depth)


def _neurons_from_groups(groups: list[list[int]], group_scores: list[float], k: int) -> list[int]:
    """Top-``k`` neurons taking whole groups by score; the last group partially (its most important first)."""
    kept: list[int] = []
    for g in sorted(range(len(groups)), key=lambda i: (-group_scores[i], i)):
        if len(kept) >= k:
            break
        kept += groups[g][: k - len(kept)]
    return sorted(kept)


def _global_select(units: list[tuple[float, int, int, list[int]]], k: int) -> dict[int, list[int]]:
    """Top-``k`` items over ``units`` = (score, block, unit index, items) across blocks (partial last unit)."""
    kept: dict[int, list[int]] = {}
    total = 0
    for score, b, i, items in sorted(units, key=lambda u: (-u[0], u[1], u[2])):
        if total >= k:
            break
        take = items[: k - total]
        kept.setdefault(b, []).extend(take)
        total += len(take)
    return kept


def _mlp_ratio(config: CLIPConfig, tower: str, target: Target) -> float:
    if target.mlp_ratio is not None:
        return target.mlp_ratio
    cfg = config.tower(tower)
    b = max(cfg.blocks, key=lambda b: b.heads)
    if not b.heads:
        raise PlanError(f"{tower}: no block has attention heads, so a width cannot be set")
    return b.mlp / (b.heads * cfg.head_dim)


def _width_heads(config: CLIPConfig, tower: str, width: int) -> int:
    hd = config.tower(tower).head_dim
    if width % hd:
        raise PlanError(f"{tower}: width {width} is not a multiple of the head size {hd}; use a multiple "
                        f"such as {max(hd, width // hd * hd)}")
    return width // hd


def _tower_plan(config: CLIPConfig, tower: str, target: Target, width: int | None,
                width_table: ScoreTable | None, depth_table: ScoreTable | None) -> TowerPlan:
    cfg = config.tower(tower)
    L = cfg.depth
    if target.depth is not None and target.depth != L:
        scores = None
        if target.depth_method in SCORED_DEPTH_METHODS:
            if depth_table is None:
                raise PlanError(f"depth method {target.depth_method!r} needs its score table (mope importance "
                                f"--method {target.depth_method}); or use every-other, top or bottom")
            scores = depth_table.tower(tower).layer
        blocks = select_blocks(L, target.depth, target.depth_method, scores)
    else:
        blocks = list(range(L))
    if width is None:
        return TowerPlan(blocks=blocks, heads=[list(range(cfg.blocks[b].heads)) for b in blocks],
                         neurons=[list(range(cfg.blocks[b].mlp)) for b in blocks])
    if width_table is None:
        raise PlanError("a width target needs a score table (or method 'magnitude', computed from the weights)")
    ts = width_table.tower(tower)
    k_heads = _width_heads(config, tower, width)
    k_neurons = round(_mlp_ratio(config, tower, target) * width)
    if target.allocation == "per-block":
        heads, neurons = [], []
        for b in blocks:
            bc = cfg.blocks[b]
            if k_heads > bc.heads:
                raise PlanError(f"{tower} block {b}: width {width} needs {k_heads} heads but the block has only "
                                f"{bc.heads} (width at most {bc.heads * cfg.head_dim})")
            if k_neurons > bc.mlp:
                raise PlanError(f"{tower} block {b}: width {width} needs {k_neurons} FFN neurons but the block has "
                                f"only {bc.mlp}")
            heads.append(_top(ts.head[b], k_heads))
            neurons.append(_neurons_from_groups(ts.groups(b), ts.neuron[b], k_neurons))
        return TowerPlan(blocks=blocks, heads=heads, neurons=neurons)
    # global: the same totals as per-block, spread by score over all kept blocks
    n_heads, n_neurons = k_heads * len(blocks), k_neurons * len(blocks)
    have_h, have_n = sum(cfg.blocks[b].heads for b in blocks), sum(cfg.blocks[b].mlp for b in blocks)
    if n_heads > have_h or n_neurons > have_n:
        raise PlanError(f"{tower}: width {width} over {len(blocks)} blocks needs {n_heads} heads and {n_neurons} "
                        f"neurons, but the kept blocks have {have_h} and {have_n}")
    hsel = _global_select([(ts.head[b][h], b, h, [h]) for b in blocks for h in range(len(ts.head[b]))], n_heads)
    nsel = _global_select([(ts.neuron[b][g], b, g, grp) for b in blocks for g, grp in enumerate(ts.groups(b))],
                          n_neurons)
    return TowerPlan(blocks=blocks, heads=[sorted(hsel.get(b, [])) for b in blocks],
                     neurons=[sorted(nsel.get(b, [])) for b in blocks])


def make_plan(config: CLIPConfig, target: Target, width_table: ScoreTable | None = None,
              depth_table: ScoreTable | None = None, teacher: str | None = None) -> PruningPlan:
    """A plan for ``config``'s model meeting ``target``.

    ``width_table`` ranks heads and neuron groups (any method); ``depth_table`` ranks blocks (needed for depth
    methods mope / gradient / magnitude; defaults to ``width_table``). Towers outside ``target.tower`` are kept
    whole. Both tables must have been measured on this architecture.
    """
    target.check()
    depth_table = depth_table if depth_table is not None else width_table
    for t in (width_table, depth_table):
        if t is not None:
            t.check_model(config)
    towers = target.towers()
    if (target.width is not None or target.params is not None) and width_table is None:
        raise PlanError("a width or parameter target needs a score table to rank heads and neurons (mope "
                        "importance), or the magnitude method, which is computed from the weights")
    if (target.depth is not None and target.depth_method in SCORED_DEPTH_METHODS
            and depth_table is None):
        raise PlanError(f"depth method {target.depth_method!r} needs its score table (mope importance --method "
                        f"{target.depth_method}); or use every-other, top or bottom, which need no data")
    plan = full_plan(config, teacher)
    if target.params is not None:
        widths = _budget_widths(config, target, towers, width_table, depth_table)
    else:
        widths = {n: target.width for n in towers}
    for name in towers:
        setattr(plan, name, _tower_plan(config, name, target, widths[name], width_table, depth_table))
    plan.info = {"target": {k: v for k, v in asdict(target).items() if v is not None},
                 "width_method": width_table.method if width_table is not None and any(widths.values()) else None,
                 "depth_method": target.depth_method if target.depth is not None else None,
                 "widths": widths}
    plan.validate(config)
    return plan


def plan_for(config: CLIPConfig, target: Target, tables: dict[str, ScoreTable],
             teacher: str | None = None) -> PruningPlan:
    """The plan for ``target`` from score tables keyed by method (``mope prune`` and ``mope compress`` both
    come here): the width ranking is ``tables[target.method]``, the block ranking
    ``tables[target.depth_method]``; :meth:`Target.required_tables` says which must be present."""
    target.check()
    missing = [m for m in target.required_tables() if m not in tables]
    if missing:
        raise PlanError(f"this target needs the {', '.join(missing)} score table(s) (mope importance --method "
                        f"{missing[0]}); or use --depth-method every-other/top/bottom, which need none")
    wants_width = target.width is not None or target.params is not None
    return make_plan(config, target, width_table=tables.get(target.method) if wants_width else None,
                     depth_table=tables.get(target.depth_method), teacher=teacher)


def _budget_widths(config: CLIPConfig, target: Target, towers: tuple[str, ...], width_table, depth_table
                   ) -> dict[str, int | None]:
    """Widest widths (same fraction of heads in every pruned tower) whose block params fit ``target.params``."""
    full_heads = {n: max(b.heads for b in config.tower(n).blocks) for n in towers}
    fractions = sorted({k / h for n, h in full_heads.items() for k in range(1, h + 1)}, reverse=True)
    for f in fractions:
        widths = {n: max(1, int(f * full_heads[n] + 1e-9)) * config.tower(n).head_dim for n in towers}
        try:
            plan = full_plan(config)
            for n in towers:
                setattr(plan, n, _tower_plan(config, n, Target(**{**asdict(target), "params": None}), widths[n],
                                             width_table, depth_table))
            stats = model_stats(plan.apply_config(config))
        except PlanError:  # this width does not fit some block; try a narrower one
            continue
        if sum(stats[n]["params"] for n in towers) <= target.params:
            return widths
    smallest = {n: config.tower(n).head_dim for n in towers}
    raise PlanError(f"no width fits a budget of {target.params:,} block parameters for {', '.join(towers)} "
                    f"(even one head per block, widths {smallest}, is larger); raise --params or lower --depth")
