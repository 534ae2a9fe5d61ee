"""Compression recipes: YAML files parsed in exactly one place into a validated object.

An unknown key or a bad value is an error that names the key and what is allowed (pydantic with
``extra="forbid"``). The recipe chooses the paper's pipeline: ``stage: pretraining`` (both towers, width
and depth pruned at once, then distilled) or ``stage: finetuning`` (one tower, width first then depth,
distilling after each).
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import MopeError
from ..resources import RECIPES, listing, read_text
from ..vocab import (ALLOCATIONS, DEPTH_METHODS, METHODS, METRICS, ORDERS, RECOVERY, SPARSITY_METHODS,
                     SPARSITY_SCORES, STAGES, TOWERS)


class RecipeError(MopeError, ValueError):
    """A recipe file that cannot be used (names the file, the key and what is allowed)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    train: str = Field(description="training pairs: a dataset spec (synthetic, CSV, Karpathy JSON, WebDataset)")
    val: str = Field(description="validation set the MoPE metric is measured on")
    test: str = Field(description="test set for the report")
    image_root: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_max_images: Optional[int] = Field(None, gt=0, description="score on a subset of val for speed")


class TowerTarget(_Strict):
    width: Optional[int] = Field(None, gt=0, description="attention width per kept block (FFN = mlp_ratio x width)")
    mlp_ratio: Optional[float] = Field(None, gt=0, description="FFN neurons per unit of width (default: the "
                                                                "teacher's own ratio, as `mope prune` uses)")
    depth: Optional[int] = Field(None, gt=0, description="number of blocks kept")


class LatencySpec(_Strict):
    """A latency budget instead of widths and depths: ``mope compress`` resolves it to concrete tower targets with
    :func:`mope_deploy.planning.resolve_recipe` (shapes timed on ``backend``) before scoring. A bare number is
    ``ms``. ``predicted_ms`` / ``teacher_ms`` are filled by the planner and copied into report.json."""

    ms: Optional[float] = Field(None, gt=0, description="budget per batch of `batch`, the pruned towers summed (ms)")
    speedup: Optional[float] = Field(None, gt=0, description="budget as a speed-up over the teacher's predicted "
                                                             "latency on the same backend")
    backend: str = Field("onnxruntime", description="deployment backend the shapes are timed on (as mope bench)")
    batch: int = Field(1, gt=0)
    threads: Optional[int] = Field(None, gt=0)
    predicted_ms: Optional[float] = Field(None, gt=0, description="filled by the planner: the chosen shape")
    teacher_ms: Optional[float] = Field(None, gt=0, description="filled by the planner: the teacher")
    towers: Optional[list[Literal[TOWERS]]] = Field(None, description="filled by the planner: the towers "  # type: ignore[valid-type]
                                                                       "the budget covers")

    @model_validator(mode="before")
    @classmethod
    def _number(cls, data):
        return {"ms": data} if isinstance(data, (int, float)) and not isinstance(data, bool) else data

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.ms is None) == (self.speedup is None):
            raise ValueError("prune.latency: give exactly one of ms (a budget per batch) and speedup")
        return self

    @property
    def resolved(self) -> bool:
        return self.predicted_ms is not None


class PruneSpec(_Strict):
    vision: Optional[TowerTarget] = None
    text: Optional[TowerTarget] = None
    latency: Optional[LatencySpec] = Field(None, description="a latency budget the planner turns into widths and "
                                                             "depths (mope plan); a number is ms per batch")
    method: Literal[METHODS] = "mope"  # type: ignore[valid-type]  (Literal of the shared vocabulary)
    depth_method: Literal[DEPTH_METHODS] = "mope"  # type: ignore[valid-type]
    metric: Literal[METRICS] = "recall_mean"  # type: ignore[valid-type]
    neuron_groups: int = Field(32, gt=0)
    allocation: Literal[ALLOCATIONS] = "per-block"  # type: ignore[valid-type]
    order: Literal[ORDERS] = Field(  # type: ignore[valid-type]
        "width-first", description="fine-tuning stage only (paper Table 9): width then depth with a distillation "
                                   "after each, depth then width, or both at once from one scoring of the teacher")

    @model_validator(mode="after")
    def _some_target(self):
        if self.vision is None and self.text is None and self.latency is None:
            raise ValueError("prune: give a target for at least one tower (prune.vision or prune.text) or a "
                             "latency budget (prune.latency)")
        return self


