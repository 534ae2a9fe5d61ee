"""Architecture configs as plain data: per-tower lists of blocks, each with its own heads and FFN width.

A config round-trips through JSON (``to_dict`` / ``from_dict``) and is everything needed to build a
:class:`~mope_deploy.models.slim_clip.SlimCLIP` of the right shape; weights live apart from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Act = Literal["gelu", "quick_gelu"]


class ConfigError(ValueError):
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

    def validate(self, where: str) -> None:
        for name in ("heads", "mlp", "source"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{where}.{name} must be a non-negative integer, got {v!r}")


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

    def validate(self, where: str) -> None:
        if self.width <= 0 or self.head_dim <= 0:
            raise ConfigError(f"{where}: width and head_dim must be positive, got {self.width}, {self.head_dim}")
        if self.act not in ("gelu", "quick_gelu"):
            raise ConfigError(f"{where}.act must be 'gelu' or 'quick_gelu', got {self.act!r}")
        sources = [b.source for b in self.blocks]
        if sources != sorted(set(sources)):
            raise ConfigError(f"{where}.blocks: sources must be strictly increasing, got {sources}")
        for i, b in enumerate(self.blocks):
            b.validate(f"{where}.blocks[{i}]")


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

    def validate(self, where: str = "vision") -> None:
        super().validate(where)
        if self.image_size % self.patch_size:
            raise ConfigError(f"{where}: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.pool not in ("tok", "avg"):
            raise ConfigError(f"{where}.pool must be 'tok' or 'avg', got {self.pool!r}")


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

    def validate(self, where: str = "text") -> None:
        super().validate(where)
        if self.pool not in ("argmax", "eos", "first", "last"):
            raise ConfigError(f"{where}.pool must be one of argmax, eos, first, last; got {self.pool!r}")


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

    def tower(self, name: str) -> TowerConfig:
        if name not in ("vision", "text"):
            raise ConfigError(f"unknown tower {name!r}: use 'vision' or 'text'")
        return getattr(self, name)

    def validate(self) -> "CLIPConfig":
        if self.embed_dim <= 0:
            raise ConfigError(f"embed_dim must be positive, got {self.embed_dim}")
        self.vision.validate("vision")
        self.text.validate("text")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        try:
            d = dict(d)
            vision = _tower_from_dict(VisionConfig, d.pop("vision"), "vision")
            text = _tower_from_dict(TextConfig, d.pop("text"), "text")
            _check_keys(cls, d, "config", skip={"vision", "text"})
            return cls(vision=vision, text=text, **d).validate()
        except KeyError as e:
            raise ConfigError(f"config is missing the field {e.args[0]!r}") from None

    def arch_dict(self) -> dict[str, Any]:
        """The architecture alone (no provenance): what decides the shapes of the weights."""
        d = self.to_dict()
        d.pop("provenance")
        return d

    def arch_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.arch_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _check_keys(cls, d: dict, where: str, skip: set[str] = frozenset()) -> None:
    allowed = {f.name for f in dataclasses.fields(cls)} - set(skip)
    unknown = set(d) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _tower_from_dict(cls, d: dict[str, Any], where: str):
    d = dict(d)
    blocks = [BlockConfig(**b) if isinstance(b, dict) else b for b in d.pop("blocks")]
    _check_keys(cls, d, where, skip={"blocks"})
    return cls(blocks=blocks, **d)


def uniform_blocks(depth: int, heads: int, mlp: int) -> list[BlockConfig]:
    """``depth`` identical blocks, sources 0..depth-1 (an unpruned tower)."""
    return [BlockConfig(heads=heads, mlp=mlp, source=i) for i in range(depth)]
