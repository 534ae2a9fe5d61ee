"""The one schema of ``config.json`` (pydantic, strict types, no unknown keys): towers, blocks, preprocessing,
tokenizer and the weight-sparsity record. Kept apart from :mod:`.config` so that building a model from a config
(e.g. the GPU check, which carries only torch, numpy and safetensors) does not need pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ..vocab import RECOVERY, SPARSITY_METHODS, TOWERS

#: the activations a tower may use (as models.config.Act; restated: schema must not import config, which imports
#: it, and the architecture test allows no cycle, even a lazy one)
Act = Literal["gelu", "quick_gelu"]

# ------------------------------------------------------------------------------------- the one schema

# Upper bounds of sane sizes (the largest open_clip models are well inside them): a typo such as a width
# of 1e9 is a clear error naming the field, not a multi-gigabyte allocation.
LIMITS = {"width": 65536, "head_dim": 4096, "heads": 4096, "mlp": 1 << 20, "source": 4096, "depth": 4096,
          "image_size": 16384, "context_length": 65536, "vocab_size": 10_000_000}


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _fail(text: str, field: str | None = None) -> PydanticCustomError:
    """A schema error whose text follows the field's dotted name ("vision.width must be ...")."""
    return PydanticCustomError("mope", "{text}", {"text": text, "field": field})


def _between(lo: int | float, hi: int | float):
    def check(v):
        if not lo <= v <= hi:
            raise _fail(f"must be between {lo} and {hi}, got {v}")
        return v
    return AfterValidator(check)


def _size(name: str, lo: int = 1):
    return Annotated[int, _between(lo, LIMITS[name])]


Fraction = Annotated[float, _between(0, 1)]


class _Fields(BaseModel):
    """Strict: 64.0 is not an int, "true" not a bool, NaN not a number; an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class BlockFields(_Fields):
    heads: _size("heads", 0)
    mlp: _size("mlp", 0)
    source: _size("source", 0)


class _TowerFields(_Fields):
    width: _size("width")
    head_dim: _size("head_dim")
    blocks: Annotated[list[BlockFields], Field(max_length=LIMITS["depth"])]
    act: Act = "gelu"
    ln_eps: Annotated[float, _between(1e-12, 0.5)] = 1e-5

    @model_validator(mode="after")
    def _sources(self):
        sources = [b.source for b in self.blocks]
        if sources != sorted(set(sources)):
            raise _fail(f"sources must be strictly increasing, got {_short(sources)}", "blocks")
        return self


class VisionFields(_TowerFields):
    image_size: _size("image_size") = 224
    patch_size: _size("image_size") = 16
    pool: Literal["tok", "avg"] = "tok"
    final_ln_after_pool: bool = False
    ln_pre: bool = True

    @model_validator(mode="after")
    def _patches(self):
        if self.patch_size > self.image_size or self.image_size % self.patch_size:
            raise _fail(f"must divide image_size {self.image_size}, got {self.patch_size}", "patch_size")
        return self


class TextFields(_TowerFields):
    context_length: _size("context_length") = 77
    vocab_size: _size("vocab_size") = 49408
    pool: Literal["argmax", "eos", "first", "last"] = "argmax"
    eos_id: _size("vocab_size", 0) = 49407
    causal: bool = True
    proj_bias: bool = False

    @model_validator(mode="after")
    def _eos(self):
        if self.eos_id >= self.vocab_size:
            raise _fail(f"must be between 0 and {self.vocab_size - 1} (vocab_size - 1), got {self.eos_id}", "eos_id")
        return self


class PreprocessFields(_Fields):
    """open_clip's evaluation transform settings (mope_deploy.models.processing.build_preprocess)."""

    size: Optional[_size("image_size") | Annotated[list[_size("image_size")], Field(min_length=2, max_length=2)]] = None
    mean: Optional[Annotated[list[Fraction], Field(min_length=1, max_length=4)]] = None
    std: Optional[Annotated[list[Annotated[float, _between(1e-6, 1e3)]], Field(min_length=1, max_length=4)]] = None
    interpolation: Optional[Literal["bicubic", "bilinear", "random"]] = None
    resize_mode: Optional[Literal["shortest", "longest", "squash"]] = None


class TokenizerFields(_Fields):
    """How text is tokenised (mope_deploy.models.processing.build_tokenizer)."""

    type: Literal["open_clip", "bpe"] = "open_clip"
    name: Optional[Annotated[str, Field(max_length=200)]] = None
    bpe_file: Optional[Annotated[str, Field(min_length=1, max_length=4096)]] = None
    context_length: Optional[_size("context_length")] = None

    @model_validator(mode="after")
    def _bpe(self):
        if self.type == "bpe" and self.bpe_file is None:
            raise _fail("must name the BPE merges file of a 'bpe' tokenizer", "bpe_file")
        return self


class RecoveredFields(_Fields):
    """What mope_deploy.sparsity.sparselora records after recovering a sparse model."""

    method: Literal[RECOVERY]  # type: ignore[valid-type]  (Literal of the shared vocabulary)
    rank: _size("width", 0)
    alpha: Optional[Annotated[float, Field(gt=0, le=1e6)]] = None
    lora_towers: list[Literal[TOWERS]]  # type: ignore[valid-type]
    steps: Annotated[int, _between(0, 1 << 40)]
    loss: Annotated[str, Field(max_length=200)]