class DistillSpec(_Strict):
    """``L = itc * L_itc + alpha * L_sim + beta * L_feat + gamma * L_hidn`` (paper Eq. 2-7)."""

    itc: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0, description="similarity-matrix soft cross-entropy")
    beta: float = Field(1000.0, ge=0, description="final-embedding MSE")
    gamma: float = Field(1.0, ge=0, description="hidden-state MSE per kept block")
    enabled: bool = Field(True, description="false: plain contrastive retraining, no teacher")


class TrainSpec(_Strict):
    """Optimisation of one distillation run (Tables B2/B3)."""

    epochs: int = Field(1, gt=0)
    steps_per_epoch: Optional[int] = Field(None, gt=0, description="required for endless streams (synthetic)")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(3e-4, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of steps")
    betas: tuple[float, float] = (0.9, 0.98)
    grad_accum: int = Field(1, gt=0)
    clip_grad: Optional[float] = Field(None, gt=0)
    amp: bool = True
    seed: int = 42
    checkpoint_every: int = Field(100, gt=0)
    eval_every_epoch: bool = True


class SparsityStage(_Strict):
    """Weight sparsity after MoPE pruning + distillation (:mod:`mope_deploy.sparsity`), optionally recovered with
    SparseLoRA: e.g. MoPE width/depth pruning, then 2:4 (the Ampere-GPU deployment combination)."""

    method: Literal[SPARSITY_METHODS] = "sparsegpt"  # type: ignore[valid-type]
    sparsity: Optional[float] = Field(None, ge=0, lt=1, description="fraction of block weights set to 0 "
                                                                    "(n:m alone implies 1 - n/m)")
    pattern: str = Field("2:4", description="unstructured or n:m (2:4, 4:8)")
    max_block_sparsity: Optional[float] = Field(None, gt=0, lt=1, description="ecoflap: cap per block")
    scores: Literal[SPARSITY_SCORES] = "zeroth"  # type: ignore[valid-type]
    towers: list[Literal[TOWERS]] = list(TOWERS)  # type: ignore[valid-type]
    samples: int = Field(128, ge=2, description="calibration pairs from data.train")
    batch_size: int = Field(32, gt=0)
    recover: Optional[Literal[RECOVERY]] = None  # type: ignore[valid-type]
    recover_steps: int = Field(200, gt=0)
    recover_batch: int = Field(32, ge=2)
    lora_rank: int = Field(4, gt=0)
    lr: float = Field(1e-3, gt=0)
    kd: bool = Field(False, description="recover with the full KD loss instead of InfoNCE + KL")

    @model_validator(mode="after")
    def _request(self):
        from ..sparsity import SparsityError

        try:
            self.spec().resolved()
        except SparsityError as e:
            raise ValueError(str(e)) from None
        return self

    def spec(self):
        """The :class:`~mope_deploy.sparsity.SparsifySpec` this stage runs."""
        from ..sparsity import SparsifySpec

        return SparsifySpec(method=self.method, sparsity=self.sparsity, pattern=self.pattern,
                            max_block_sparsity=self.max_block_sparsity, scores=self.scores, towers=tuple(self.towers),
                            samples=self.samples, batch_size=self.batch_size)


#: A recipe name becomes a folder (``runs/<name>``): a plain file name, so that it cannot point anywhere else.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class Recipe(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="run name, also the default folder runs/<name>: letters, "
                      "digits, '-', '_' and '.', starting with a letter or digit (a plain file name, at most 100)")
    teacher: str = Field(description="'demo', a model dir, or an open_clip name")
    pretrained: Optional[str] = None
    stage: Literal[STAGES]  # type: ignore[valid-type]
    data: DataSpec
    prune: PruneSpec
    distill: DistillSpec = DistillSpec()
    train: TrainSpec = TrainSpec()
    depth_train: Optional[TrainSpec] = Field(None, description="fine-tuning stage: the run after depth pruning "
                                                             "(defaults to `train`)")
    sparsity: Optional[SparsityStage] = Field(None, description="weight sparsity after pruning + distillation")

    @model_validator(mode="after")
    def _stage_towers(self):
        if self.stage == "finetuning":
            towers = [t for t in TOWERS if getattr(self.prune, t) is not None]
            if len(towers) != 1:
                raise ValueError("stage finetuning compresses exactly one tower: give prune.vision or prune.text")
        return self

    @property
    def towers(self) -> list[str]:
        return [t for t in TOWERS if getattr(self.prune, t) is not None]

    def require_concrete(self) -> None:
        """Refuse a latency budget (``prune.latency``) not yet resolved to widths and depths."""
        lat = self.prune.latency
        if lat is not None and not lat.resolved:
            raise RecipeError("prune.latency is a budget, not widths and depths yet: run the recipe with `mope "
                              "compress` (it plans the shapes first) or resolve it with "
                              "mope_deploy.planning.resolve_recipe(recipe)")


