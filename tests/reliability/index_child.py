"""A child process for the index fault tests: a disk that fills up (RLIMIT_FSIZE with SIGXFSZ ignored, so a write
past the limit fails with EFBIG instead of killing the process), or a pause where the parent sends SIGKILL.

    python index_child.py add ROOT LIMIT_BYTES          add one item to the index at ROOT under the limit
    python index_child.py compact ROOT LIMIT_BYTES      compact the index at ROOT under the limit (0: no limit)
    python index_child.py compact-pause ROOT STEP       compact, print READY after STEP and sleep (to be killed)
    python index_child.py mope LIMIT_BYTES ARGS...      run `mope ARGS` under the limit (0: no limit)
    python index_child.py mope-slow SECONDS ARGS...     run `mope ARGS`, each chunk taking SECONDS longer

It prints one JSON line ``{"error": type, "message": str}`` (or ``{"ok": ...}``) for the library modes.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time


def disk_limit(nbytes: int) -> None:
    if nbytes > 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))


def report(fn) -> None:
    try:
        print(json.dumps({"ok": fn()}, default=str), flush=True)
    except Exception as e:  # noqa: BLE001  (the parent checks the type and message)
        from mope_deploy.errors import MopeError
        print(json.dumps({"error": type(e).__name__, "message": str(e), "mope": isinstance(e, MopeError)}),
              flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode in ("add", "compact", "compact-pause"):
        import numpy as np

        from mope_deploy.serve.index import EmbeddingIndex, Item

        idx = EmbeddingIndex.open(args[0], compact_over=None)
        if mode == "add":
            disk_limit(int(args[1]))
            vec = np.ones((1, idx.dim), np.float32) / np.sqrt(idx.dim)
            report(lambda: idx.add([Item("late", {"type": "stored"}, ["a late caption"])], vec, [b"\x89PNG" * 4],
                                   [vec]))
        elif mode == "compact":
            disk_limit(int(args[1]))
            report(idx.compact)
        else:
            def pause(step: str) -> None:
                if step == args[1]:
                    print("READY", flush=True)
                    time.sleep(120)
            idx.compact(on_step=pause)
        return
    if mode == "mope":
        disk_limit(int(args[0]))
    elif mode == "mope-slow":
        import mope_deploy.serve.build as build

        real, delay = build.embed_chunk, float(args[0])

        def slow(*a, **k):
            time.sleep(delay)
            return real(*a, **k)

        build.embed_chunk = slow
    from mope_deploy.cli.app import main as mope

    sys.argv = ["mope", *args[1:]]
    mope()


if __name__ == "__main__":
    main()
