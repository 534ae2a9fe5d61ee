"""Run the real `mope` CLI with one write slowed down, so a test can signal it mid-write.

    python interruptible.py POINT mope-args...

POINT ``save``: every safetensors file is written, then the process prints ``READY`` and waits (inside the
atomic write, with the temporary folder on disk); ``none``: no slowdown (the test watches for the temporary).
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    point, args = sys.argv[1], sys.argv[2:]
    if point == "save":
        import mope_deploy.models.files as io

        real = io.save_file

        def slow(*a, **k):
            real(*a, **k)
            print("READY", flush=True)
            time.sleep(120)

        io.save_file = slow
    from mope_deploy.cli.app import main as mope

    sys.argv = ["mope", *args]
    mope()


if __name__ == "__main__":
    main()
