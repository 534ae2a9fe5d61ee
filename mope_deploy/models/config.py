"""Architecture configs as plain data: per-tower lists of blocks, each with its own heads and FFN width.

A config round-trips through JSON (``to_dict`` / ``from_dict``) and is everything needed to build a
:class:`~mope_deploy.models.slim_clip.SlimCLIP` of the right shape; weights live apart from it.

Every field (the towers, the blocks, the preprocessing and tokenizer settings, the weight-sparsity record) is
checked by ONE schema, :class:`~.schema.ConfigFields` (pydantic, in :mod:`.schema`, imported on first use so
building a model from a config needs no pydantic; strict types, no unknown keys), both when a config is
read (``from_dict``) and when one built in code is validated (``validate``); a bad value is a
:class:`ConfigError` naming the field, before anything uses it. The dataclasses stay the in-memory form and
``config.json``'s format is unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import MopeError
from ..vocab import TOWERS

Act = Literal["gelu", "quick_gelu"]


class ConfigError(MopeError, ValueError):
    """A config that cannot describe a valid model (names the field and what is allowed)."""


@dataclass
class BlockConfig:
    """One transformer block: ``heads`` attention heads of the tower's head size, ``mlp`` FFN neurons.

    ``source`` is the index of the teacher block this block was kept from (the identity for unpruned
    models); distillation maps hidden states through it.
    """

    heads: int
    mlp: int
    source: int


@dataclass
class TowerConfig:
    """Fields shared by both towers."""

    width: int
    head_dim: int
    blocks: list[BlockConfig]
    act: Act = "gelu"
    ln_eps: float = 1e-5

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass
class VisionConfig(TowerConfig):
    image_size: int = 224
    patch_size: int = 16
    pool: Literal["tok", "avg"] = "tok"
    final_ln_after_pool: bool = False
    ln_pre: bool = True

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass
class TextConfig(TowerConfig):
    context_length: int = 77
    vocab_size: int = 49408
    pool: Literal["argmax", "eos", "first", "last"] = "argmax"
    eos_id: int = 49407
    causal: bool = True
    proj_bias: bool = False

    @property
    def num_tokens(self) -> int:
        return self.context_length


@dataclass
class CLIPConfig:
    """A whole SlimCLIP: both towers, the shared embedding size, and what travels with the model.

    ``preprocess`` holds open_clip's image preprocessing settings (size, mean, std, interpolation,
    resize_mode); ``tokenizer`` says how text is tokenised (see :mod:`mope_deploy.models.processing`);
    ``provenance`` records where the weights came from (teacher name, plan hash, ...).
    """

    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    logit_bias: bool = False
    preprocess: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # Weight sparsity (pattern, method, per-block ratios) written by mope_deploy.sparsity; {} for dense models.
    # Not architecture: the zeros live in the weights, so it stays out of arch_hash. Schema: SparsityRecord.
    sparsity: dict[str, Any] = field(default_factory=dict)

    def tower(self, name: str) -> TowerConfig:
        if name not in TOWERS:
            raise ConfigError(f"unknown tower {name!r}: use 'vision' or 'text'")
        return getattr(self, name)

    def validate(self) -> "CLIPConfig":
        """Check every field against :class:`~.schema.ConfigFields` (as it would be saved: through JSON)."""
        try:
            d = json.loads(json.dumps(self.to_dict()))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config holds a value that is not plain JSON data ({e})") from None
        check_fields(d, required=False)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        """A config from its JSON form; every field is checked first (:class:`ConfigError` names the field)."""
        check_fields(d)
        d = copy.deepcopy(d)
        towers = {}
        for name, tcls in (("vision", VisionConfig), ("text", TextConfig)):
            t = d.pop(name)
            towers[name] = tcls(**{**t, "blocks": [BlockConfig(**b) for b in t["blocks"]]})
        return cls(**towers, **d)

    def arch_dict(self) -> dict[str, Any]:
        """The architecture alone (no provenance): what decides the shapes of the weights."""
        d = self.to_dict()
        d.pop("provenance")
        d.pop("sparsity", None)
        return d

    def arch_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.arch_dict(), sort_keys=True).encode()).hexdigest()[:16]


def uniform_blocks(depth: int, heads: int, mlp: int) -> list[BlockConfig]:
    """``depth`` identical blocks, sources 0..depth-1 (an unpruned tower)."""
    return [BlockConfig(heads=heads, mlp=mlp, source=i) for i in range(depth)]


def check_fields(d: Any, required: bool = True):
    """Validate a config's JSON form against the one schema (:mod:`.schema`); :class:`ConfigError` names the first
    bad field. pydantic is a dependency of the package; only the GPU check runs in an environment without it,
    on configs this code built, so ``required=False`` (``validate()``, ``SlimCLIP(config)``) skips the schema
    there, while reading a config file (``from_dict``) always needs it."""
    try:
        from .schema import SchemaError, validate_fields
    except ModuleNotFoundError as e:
        if required or "pydantic" not in (e.name or str(e)):
            raise
        return None

    try:
        return validate_fields(d)
    except SchemaError as e:
        raise ConfigError(str(e)) from None
