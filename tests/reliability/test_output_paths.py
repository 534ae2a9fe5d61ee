"""`--out` may be absent, an empty folder, or a folder mope wrote before; anything else is refused with what is
there and how to proceed, and the user's files stay byte-identical. Stale temporaries of killed runs go."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from mope_deploy.atomic import OutputPathError, Owner, atomic_dir, atomic_write_text, check_target
from mope_deploy.models import load_model, save_model
from reliability_helpers import cli, tree

PRUNE = ["--depth", "1", "--depth-method", "top"]


def _user_folder(path):
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    (path / "data").mkdir()
    (path / "data" / "x.bin").write_bytes(os.urandom(64))
    return path


@pytest.mark.parametrize("kind", ["file", "foreign-folder", "symlink", "model-dir-with-user-file",
                                  "compress-run-dir"])
def test_prune_refuses_an_out_it_did_not_write(kind, good_model, tmp_path):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("my notes")
        message = "is an existing file"
    elif kind == "foreign-folder":
        _user_folder(out)
        message = "already holds data, thesis.tex, which mope did not write"
    elif kind == "symlink":
        _user_folder(tmp_path / "real")
        out.symlink_to(tmp_path / "real")
        message = "is a symbolic link"
    elif kind == "model-dir-with-user-file":
        cli(["prune", good_model, *PRUNE, "--out", out], watch=good_model, code=0)
        (out / "notes.txt").write_text("mine")
        message = "also holds notes.txt, which mope did not write"
    else:
        cli(["prune", good_model, *PRUNE, "--out", out], watch=good_model, code=0)
        (out / "state.json").write_text("{}")
        (out / "stages").mkdir()
        message = "also holds stages, state.json"
    cli(["prune", good_model, *PRUNE, "--out", out], str(out), message, "--force", watch=tmp_path)


def test_prune_replaces_its_own_output_and_fills_an_empty_folder(good_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cli(["prune", good_model, *PRUNE, "--out", out], "wrote", watch=good_model, code=0)
    first = tree(out)
    cli(["prune", good_model, "--depth", "2", "--depth-method", "top", "--out", out], "wrote", watch=good_model,
        code=0)
    assert sorted(tree(out)) == sorted(first) and tree(out) != first   # same files, new content
    assert load_model(out).config.vision.depth == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]              # no temporary or .old left


@pytest.mark.parametrize("where, message", [
    ("under-a-file", "is a file, not a folder"),
    ("read-only", "cannot write"),
])
def test_unwritable_out(where, message, good_model, tmp_path):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "sub" if where == "under-a-file" else "/sys/mope-out-test"
    cli(["prune", good_model, *PRUNE, "--out", out], str(out), message, watch=tmp_path)


def test_library_writers_keep_the_rule(tiny_model, tmp_path):
    user = _user_folder(tmp_path / "u")
    before = tree(tmp_path)
    with pytest.raises(OutputPathError, match="which mope did not write"):
        save_model(tiny_model, user)
    with pytest.raises(OutputPathError, match="is an existing folder"):
        atomic_write_text(user, "x")
    with pytest.raises(OutputPathError, match="already holds"):
        with atomic_dir(user):
            pytest.fail("the block must not run")
    assert tree(tmp_path) == before
    save_model(tiny_model, user, force=True)                                   # --force: the only way to replace it
    assert sorted(p.name for p in user.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["u"]


def test_folder_that_changes_during_the_write_is_not_replaced(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(OutputPathError, match="already holds late.txt"):
        with atomic_dir(out) as tmp:
            (tmp / "manifest.json").write_text("{}")
            out.mkdir()
            (out / "late.txt").write_text("written by someone else meanwhile")
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and (out / "late.txt").read_text().startswith("written")


def test_stale_temporaries_of_a_killed_run_are_removed_and_reported(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".b.tmp-{pid}-abc123"
    (stale / "triton").mkdir(parents=True)
    (stale / "image_encoder.onnx").write_bytes(b"half")
    live = tmp_path / f".b.tmp-{os.getppid()}-xyz"                    # a running process's temporary: kept
    live.mkdir()
    other = tmp_path / ".c.tmp-1-zzz"                                   # another target's: not ours to judge
    other.mkdir()
    owner = Owner("test output", markers=[("manifest.json",)])
    with caplog.at_level(logging.WARNING, logger="mope_deploy.atomic"):
        with atomic_dir(tmp_path / "b", owner=owner) as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert not stale.exists() and live.exists() and other.exists()
    assert f"removed 1 stale temporary entry left by an interrupted run: .b.tmp-{pid}-abc123" in caplog.text
    check_target(tmp_path / "b", owner)                                 # what it wrote is its own
    with pytest.raises(OutputPathError, match="already holds manifest.json"):
        check_target(tmp_path / "b")                                    # the default owner recognises nothing


def test_prune_force_replaces_a_foreign_folder(good_model, tmp_path):
    out = _user_folder(tmp_path / "out")
    cli(["prune", good_model, *PRUNE, "--out", out, "--force"], "wrote", watch=good_model, code=0)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "plan.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


EXPORT = ["--format", "onnx,triton", "--no-optimize", "--batch-sizes", "1,2,4", "--exporter", "legacy"]


@pytest.mark.parametrize("kind, message", [
    ("file", "is an existing file"),
    ("foreign-folder", "already holds data, thesis.tex"),
    ("model-dir", "already holds config.json, model.safetensors"),
])
def test_export_refuses_before_loading_the_model(kind, message, good_model, tmp_path):
    out = tmp_path / "bundle"
    if kind == "file":
        out.write_bytes(b"\x00" * 10)
    elif kind == "foreign-folder":
        _user_folder(out)
    else:
        import shutil
        shutil.copytree(good_model, out)
    r = cli(["export", good_model, "--out", out, *EXPORT], str(out), message, "--force", watch=tmp_path)
    assert "loading" not in r.output                                   # refused before any work


def test_export_replaces_its_own_bundle_but_not_the_users_additions(good_model, tmp_path):
    out = tmp_path / "bundle"
    cli(["export", good_model, "--out", out, *EXPORT], "exported", watch=good_model, code=0)
    assert (out / "manifest.json").is_file() and (out / "triton").is_dir()
    cli(["export", good_model, "--out", out, *EXPORT, "--normalize"], "exported", watch=good_model, code=0)
    (out / "deploy-notes.md").write_text("how we roll this out")
    cli(["export", good_model, "--out", out, *EXPORT], "also holds deploy-notes.md", "--force", watch=tmp_path)
    cli(["export", good_model, "--out", out, *EXPORT, "--force"], "exported", watch=good_model, code=0)
    assert not (out / "deploy-notes.md").exists() and [p.name for p in tmp_path.iterdir()] == ["bundle"]