# reprlib bounds the echo of a bad value in time and length (a YAML alias bomb expands to 10^9 items)
_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxlist, _ECHO.maxtuple, _ECHO.maxdict, _ECHO.maxstring, _ECHO.maxother = 2, 3, 3, 3, 60, 60
_MAX_LINES = 12
#: a recipe is a few hundred bytes; PyYAML is pure Python, so a megabyte of YAML would take seconds to parse
MAX_RECIPE_BYTES = 1 << 20


def _format(e: ValidationError, source: str) -> str:
    lines = []
    errors = e.errors(include_url=False)
    for err in errors[:_MAX_LINES]:
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "string_pattern_mismatch" and err["loc"] == ("name",):
            msg = ("must be a plain file name (letters, digits, '-', '_', '.'; starting with a letter or digit), "
                   "since it names the run folder runs/<name>")
        lines.append(f"  {key}: {msg}" + (f" (got {_ECHO.repr(err['input'])})" if err["type"] != "missing" and
                                          not isinstance(err.get("input"), dict) else ""))
    if len(errors) > _MAX_LINES:
        lines.append(f"  ... and {len(errors) - _MAX_LINES} more")
    return f"recipe {source} is invalid:\n" + "\n".join(lines)


def parse_recipe(data: dict, source: str = "<dict>") -> Recipe:
    """Validate a recipe given as a dict."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format(e, source)) from None


def recipe_names() -> list[str]:
    """Names of the recipes shipped with the package (the repository's ``recipes/`` folder)."""
    return sorted(n[: -len(".yaml")] for n in listing(RECIPES, ".yaml"))


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], source: str) -> dict:
    """``KEY=VALUE`` overrides (``train.epochs=1``; VALUE read as YAML) applied to a recipe dict before it is
    validated, so an override is checked like the file itself."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: give KEY=VALUE, e.g. --set train.epochs=1")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {item!r}: VALUE is not valid YAML ({e})") from None
        except RecursionError:
            raise RecipeError(f"--set {_ECHO.repr(item)}: VALUE is nested too deeply") from None
        *path, last = key.strip().split(".")
        d = data
        for i, k in enumerate(path):
            nxt = d.get(k)
            if nxt is None:
                nxt = {}
            elif not isinstance(nxt, dict):
                raise RecipeError(f"--set {item!r}: {'.'.join(path[:i + 1])} in recipe {source} is not a mapping")
            d[k] = nxt = dict(nxt)
            d = nxt
        d[last] = value
    return data


def load_recipe(path_or_name: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe: a YAML path, or the name of a shipped recipe (``demo`` -> ``recipes/demo.yaml``);
    ``overrides`` (``KEY=VALUE``, see :func:`apply_overrides`) change fields before validation."""
    p = Path(path_or_name)
    if p.is_file():
        if p.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe {p} is {p.stat().st_size} bytes: a recipe is a small YAML file (at most "
                              f"{MAX_RECIPE_BYTES // 1024} KiB); is this the right file?")
        try:
            text, source = p.read_text(encoding="utf-8"), str(p)
        except UnicodeDecodeError as e:
            raise RecipeError(f"recipe {p} is not UTF-8 text (byte {e.start})") from None
    elif str(path_or_name) in recipe_names():
        text, source = read_text(RECIPES, f"{path_or_name}.yaml"), f"recipes/{path_or_name}.yaml"
    else:
        raise RecipeError(f"recipe {path_or_name!r} not found: give a YAML path or one of {recipe_names()}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {source} is not valid YAML: {e}") from None
    except RecursionError:
        raise RecipeError(f"recipe {source} is nested too deeply to be a recipe") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {source} must be a mapping of keys (name, teacher, stage, data, prune, ...)")
    return parse_recipe(apply_overrides(data, overrides, source) if overrides else data, source)
