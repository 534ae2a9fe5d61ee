"""``mope sparsify --recover sparselora --out OUT`` keeps its checkpoints in ``.OUT.sparselora``: a user's file or
folder of that name is refused before any work (exit 2, one message naming it) and stays byte-identical; the
run's own work folder (marked by mope) is removed after success."""

from __future__ import annotations

import pytest

from mope_deploy.atomic import WORK_MARKER
from reliability_helpers import cli

RECOVER = ["--method", "magnitude", "--pattern", "2:4", "--recover", "sparselora", "--data", "synthetic",
           "--recover-steps", "2", "--recover-batch", "4", "--samples", "4", "-q"]


@pytest.mark.parametrize("kind", ["folder", "file", "symlink"])
def test_a_users_work_folder_name_is_refused_and_kept(kind, good_model, tmp_path):
    out = tmp_path / "sparse"
    work = tmp_path / ".sparse.sparselora"
    if kind == "folder":
        work.mkdir()
        (work / "experiment.txt").write_text("my results")
        (work / "last.pt").write_bytes(b"not mope's")
    elif kind == "file":
        work.write_text("a note")
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "keep.txt").write_text("keep")
        work.symlink_to(tmp_path / "elsewhere")
    r = cli(["sparsify", good_model, *RECOVER, "--out", out], str(work), "mope did not create it", "move it away",
            watch=tmp_path)
    assert not out.exists()
    assert r.output.lstrip().startswith("error:") and r.output.count("error:") == 1  # one message (rich wraps it)


def test_own_work_folder_is_removed_after_success_and_a_marked_leftover_reused(good_model, tmp_path):
    out = tmp_path / "sparse"
    work = tmp_path / ".sparse.sparselora"
    work.mkdir()
    (work / WORK_MARKER).write_text("SparseLoRA checkpoints\n")  # left by an interrupted run of mope
    cli(["sparsify", good_model, *RECOVER, "--out", out], watch=good_model, code=0)
    assert (out / "config.json").is_file()
    assert not work.exists()
