"""Module importance: MoPE cost tables, the paper's baselines, FFN rewiring, and the ScoreTable format.

    from mope_deploy.importance import score
    table = score(model, images, tokens, txt2img, method="mope", towers=("vision",), metric="tr_mean")
    table.save("scores.json")
"""

from __future__ import annotations

from torch import Tensor

from ..models.slim_clip import SlimCLIP
from .baselines import gradient_table, magnitude_table
from .gradient import gradient_importance, permute_ffn_, rewire_ffn
from .mope import ImportanceError, MoPESettings, Probe, count_block_forwards, mope_table
from ..vocab import METHODS, METRICS, TOWERS
from .table import ScoreTable, ScoreTableError, TowerScores, group_bounds, model_hash


def score(model: SlimCLIP, images: Tensor | None = None, tokens: Tensor | None = None,
          txt2img: Tensor | None = None, method: str = "mope", towers=TOWERS, n_groups: int = 32,
          **kwargs) -> ScoreTable:
    """A ScoreTable by ``method``: ``mope`` (see :func:`mope_table` for options), ``gradient``, or
    ``magnitude`` (weights only; the data arguments may be None)."""
    if method == "magnitude":
        return magnitude_table(model, towers, n_groups)
    if method not in METHODS:
        raise ImportanceError(f"unknown importance method {method!r}; use one of {', '.join(METHODS)}")
    if images is None or tokens is None or txt2img is None:
        raise ImportanceError(f"method {method!r} needs validation data (images, tokens, txt2img); "
                         "only 'magnitude' works from the weights alone")
    if method == "gradient":
        allowed = {k: v for k, v in kwargs.items() if k in ("batch_size", "dataset")}
        return gradient_table(model, images, tokens, txt2img, towers, n_groups, **allowed)
    return mope_table(model, images, tokens, txt2img, towers=tuple(towers), n_groups=n_groups, **kwargs)


__all__ = ["score", "mope_table", "MoPESettings", "magnitude_table", "gradient_table", "gradient_importance", "rewire_ffn",
           "permute_ffn_", "Probe", "count_block_forwards", "ScoreTable", "ScoreTableError", "TowerScores",
           "group_bounds", "model_hash", "ImportanceError", "METHODS", "METRICS", "TOWERS"]
