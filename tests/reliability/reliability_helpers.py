"""Helpers of the bad-input suite: run the CLI in-process, and prove nothing else changed.

Every case asserts four things: the exit status, that the message names the file or field, that no
traceback escaped (a typed error reached the CLI's handler), and that every pre-existing file under the
watched folder is byte-identical afterwards (nothing deleted, replaced or left behind, temporaries included).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from typer.testing import CliRunner

from mope_deploy.cli.app import app

runner = CliRunner()


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too, links not followed) -> its content hash / kind."""
    out: dict[str, str] = {}
    for d, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(d) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def flat(text: str) -> str:
    """Rich wraps long lines (and may fold a long path): compare without any whitespace."""
    return "".join(text.split())


def cli(args: list[str], *needles: str, watch: Path, code: int = 2):
    """Run ``mope ARGS``; assert exit ``code``, every needle in the output, no traceback, ``watch`` unchanged."""
    before = tree(watch)
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == code, r.output + repr(r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), f"escaped: {r.exception!r}\n{r.output}"
    assert "Traceback" not in r.output
    for n in needles:
        assert flat(str(n)) in flat(r.output), f"{n!r} not in:\n{r.output}"
    assert tree(watch) == before, "files under the watched folder changed"
    return r
