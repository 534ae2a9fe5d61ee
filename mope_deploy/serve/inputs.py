"""Request inputs, checked before any work is spent: limits, base64 / data-URL images, decompression bombs.

Every check raises :class:`RequestError` with an HTTP status and a message naming the problem and the fix; the
app turns it into a JSON 4xx. Image dimensions are read from the file header (PIL's ``Image.open`` parses only
the PNG IHDR / JPEG SOF / ... header) and checked against the pixel limit *before* any pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import re
from struct import error as struct_error
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .config import Limits
from .errors import ServeError

__all__ = ["Limits", "RequestError", "decode_base64_image", "open_image", "check_texts", "check_image_list",
           "parse_json_body", "read_api_key", "key_matches"]

#: decoders a request may reach (PIL supports many more; these are the web's image formats)
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_DATA_URL = re.compile(r"^data:(image/[a-zA-Z0-9.+-]+)?(;[^,]*)?,", re.ASCII)


class RequestError(Exception):
    """A bad request: ``status`` (4xx) and a message naming the problem and the fix."""

    def __init__(self, status: int, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def decode_base64_image(value: Any, where: str) -> bytes:
    """Bytes of a base64 string or a ``data:image/...;base64,`` URL."""
    if not isinstance(value, str) or not value:
        raise RequestError(422, f"{where}: expected a base64 string or a data URL (data:image/png;base64,...)")
    m = _DATA_URL.match(value)
    if m:
        if not (m.group(2) or "").endswith("base64"):
            raise RequestError(422, f"{where}: data URL must be base64-encoded (data:image/png;base64,...)")
        value = value[m.end():]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"{where}: not valid base64 (send the file's bytes base64-encoded, or a data URL)") \
            from None


def open_image(data: bytes, limits: Limits, where: str) -> Image.Image:
    """Decode ``data`` to an RGB PIL image after checking its header's dimensions against ``--max-image-pixels``.

    The header is parsed by the format's own plugin (what ``Image.open`` does, minus Pillow's process-wide
    ``MAX_IMAGE_PIXELS`` bomb check, which would cap the limit at 89.5 Mpx and speak of Pillow's setting): this
    request's limit is the server's flag, compared here before any pixel is decoded.
    """
    if not data:
        raise RequestError(422, f"{where}: empty image")
    try:
        im = _open_header(data)
        w, h = im.size
        if w * h > limits.max_image_pixels:
            raise RequestError(413, f"{where}: image is {w}x{h} = {w * h} pixels, above the server's limit of "
                                    f"{limits.max_image_pixels} (--max-image-pixels); downscale it first",
                               "image_too_large")
        im.load()
        return im.convert("RGB") if im.mode != "RGB" else im
    except RequestError:
        raise
    except Exception as e:  # noqa: BLE001  (any decoder failure is the client's bad file)
        raise RequestError(422, f"{where}: not a readable image ({type(e).__name__}: {str(e)[:200]}); send a "
                                f"{'/'.join(FORMATS)} file") from None


def _open_header(data: bytes) -> Image.Image:
    """The image object of the first format in :data:`FORMATS` that accepts ``data`` (header parsed only)."""
    Image.init()
    prefix = data[:16]
    for fmt in FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is None or accept(prefix):
            try:
                return factory(io.BytesIO(data), None)
            except (SyntaxError, IndexError, TypeError, struct_error):
                continue                          # not this format after all (what Image.open does too)
    raise ValueError(f"not a {'/'.join(FORMATS)} file")


def check_texts(value: Any, limits: Limits, where: str = "input") -> list[str]:
    """One string or a list of strings (OpenAI's ``input``), non-empty and within the limits."""
    texts = [value] if isinstance(value, str) else value
    if isinstance(texts, list) and texts and all(_is_token_ids(t) for t in texts):
        raise RequestError(400, f"{where}: token ids (lists of integers) are not accepted: this server tokenises text "
                                "with its model's own tokenizer, so send the strings themselves. LangChain's "
                                "OpenAIEmbeddings sends token ids by default: create it with "
                                "check_embedding_ctx_length=False", "token_ids_unsupported")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise RequestError(422, f"{where}: expected a string or a list of strings")
    if not texts:
        raise RequestError(422, f"{where}: empty list; send at least one string")
    if len(texts) > limits.max_texts:
        raise RequestError(413, f"{where}: {len(texts)} strings in one request, above the limit of {limits.max_texts} "
                                "(--max-texts); split the request", "too_many_inputs")
    for i, t in enumerate(texts):
        if not t.strip():
            raise RequestError(422, f"{where}[{i}]: empty string; send text to embed")
        if len(t) > limits.max_text_chars:
            raise RequestError(413, f"{where}[{i}]: {len(t)} characters, above the limit of {limits.max_text_chars} "
                                    "(--max-text-chars); the model reads only its first tokens anyway, so send less",
                               "text_too_long")
    return texts


def _is_token_ids(x: Any) -> bool:
    if isinstance(x, int) and not isinstance(x, bool):
        return True
    return isinstance(x, list) and bool(x) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def check_image_list(value: Any, limits: Limits, where: str = "input") -> list[Any]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise RequestError(422, f"{where}: expected a base64 string or a list of them")
    if not items:
        raise RequestError(422, f"{where}: empty list; send at least one image")
    if len(items) > limits.max_images:
        raise RequestError(413, f"{where}: {len(items)} images in one request, above the limit of {limits.max_images} "
                                "(--max-images); split the request", "too_many_inputs")
    return items


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_depth(body: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``body`` outside strings (numpy: no Python loop over the bytes)."""
    if body.count(b"[") + body.count(b"{") == 0:
        return 0
    code = np.frombuffer(_STRING.sub(b'""', body), dtype=np.uint8)
    step = ((code == ord("[")) | (code == ord("{"))).astype(np.int32) - ((code == ord("]")) | (code == ord("}")))
    return int(np.cumsum(step).max(initial=0))


def parse_json_body(body: bytes, limits: Limits) -> dict[str, Any]:
    """``body`` as a JSON object: empty, malformed, too deeply nested (``--max-json-depth``) or not an object is a
    400 (the depth is checked before parsing: Python's parser recurses once per level)."""
    if not body:
        raise RequestError(400, "empty request body: send a JSON object")
    if body.count(b"[") + body.count(b"{") > limits.max_json_depth and json_depth(body) > limits.max_json_depth:
        raise RequestError(400, f"JSON nested deeper than {limits.max_json_depth} levels (--max-json-depth); send a "
                                "flat object", "invalid_json")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise RequestError(400, f"malformed JSON ({str(e)[:200]}); send a JSON object", "invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(data).__name__}", "invalid_json")
    return data


# ---------------------------------------------------------------------------------------------------------
# API key


def read_api_key(path: str | Path) -> str:
    """The key in ``path`` (surrounding whitespace stripped); an empty or missing file is an error."""
    p = Path(path)
    try:
        key = p.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ServeError(f"--api-key-file {p}: cannot read it ({e.strerror})") from None
    if len(key) < 16:
        raise ServeError(f"--api-key-file {p}: the key must be at least 16 characters (e.g. "
                         "`python -c 'import secrets; print(secrets.token_urlsafe(32))' > KEYFILE`)")
    return key


def key_matches(expected: str, authorization: str | None, x_api_key: str | None) -> bool:
    """``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time."""
    given = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))
