"""The CLI's error net: library errors (MopeError) and missing files are one red line with exit code 2;
anything else (an internal failure, CUDA out of memory) keeps its traceback; --debug shows it for both."""

from __future__ import annotations

from typer.testing import CliRunner

import mope_deploy.cli.info as info_cmd
from mope_deploy.cli.app import app
from mope_deploy.models import ModelNotFoundError

runner = CliRunner()


def test_library_error_is_one_line_and_exit_2(tmp_path):
    r = runner.invoke(app, ["info", str(tmp_path / "nothing-here")])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output


def test_debug_shows_the_traceback(tmp_path):
    r = runner.invoke(app, ["--debug", "info", str(tmp_path / "nothing-here")])
    assert r.exit_code == 1 and isinstance(r.exception, ModelNotFoundError)


def test_internal_failures_are_not_dressed_as_user_errors(monkeypatch):
    def boom(spec):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(info_cmd, "load_config", boom)
    r = runner.invoke(app, ["info", "demo"])
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError) and "error:" not in r.output

    def bug(spec):
        raise ValueError("an internal invariant broke")  # a plain ValueError is a bug, not bad input

    monkeypatch.setattr(info_cmd, "load_config", bug)
    r = runner.invoke(app, ["info", "demo"])
    assert r.exit_code == 1 and isinstance(r.exception, ValueError)


def test_a_full_disk_outside_the_atomic_writers_is_one_line():
    """An append (e.g. metrics.jsonl) that hits a full disk: exit 2 and one line, not a traceback."""
    import errno

    import pytest

    import typer
    from mope_deploy.cli.common import user_errors

    with pytest.raises(typer.Exit) as ex:
        with user_errors():
            raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")
    assert ex.value.exit_code == 2
    with pytest.raises(OSError):                       # any other OSError is a bug and keeps its traceback
        with user_errors():
            raise OSError(errno.EACCES, "Permission denied")
