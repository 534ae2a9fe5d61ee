"""``mope serve MODEL [--index INDEX]``: the retrieval service (FastAPI + uvicorn, or Ray Serve with --ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import MODEL_HELP, console, user_errors
from .index import BACKEND_HELP


def serve(
    model: str = typer.Argument(..., help="Export bundle directory, or " + MODEL_HELP),
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index from `mope index` (must exist unless "
                                                                     "--create-index)."),
    create_index: bool = typer.Option(False, "--create-index", help="Start an empty index at a new --index path "
                                                                    "(filled with POST /index/items)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback unless --allow-remote)."),
    port: int = typer.Option(8000, "--port", "-p", min=1, max=65535),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a --host reachable from other machines; "
                                      "with --ray and no --address, also start a local Ray (its services listen "
                                      "on every interface)."),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP),
    batch_policy: str = typer.Option("adaptive", "--batch-policy", help="adaptive: no fill wait, batch cap measured "
                                     "from the encoder's cost at start; fixed: --max-batch / --max-wait-ms as given."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Most inputs encoded together (across requests)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="fixed policy: longest a request waits for a "
                                                                        "batch to fill."),
    max_queue: int = typer.Option(1024, "--max-queue", min=1, help="Inputs waiting at most; beyond: 503."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="File holding the API key clients must "
                                                "send (Authorization: Bearer KEY)."),
    max_body_mb: float = typer.Option(16.0, "--max-body-mb", min=0.001, help="Largest request body."),
    max_images: int = typer.Option(32, "--max-images", min=1, help="Images (or items) per request."),
    max_texts: int = typer.Option(256, "--max-texts", min=1, help="Texts per request."),
    max_text_chars: int = typer.Option(20_000, "--max-text-chars", min=1, help="Longest text in characters (the model "
                                                                               "reads its context's tokens of it)."),
    max_image_pixels: int = typer.Option(40_000_000, "--max-image-pixels", min=1,
                                         help="Largest image (width x height, read from its header before decoding)."),
    max_k: int = typer.Option(1000, "--max-k", min=1, help="Most results per search."),
    max_json_depth: int = typer.Option(400, "--max-json-depth", min=1, max=800, help="Deepest JSON nesting accepted."),
    strict_length: bool = typer.Option(False, "--strict-length", help="Refuse texts longer than the model's context "
                                       "(default: truncate them as CLIP does; responses list them)."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.001, help="Per-request time limit in seconds (504)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Encoder intra-op threads."),
    use_ray: bool = typer.Option(False, "--ray", help="Serve the encoder as a Ray Serve deployment (@serve.batch)."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Ray Serve encoder replicas."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address, e.g. auto after `ray start "
                                          "--head` (default: RAY_ADDRESS; a local Ray is started only with "
                                          "--allow-remote)."),
) -> None:
    """Serve MODEL: OpenAI-style /v1/embeddings and /v1/models, /search over INDEX, /index/items, /health, /ready,
    /metrics, and a search page at /."""
    from ..runtime import check_backend
    from ..serve.config import BatchSettings, Limits, ServeConfig
    from ..serve.server import build_app, check_host, check_index_path, default_backend, run

    with user_errors():
        check_host(host, allow_remote)
        backend = backend or default_backend(model)
        check_backend(backend)
        check_index_path(index, create_index)
        config = ServeConfig(
            limits=Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_images=max_images, max_texts=max_texts,
                          max_text_chars=max_text_chars, max_image_pixels=max_image_pixels, max_k=max_k,
                          max_json_depth=max_json_depth, timeout_s=timeout),
            batching=BatchSettings(policy=batch_policy, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                   max_queue=max_queue),
            strict_length=strict_length, freeze_heap=True)
        if use_ray:
            from ..serve.ray_scale import check_ray_start, ray_application, run_ray
            check_ray_start(address, allow_remote)
            application = ray_application(model, backend=backend, index=index, replicas=replicas, config=config,
                                          api_key_file=api_key_file, threads=threads, create_index=create_index)
            console.print(f"[green]serving[/] {model} on Ray Serve ({replicas} encoder replica(s)) at "
                          f"http://{host}:{port}/")
            run_ray(application, host=host, port=port, address=address, allow_remote=allow_remote, blocking=True)
            return
        application = build_app(model, backend=backend, index=index, config=config, api_key_file=api_key_file,
                                create_index=create_index, threads=threads)
    idx = application.state.index
    console.print(f"[green]serving[/] {model} ({backend}) at http://{host}:{port}/"
                  + (f" with {len(idx)} indexed images" if idx is not None else " (no index: /search answers 409)")
                  + "; /ready turns 200 once the encoders are warm")
    run(application, host=host, port=port, allow_remote=allow_remote, log_level="info")
