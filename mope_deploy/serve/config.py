"""What a server is configured with: request limits, batching, the API key. Every limit is a ``mope serve`` flag
and every message about a limit names that flag (:data:`LIMIT_FLAGS`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ServeError

#: the ``mope serve`` flag behind each limit (messages name it; tests/cli check that each flag exists)
LIMIT_FLAGS = {"max_body_bytes": "--max-body-mb", "max_images": "--max-images", "max_texts": "--max-texts",
               "max_text_chars": "--max-text-chars", "max_image_pixels": "--max-image-pixels", "max_k": "--max-k",
               "max_json_depth": "--max-json-depth", "timeout_s": "--timeout", "max_queue": "--max-queue"}
#: JSON nesting the parser can take without recursing too deep (Python's json recursion; the limit stays below)
JSON_DEPTH_CEILING = 800
BATCH_POLICIES = ("adaptive", "fixed")


@dataclass
class Limits:
    """What one request may ask for (server flags of the same names, see :data:`LIMIT_FLAGS`)."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_images: int = 32
    max_texts: int = 256
    max_text_chars: int = 20_000         # bounds tokenizer CPU; the model reads at most its context anyway
    max_image_pixels: int = 40_000_000   # ~ 7700 x 5200; decoded RGB is 3 bytes per pixel
    max_k: int = 1000
    max_json_depth: int = 400
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_images", "max_texts", "max_text_chars", "max_image_pixels", "max_k",
                     "max_json_depth"):
            if int(getattr(self, name)) < 1:
                raise ServeError(f"{LIMIT_FLAGS[name]} must be >= 1, got {getattr(self, name)}")
        if self.max_json_depth > JSON_DEPTH_CEILING:
            raise ServeError(f"--max-json-depth {self.max_json_depth}: at most {JSON_DEPTH_CEILING} (the JSON "
                             "parser recurses per level)")
        if self.timeout_s <= 0:
            raise ServeError(f"--timeout must be > 0, got {self.timeout_s}")


@dataclass
class BatchSettings:
    """Cross-request batching. ``adaptive``: no fill wait (a batch is what queued while the previous one ran) and a
    batch cap from the encoder's cost measured at warm-up (doubling stops where it saves < 10% per input, a batch's
    fixed cost counted; no batch whose encoder time exceeds ``embedder.BATCH_BUDGET_S``), never above
    ``max_batch``. ``fixed``: up to ``max_batch`` inputs, waiting up to ``max_wait_ms`` to fill."""

    policy: str = "adaptive"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024

    def __post_init__(self) -> None:
        if self.policy not in BATCH_POLICIES:
            raise ServeError(f"--batch-policy {self.policy!r}: use one of {', '.join(BATCH_POLICIES)}")
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ServeError(f"--max-batch and --max-queue must be >= 1 and --max-wait-ms >= 0 (got {self.max_batch}, "
                             f"{self.max_queue}, {self.max_wait_ms})")

    @property
    def wait_ms(self) -> float:
        """The fill wait the batcher starts with."""
        return 0.0 if self.policy == "adaptive" else self.max_wait_ms


@dataclass
class ServeConfig:
    """Everything :func:`~mope_deploy.serve.app.create_app` needs besides the embedder and the index.

    ``strict_length``: refuse a text longer than the model's context (default: truncate it as CLIP does and say so
    in the response). ``warmup``: encode sample inputs before ``/ready`` turns 200 (off only in unit tests).
    ``freeze_heap``: after the warm-up, move every object alive then (libraries, model, tokenizer tables) out of
    Python's cyclic garbage collector (``gc.freeze``), so a full collection scans only what requests allocate
    (measured: full collections of 250-310 ms, the whole p99 tail under batching, become a few ms). Process-wide:
    set by ``mope serve``, which owns its process, not by library callers.
    """

    limits: Limits = field(default_factory=Limits)
    batching: BatchSettings = field(default_factory=BatchSettings)
    api_key: str | None = None
    model_name: str = "model"
    strict_length: bool = False
    warmup: bool = True
    freeze_heap: bool = False
