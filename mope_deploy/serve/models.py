"""Request and response bodies of the HTTP API (pydantic). Requests are validated with the server's
:class:`~mope_deploy.serve.config.Limits` as validation context; a check that fails raises
:class:`~mope_deploy.serve.inputs.RequestError` (its own status and message) and anything else pydantic finds
becomes a 422 naming the field (:func:`validate`).

Unknown request fields are ignored (OpenAI clients send ``model``, ``user``, ...)."""

# (no `from __future__ import annotations`: pydantic reads the annotations at runtime)

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .inputs import RequestError, check_image_list, check_texts

ITEM_ID_CHARS = 512                     # a format rule (ids are file names and URL parts), not a server limit


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


def validate(model: type[BaseModel], data: dict[str, Any], limits) -> Any:
    """``data`` as ``model`` (checked against ``limits``); a shape error is a 422 naming the field."""
    try:
        return model.model_validate(data, context=limits)
    except ValidationError as e:
        err = e.errors()[0]
        where = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"]).lstrip(".") or "body"
        if err["type"] == "missing":
            raise RequestError(422, f"missing '{where}': {model.__doc__.splitlines()[0].replace('``', '')}") from None
        raise RequestError(422, f"{where}: {err['msg']}") from None


class EmbeddingsRequest(_Request):
    """``{"input": "text" or ["text", ...], "encoding_format": "float" | "base64"}`` (OpenAI's shape)."""

    input: list[str]
    encoding_format: str = "float"
    dimensions: Optional[int] = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, v: Any, info: ValidationInfo) -> list[str]:
        return check_texts(v, info.context, "input")

    @field_validator("encoding_format", mode="before")
    @classmethod
    def _format(cls, v: Any) -> str:
        if v not in ("float", "base64"):
            raise RequestError(422, f"encoding_format {v!r}: use 'float' or 'base64'")
        return v


class ImageEmbeddingsRequest(EmbeddingsRequest):
    """``{"input": base64 image or data URL, or a list of them, "encoding_format": ...}``."""

    input: list[str]

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, v: Any, info: ValidationInfo) -> list[Any]:
        return check_image_list(v, info.context, "input")


class SearchRequest(_Request):
    """``{"text": str}`` or ``{"image": base64}``, ``"k": 10``, ``"over": "images" | "captions"``."""

    text: Optional[str] = None
    image: Optional[str] = None
    k: int = 10
    over: str = "images"

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, v: Any, info: ValidationInfo) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= info.context.max_k:
            raise RequestError(422, f"k={v!r}: give an integer between 1 and {info.context.max_k} (--max-k)")
        return v

    @field_validator("over", mode="before")
    @classmethod
    def _over(cls, v: Any) -> str:
        if v not in ("images", "captions"):
            raise RequestError(422, f"over={v!r}: search 'images' or 'captions'")
        return v

    @field_validator("text", mode="before")
    @classmethod
    def _text(cls, v: Any, info: ValidationInfo) -> Optional[str]:
        if v is not None and not isinstance(v, str):
            raise RequestError(422, "'text' must be a string")
        return v if v is None else check_texts(v, info.context, "text")[0]


class NewItem(_Request):
    """``{"image": base64, "id"?: str, "captions"?: [str]}``."""

    image: str
    id: Optional[str] = None
    captions: list[str] = Field(default_factory=list)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: Any) -> Optional[str]:
        if v is not None and (not isinstance(v, str) or not v or len(v) > ITEM_ID_CHARS):
            raise ValueError(f"a non-empty string of at most {ITEM_ID_CHARS} characters")
        return v

    @field_validator("captions", mode="before")
    @classmethod
    def _captions(cls, v: Any, info: ValidationInfo) -> list[str]:
        return check_texts(v, info.context, "captions") if v else []


class AddItemsRequest(_Request):
    """``{"items": [{"image": base64, "id"?: str, "captions"?: [str]}, ...]}``."""

    items: list[NewItem]

    @field_validator("items", mode="before")
    @classmethod
    def _items(cls, v: Any, info: ValidationInfo) -> list[Any]:
        if not isinstance(v, list) or not v:
            raise RequestError(422, "'items' must be a non-empty list of {\"image\": base64, \"id\"?: str, "
                                    "\"captions\"?: [str]}")
        if len(v) > info.context.max_images:
            raise RequestError(413, f"{len(v)} items in one request, above the limit of {info.context.max_images} "
                                    "(--max-images); split the request", "too_many_inputs")
        return v


# ---------------------------------------------------------------------------------------------------------
# Responses


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class EmbeddingsResponse(BaseModel):
    """OpenAI's embeddings list, plus ``truncated_inputs``: indices of the texts longer than the model's context,
    truncated as CLIP does (the first context-1 tokens and the end token; always empty for images)."""

    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: Usage
    truncated_inputs: list[int] = Field(default_factory=list)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mope-deploy"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SearchHit(BaseModel):
    rank: int
    id: str
    score: float
    position: int
    captions: list[str]
    image_url: str
    caption: Optional[str] = None


class SearchResponse(BaseModel):
    """Hits best first; ``truncated``: the query text was longer than the model's context and was truncated."""

    object: Literal["search"] = "search"
    over: str
    k: int
    model: str
    truncated: bool = False
    results: list[SearchHit]


class AddedItem(BaseModel):
    id: str
    position: int


class AddItemsResponse(BaseModel):
    object: Literal["list"] = "list"
    added: list[AddedItem]
    size: int


class ItemResponse(BaseModel):
    id: str
    captions: list[str]
    source: dict[str, Any]
    image_url: str
