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

    def validate(self, where: str) -> None:
        for name in ("heads", "mlp", "source"):
            _check_int(f"{where}.{name}", getattr(self, name), 0, LIMITS[name])


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
        _check_int(f"{where}.width", self.width, 1, LIMITS["width"])
        _check_int(f"{where}.head_dim", self.head_dim, 1, LIMITS["head_dim"])
        if not isinstance(self.blocks, list) or len(self.blocks) > LIMITS["depth"]:
            raise ConfigError(f"{where}.blocks must be a list of at most {LIMITS['depth']} blocks, "
                              f"got {_short(self.blocks)}")
        if not all(isinstance(b, BlockConfig) for b in self.blocks):
            raise ConfigError(f"{where}.blocks: every block is a mapping with heads, mlp and source")
        ok = isinstance(self.ln_eps, (int, float)) and not isinstance(self.ln_eps, bool)
        if not ok or not 0 < self.ln_eps < 1:
            raise ConfigError(f"{where}.ln_eps must be a small positive number (e.g. 1e-5), got {_short(self.ln_eps)}")
        if self.act not in ("gelu", "quick_gelu"):
            raise ConfigError(f"{where}.act must be 'gelu' or 'quick_gelu', got {self.act!r}")
        for i, b in enumerate(self.blocks):
            b.validate(f"{where}.blocks[{i}]")
        sources = [b.source for b in self.blocks]
        if sources != sorted(set(sources)):
            raise ConfigError(f"{where}.blocks: sources must be strictly increasing, got {sources}")


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
        _check_int(f"{where}.image_size", self.image_size, 1, LIMITS["image_size"])
        _check_int(f"{where}.patch_size", self.patch_size, 1, self.image_size)
        _check_bool(where, self, ("final_ln_after_pool", "ln_pre"))
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
        _check_int(f"{where}.context_length", self.context_length, 1, LIMITS["context_length"])
        _check_int(f"{where}.vocab_size", self.vocab_size, 1, LIMITS["vocab_size"])
        _check_int(f"{where}.eos_id", self.eos_id, 0, self.vocab_size - 1)
        _check_bool(where, self, ("causal", "proj_bias"))
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
    # Weight sparsity (pattern, method, per-block ratios) written by mope_deploy.sparsity; {} for dense models.
    # Not architecture: the zeros live in the weights, so it stays out of arch_hash.
    sparsity: dict[str, Any] = field(default_factory=dict)

    def tower(self, name: str) -> TowerConfig:
        if name not in TOWERS:
            raise ConfigError(f"unknown tower {name!r}: use 'vision' or 'text'")
        return getattr(self, name)

    def validate(self) -> "CLIPConfig":
        _check_int("embed_dim", self.embed_dim, 1, LIMITS["width"])
        _check_bool("config", self, ("logit_bias",))
        for name in ("preprocess", "tokenizer", "provenance", "sparsity"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a mapping, got {_short(getattr(self, name))}")
        for name, cls in (("vision", VisionConfig), ("text", TextConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a mapping of the {name} tower's fields")
        self.vision.validate("vision")
        self.text.validate("text")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a config is a mapping of fields (embed_dim, vision, text, ...), got {_short(d)}")
        try:
            d = dict(d)
            vision = _tower_from_dict(VisionConfig, d.pop("vision"), "vision")
            text = _tower_from_dict(TextConfig, d.pop("text"), "text")
            _check_keys(cls, d, "config", skip=set(TOWERS))
            return cls(vision=vision, text=text, **d).validate()
        except KeyError as e:
            raise ConfigError(f"config is missing the field {e.args[0]!r}") from None

    def arch_dict(self) -> dict[str, Any]:
        """The architecture alone (no provenance): what decides the shapes of the weights."""
        d = self.to_dict()
        d.pop("provenance")
        d.pop("sparsity", None)
        return d

    def arch_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.arch_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _check_keys(cls, d: dict, where: str, skip: set[str] = frozenset()) -> None:
    allowed = {f.name for f in dataclasses.fields(cls)} - set(skip)
    unknown = set(d) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _tower_from_dict(cls, d: dict[str, Any], where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping of the tower's fields, got {_short(d)}")
    d = dict(d)
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in d]
    if missing:
        raise ConfigError(f"{where} is missing the field {missing[0]!r}")
    raw = d.pop("blocks")
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.blocks must be a list of blocks, got {_short(raw)}")
    blocks = []
    for i, b in enumerate(raw):
        if not isinstance(b, dict):
            raise ConfigError(f"{where}.blocks[{i}] must be a mapping with heads, mlp and source, got {_short(b)}")
        _check_keys(BlockConfig, b, f"{where}.blocks[{i}]")
        missing = [f.name for f in dataclasses.fields(BlockConfig) if f.name not in b]
        if missing:
            raise ConfigError(f"{where}.blocks[{i}] is missing the field {missing[0]!r}")
        blocks.append(BlockConfig(**b))
    _check_keys(cls, d, where, skip={"blocks"})
    return cls(blocks=blocks, **d)


# Upper bounds of sane sizes (the largest open_clip models are well inside them): a typo such as a width
# of 1e9 is a clear error naming the field, not a multi-gigabyte allocation.
LIMITS = {"width": 65536, "head_dim": 4096, "heads": 4096, "mlp": 1 << 20, "source": 4096, "depth": 4096,
          "image_size": 16384, "context_length": 65536, "vocab_size": 10_000_000}


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _check_int(where: str, v: Any, lo: int, hi: int) -> None:
    """``v`` must be an int (not a bool or a float such as 64.0) in ``lo..hi``; the message names the field."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{where} must be an integer, got {_short(v)} ({type(v).__name__})")
    if not lo <= v <= hi:
        raise ConfigError(f"{where} must be between {lo} and {hi}, got {v}")


def _check_bool(where: str, obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, bool):
            raise ConfigError(f"{where}.{name} must be true or false, got {_short(v)}")


def uniform_blocks(depth: int, heads: int, mlp: int) -> list[BlockConfig]:
    """``depth`` identical blocks, sources 0..depth-1 (an unpruned tower)."""
    return [BlockConfig(heads=heads, mlp=mlp, source=i) for i in range(depth)]
