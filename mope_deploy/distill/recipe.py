"""Compression recipes: YAML files parsed in exactly one place into a validated object.

An unknown key or a bad value is an error that names the key and what is allowed (pydantic with
``extra="forbid"``). The recipe chooses the paper's pipeline: ``stage: pretraining`` (both towers, width
and depth pruned at once, then distilled) or ``stage: finetuning`` (one tower, width first then depth,
distilling after each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


class RecipeError(ValueError):
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
    mlp_ratio: float = Field(4.0, gt=0)
    depth: Optional[int] = Field(None, gt=0, description="number of blocks kept")


class PruneSpec(_Strict):
    vision: Optional[TowerTarget] = None
    text: Optional[TowerTarget] = None
    method: Literal["mope", "magnitude", "gradient"] = "mope"
    depth_method: Literal["mope", "every-other", "top", "bottom", "gradient"] = "mope"
    metric: Literal["recall_mean", "tr_mean", "ir_mean"] = "recall_mean"
    neuron_groups: int = Field(32, gt=0)
    allocation: Literal["per-block", "global"] = "per-block"
    order: Literal["width-first", "depth-first", "joint"] = Field(
        "width-first", description="fine-tuning stage only (paper Table 9): width then depth with a distillation "
                                   "after each, depth then width, or both at once from one scoring of the teacher")

    @model_validator(mode="after")
    def _some_target(self):
        if self.vision is None and self.text is None:
            raise ValueError("prune: give a target for at least one tower (prune.vision or prune.text)")
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


class Recipe(_Strict):
    name: str
    teacher: str = Field(description="'demo', a model dir, or an open_clip name")
    pretrained: Optional[str] = None
    stage: Literal["pretraining", "finetuning"]
    data: DataSpec
    prune: PruneSpec
    distill: DistillSpec = DistillSpec()
    train: TrainSpec = TrainSpec()
    depth_train: Optional[TrainSpec] = Field(None, description="fine-tuning stage: the run after depth pruning "
                                                             "(defaults to `train`)")

    @model_validator(mode="after")
    def _stage_towers(self):
        if self.stage == "finetuning":
            towers = [t for t in ("vision", "text") if getattr(self.prune, t) is not None]
            if len(towers) != 1:
                raise ValueError("stage finetuning compresses exactly one tower: give prune.vision or prune.text")
        return self

    @property
    def towers(self) -> list[str]:
        return [t for t in ("vision", "text") if getattr(self.prune, t) is not None]


def _format(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}" + (f" (got {err['input']!r})" if err["type"] != "missing" and
                                          not isinstance(err.get("input"), dict) else ""))
    return f"recipe {source} is invalid:\n" + "\n".join(lines)


def parse_recipe(data: dict, source: str = "<dict>") -> Recipe:
    """Validate a recipe given as a dict."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format(e, source)) from None


def load_recipe(path_or_name: str | Path) -> Recipe:
    """Read a recipe: a YAML path, or a name under ``recipes/`` (``demo`` -> ``recipes/demo.yaml``)."""
    p = Path(path_or_name)
    if not p.is_file():
        cand = RECIPES_DIR / f"{path_or_name}.yaml"
        if cand.is_file():
            p = cand
        else:
            names = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
            raise RecipeError(f"recipe {path_or_name!r} not found: give a YAML path or one of {names}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {p} must be a mapping of keys (name, teacher, stage, data, prune, ...)")
    return parse_recipe(data, str(p))
