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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import ServeError

#: decoders a request may reach (PIL supports many more; these are the web's image formats)
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_DATA_URL = re.compile(r"^data:(image/[a-zA-Z0-9.+-]+)?(;[^,]*)?,", re.ASCII)


class RequestError(Exception):
    """A bad request: ``status`` (4xx) and a message naming the problem and the fix."""

    def __init__(self, status: int, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Limits:
    """What one request may ask for (server flags of the same names)."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_images: int = 32
    max_texts: int = 256
    max_text_chars: int = 4096
    max_image_pixels: int = 40_000_000      # ~ 7700 x 5200; decoded RGB is 3 bytes per pixel
    max_k: int = 1000
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_images", "max_texts", "max_text_chars", "max_image_pixels", "max_k"):
            if int(getattr(self, name)) < 1:
                raise ServeError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ServeError(f"timeout_s must be > 0, got {self.timeout_s}")


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
    """Decode ``data`` to an RGB PIL image after checking its header's dimensions against the pixel limit."""
    if not data:
        raise RequestError(422, f"{where}: empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)    # header only: no pixel is decoded yet
            w, h = im.size
            if w * h > limits.max_image_pixels:
                raise RequestError(413, f"{where}: image is {w}x{h} = {w * h} pixels, above the server's limit of "
                                        f"{limits.max_image_pixels} (--max-image-pixels); downscale it first",
                                   "image_too_large")
            im.load()
            return im.convert("RGB") if im.mode != "RGB" else im
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RequestError(413, f"{where}: {e}; downscale the image first", "image_too_large") from None
    except Exception as e:  # noqa: BLE001  (any decoder failure is the client's bad file)
        raise RequestError(422, f"{where}: not a readable image ({type(e).__name__}: {str(e)[:200]}); send a "
                                f"{'/'.join(FORMATS)} file") from None


def check_texts(value: Any, limits: Limits, where: str = "input") -> list[str]:
    """One string or a list of strings (OpenAI's ``input``), non-empty and within the limits."""
    texts = [value] if isinstance(value, str) else value
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
            raise RequestError(413, f"{where}[{i}]: {len(t)} characters, above the limit of {limits.max_text_chars}")
    return texts


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
