"""Open a model (and an index) and serve them with uvicorn; loopback only unless another host is asked for."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import ServeError
from .index import EmbeddingIndex, is_index, model_fingerprint
from .config import ServeConfig
from .inputs import read_api_key

KEEP_ALIVE_S = 75


def default_backend(model: Any) -> str:
    """``onnxruntime`` for an export bundle (what deployments run), ``torch`` for a model directory or name."""
    from ..runtime import is_bundle

    return "onnxruntime" if is_bundle(model) else "torch"


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``allow_remote`` (the service then answers the network)."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ServeError(f"--host {host} would expose the service beyond this machine; pass --allow-remote as well "
                         "to mean it (and protect it with --api-key-file KEYFILE)")


def open_index(path: str | Path | None, fingerprint: dict[str, str], dim: int,
               create: bool = False) -> EmbeddingIndex | None:
    """The index at ``path`` (checked against the model), a new empty one when ``create`` and ``path`` does not
    exist, or None."""
    if path is None:
        return None
    check_index_path(path, create)
    return EmbeddingIndex.open(Path(path), fingerprint, create=create, dim=dim)


def check_index_path(path: str | Path | None, create: bool) -> None:
    """Refuse a ``--index`` that is not an index, or that does not exist without ``--create-index`` (a mistyped
    path would otherwise serve an empty index)."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not is_index(path):
        raise ServeError(f"--index {path} exists but is not an index (no index.json); build one with `mope index`, "
                         "or give a new path with --create-index to start an empty one")
    if not path.exists() and not create:
        raise ServeError(f"--index {path} does not exist; check the path, or pass --create-index to start an empty "
                         "index there (filled with POST /index/items)")


def build_app(model: Any, *, backend: str = "onnxruntime", index: str | Path | None = None,
              config: ServeConfig | None = None, api_key_file: str | Path | None = None, create_index: bool = False,
              threads: int | None = None, encoder=None, work_dir: str | Path | None = None):
    """Everything ``mope serve`` starts, checked before the model loads: the app over ``model`` on ``backend``.
    ``config.api_key`` is read from ``api_key_file`` when given; ``config.model_name`` defaults to ``str(model)``."""
    from .app import create_app
    from .embedder import LocalEmbedder

    config = dataclasses.replace(config or ServeConfig())
    if api_key_file is not None:
        config.api_key = read_api_key(api_key_file)
    if config.model_name == ServeConfig.model_name:
        config.model_name = str(model)
    check_index_path(index, create_index)
    if encoder is None:
        from ..runtime import open_encoder
        encoder = open_encoder(model, backend, threads=threads, work_dir=work_dir)
    idx = open_index(index, model_fingerprint(model), int(encoder.config.embed_dim), create_index)
    embedder = LocalEmbedder(encoder, config.batching, strict_length=config.strict_length)
    return create_app(embedder, idx, config)


def run(app, host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False, log_level: str = "warning",
        sock: socket.socket | None = None) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    check_host(host, allow_remote)
    # keep idle connections longer than clients' pools do (httpx: 5 s, uvicorn's own default): with equal timeouts
    # a client can reuse a connection the server is closing, and that request fails (seen under load as ReadError)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                            access_log=False, timeout_keep_alive=KEEP_ALIVE_S)
    server = uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)


def loopback_socket(port: int = 0) -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1 (``port=0``: a free port the OS picks)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s


@contextmanager
def serve_in_thread(app, timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields its base URL (tests, benchmarks)."""
    import uvicorn

    sock = loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                                           timeout_keep_alive=KEEP_ALIVE_S))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
