"""The encoder API every backend implements: PIL images / strings in, L2-normalised float32 numpy out.

A backend only has to run the two towers on ready-made arrays (:meth:`Encoder.run_images`,
:meth:`Encoder.run_texts`); preprocessing, tokenisation, batching and normalisation live here, built from
the model's config, so every backend turns the same inputs into the same embeddings.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..device import BackendUnavailableError  # noqa: F401  (re-exported: the runtime's error)
from ..errors import MopeError
from ..models.config import CLIPConfig


class EncoderInputError(MopeError, ValueError):
    """Inputs an encoder cannot take (wrong shape, batch outside an engine's profile, ...)."""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


class Encoder:
    """One model on one backend. Subclasses implement :meth:`run_images` and :meth:`run_texts`.

    ``encode_images(list_of_PIL)`` and ``encode_texts(list_of_str)`` return ``(N, embed_dim)`` float32
    arrays with unit rows, computed in chunks of at most ``batch_size`` (and of the backend's
    ``max_batch`` when it has one, e.g. a TensorRT engine profile).
    """

    backend: str = "?"
    #: largest batch the backend accepts (None: any)
    max_batch: int | None = None

    def __init__(self, config: CLIPConfig):
        self.config = config
        self._preprocess: Callable | None = None
        self._tokenizer: Callable | None = None

    # --- what a backend provides -------------------------------------------------------------
    def run_images(self, pixels: np.ndarray) -> np.ndarray:
        """Unnormalised image embeddings of preprocessed pixels ``float32 [B, 3, S, S]``."""
        raise NotImplementedError

    def run_texts(self, tokens: np.ndarray) -> np.ndarray:
        """Unnormalised text embeddings of token ids ``int [B, context_length]``."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (GPU backends); a no-op on the CPU."""

    def timing_fn(self, tower: str, inputs: np.ndarray) -> Callable[[], Any]:
        """A no-argument callable running one forward pass of ``tower`` on ``inputs`` (what a benchmark
        times); backends override it to keep inputs and outputs on the device."""
        x = self.check_pixels(inputs) if tower == "vision" else self.check_tokens(inputs)
        fn = self.run_images if tower == "vision" else self.run_texts
        return lambda: fn(x)

    def describe(self) -> dict[str, Any]:
        """Plain settings of this encoder (backend, device, providers, threads...) for reports."""
        return {"backend": self.backend}

    # --- shared by all backends -------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.config.preprocess.get("size", self.config.vision.image_size))

    @property
    def context_length(self) -> int:
        return int(self.config.text.context_length)

    @property
    def preprocess(self) -> Callable:
        if self._preprocess is None:
            from ..models.processing import build_preprocess
            self._preprocess = build_preprocess(self.config)
        return self._preprocess

    @property
    def tokenizer(self) -> Callable:
        if self._tokenizer is None:
            from ..models.processing import build_tokenizer
            self._tokenizer = build_tokenizer(self.config)
        return self._tokenizer

    def check_pixels(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        s = self.config.vision.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (3, s, s):
            raise EncoderInputError(f"image batch has shape {tuple(pixels.shape)}; this model takes [B, 3, {s}, {s}] "
                                    "(use encode_images for PIL images: it preprocesses them)")
        self._check_batch(pixels.shape[0])
        return pixels

    def check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length or not np.issubdtype(tokens.dtype, np.integer):
            raise EncoderInputError(f"token batch has shape {tuple(tokens.shape)} and dtype {tokens.dtype}; this model "
                                    f"takes integer ids [B, {self.context_length}] (encode_texts tokenises strings)")
        self._check_batch(tokens.shape[0])
        return tokens

    def _check_batch(self, n: int) -> None:
        if n < 1:
            raise EncoderInputError("empty batch: pass at least one image or text")
        if self.max_batch is not None and n > self.max_batch:
            raise EncoderInputError(f"batch of {n} is larger than this {self.backend} encoder allows ({self.max_batch}, "
                                    "the engine's optimisation profile); use a smaller batch or rebuild the engine "
                                    "with a larger maximum batch")

    def _chunk(self, batch_size: int) -> int:
        if batch_size < 1:
            raise EncoderInputError(f"batch_size must be at least 1, got {batch_size}")
        return min(batch_size, self.max_batch) if self.max_batch else batch_size

    def encode_images(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 embeddings ``(len(images), embed_dim)`` of PIL images."""
        if isinstance(images, (str, bytes)) or not hasattr(images, "__len__"):
            raise EncoderInputError("encode_images takes a list of PIL images")
        step, out = self._chunk(batch_size), []
        for i in range(0, len(images), step):
            pixels = np.stack([np.asarray(self.preprocess(_rgb(im)), dtype=np.float32) for im in images[i:i + step]])
            out.append(self.run_images(pixels))
        return self._finish(out)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised float32 embeddings ``(len(texts), embed_dim)`` of strings."""
        if isinstance(texts, str):
            raise EncoderInputError("encode_texts takes a list of strings, not one string (wrap it: [text])")
        step, out = self._chunk(batch_size), []
        for i in range(0, len(texts), step):
            tokens = np.asarray(self.tokenizer(list(texts[i:i + step])))
            out.append(self.run_texts(tokens))
        return self._finish(out)

    def _finish(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, self.config.embed_dim), dtype=np.float32)
        return l2_normalize(np.concatenate(parts, axis=0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def _rgb(image: Any) -> Any:
    """PIL image in RGB (greyscale/RGBA photos are common in retrieval corpora)."""
    if not hasattr(image, "convert"):
        raise EncoderInputError(f"encode_images expects PIL images, got {type(image).__name__}")
    return image if getattr(image, "mode", "RGB") == "RGB" else image.convert("RGB")