class SparsityRecord(_Fields):
    """``config.sparsity`` of a sparsified model (written by mope_deploy.sparsity.sparsify)."""

    method: Literal[SPARSITY_METHODS]  # type: ignore[valid-type]
    pattern: Annotated[str, Field(pattern=r"^(unstructured|dense|[0-9]{1,3}:[0-9]{1,3})$")]
    target: Optional[Fraction] = None
    achieved: Optional[Fraction] = None
    towers: list[Literal[TOWERS]] = list(TOWERS)  # type: ignore[valid-type]
    spec: dict[str, Any] = {}
    blocks: dict[Literal[TOWERS], list[Optional[Fraction]]] = {}  # type: ignore[valid-type]
    max_block_sparsity: Optional[Fraction] = None
    allocated: dict[Literal[TOWERS], list[Optional[Fraction]]] = {}  # type: ignore[valid-type]  (ecoflap's plan)
    local: Optional[Literal["wanda", "sparsegpt"]] = None              # ecoflap's method inside blocks
    zo_samples: Optional[Annotated[int, _between(1, 1 << 20)]] = None
    nm_blocks: Optional[Literal["score", "uniform"]] = None
    recovered: Optional[RecoveredFields] = None


class ConfigFields(_Fields):
    """The schema of ``config.json``: every field of :class:`CLIPConfig`."""

    embed_dim: _size("width")
    vision: VisionFields
    text: TextFields
    logit_bias: bool = False
    preprocess: PreprocessFields = PreprocessFields()
    tokenizer: TokenizerFields = TokenizerFields()
    provenance: dict[str, Any] = {}
    sparsity: SparsityRecord = None  # type: ignore[assignment]  (absent or {}: dense; null is refused)

    @model_validator(mode="before")
    @classmethod
    def _dense(cls, d):
        if isinstance(d, dict) and d.get("sparsity") == {}:      # {}: a dense model
            d = {k: v for k, v in d.items() if k != "sparsity"}
        return d


class SchemaError(ValueError):
    """A config field that fails the schema (``models.config.check_fields`` turns it into ConfigError)."""


def validate_fields(d: Any) -> ConfigFields:
    """Validate a config's JSON form against :class:`ConfigFields`; :class:`SchemaError` names the first bad field."""
    try:
        return ConfigFields.model_validate(d)
    except ValidationError as e:
        raise SchemaError(_message(e.errors(include_url=False))) from None
    except RecursionError:
        raise SchemaError("config is nested too deeply to be a model config") from None


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the schema model at ``loc`` (for "allowed: ..." in an unknown-field message)."""
    cls: Any = ConfigFields
    for part in loc:
        if isinstance(part, int):
            continue
        f = cls.model_fields.get(part) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if f is None:
            return []
        cls = _model_in(f.annotation)
    return sorted(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _message(errors: list[dict]) -> str:
    """One line for the first error (pydantic's own wording replaced by "FIELD must be ...", naming the field)."""
    err = errors[0]
    loc, kind, v = tuple(err["loc"]), err["type"], err.get("input")
    where, got = _where(loc), f"got {_short(v)}"
    parent = _where(loc[:-1]) or "config"
    if kind == "mope":
        ctx = err["ctx"]
        where = _where(loc + ((ctx["field"],) if ctx.get("field") else ()))
        text = f"{where or 'config'}{' ' if ctx['text'].startswith('must') else ': '}{ctx['text']}"
    elif kind in ("missing", "extra_forbidden"):
        same = [e for e in errors if e["type"] == kind and tuple(e["loc"][:-1]) == loc[:-1]]
        names = [str(e["loc"][-1]) for e in same]
        errors = [e for e in errors if e not in same[1:]]
        if kind == "extra_forbidden":
            text = f"{parent}: unknown field(s) {sorted(names)}; allowed: {_fields_at(loc[:-1])}"
        else:
            text = f"{parent} is missing the field{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}"
    elif kind in ("int_type", "int_from_float", "int_parsing"):
        text = f"{where} must be an integer, {got} ({type(v).__name__})"
    elif kind in ("float_type", "finite_number"):
        text = f"{where} must be a finite number, {got} ({type(v).__name__})"
    elif kind == "bool_type":
        text = f"{where} must be true or false, {got}"
    elif kind in ("string_type", "string_too_long", "string_too_short", "string_pattern_mismatch"):
        text = f"{where} must be a string{_limits(err)}, {got}"
    elif kind == "literal_error":
        text = f"{where} must be {err['ctx']['expected']}, {got}"
    elif kind in ("list_type", "too_long", "too_short"):
        text = f"{where} must be a list{_limits(err)}, {got}"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        names = _fields_at(loc)
        text = (f"a config is a mapping of fields (embed_dim, vision, text, ...), {got}" if not loc else
                f"{where} must be a mapping of fields{f' ({_describe(names)})' if names else ''}, {got}")
    else:
        text = f"{where or 'config'}: {err['msg']}, {got}"
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _describe(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 5 else ", ".join(names[:5]) + ", ..."


def _limits(err: dict) -> str:
    ctx = err.get("ctx") or {}
    if "max_length" in ctx and "min_length" in ctx:
        return f" of {ctx['min_length']} to {ctx['max_length']} entries"
    if "max_length" in ctx:
        return f" of at most {ctx['max_length']} entries"
    if "min_length" in ctx:
        return f" of at least {ctx['min_length']} entries"
    if "pattern" in ctx:
        return f" matching {ctx['pattern']}"
    return ""
