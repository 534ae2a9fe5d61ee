"""The one output policy, command by command: a user's file and a user's non-empty folder at the output path are
refused (naming the path and what to do) and stay byte-identical, with and without ``--force`` when the new
output fails. Each command lists how to run it into OUT successfully and how to make it fail after the output
check has passed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reliability_helpers import cli, tree

FORCE_WORDS = "--force"


def _prune(model, out, data):
    return ["prune", model, "--depth", "1", "--depth-method", "top", "--out", out]


def _prune_fails(model, out, data):
    return ["prune", model, "--depth", "99", "--depth-method", "top", "--out", out]


def _importance(model, out, data):
    return ["importance", model, "--method", "magnitude", "--out", out]


def _importance_fails(model, out, data):
    return ["importance", model, "--data", out.parent / "missing.csv", "--out", out]


def _eval(model, out, data):
    return ["eval", model, "--data", data, "-q", "--json", out]


def _eval_fails(model, out, data):
    return ["eval", model, "--data", out.parent / "missing.csv", "-q", "--json", out]


def _bench(model, out, data):
    return ["bench", model, "--batch-sizes", "1", "--warmup", "0", "--iters", "1", "-q", "--json", out]


def _bench_fails(model, out, data):
    return ["bench", out.parent / "missing-model", "--batch-sizes", "1", "--iters", "1", "-q", "--json", out]


#: command -> (output kind, how to run it, how to make it fail after the check)
COMMANDS = {
    "prune": ("folder", _prune, _prune_fails),
    "importance": ("file", _importance, _importance_fails),
    "eval": ("file", _eval, _eval_fails),
    "bench": ("file", _bench, _bench_fails),
}


def _user_file(path: Path) -> None:
    path.write_text("my notes, not mope's")


def _user_folder(path: Path) -> None:
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    (path / "data").mkdir()
    (path / "data" / "x.bin").write_bytes(os.urandom(64))


def _occupied(tmp_path: Path, what: str) -> tuple[Path, Path]:
    """A watched folder holding the user's file or folder at the output path ``out``."""
    area = tmp_path / "area"
    area.mkdir()
    out = area / "out"
    (_user_file if what == "file" else _user_folder)(out)
    return area, out


@pytest.fixture
def data(caption_csv, noise_images):
    return caption_csv(noise_images(4), [["a red square"], ["a blue circle"], ["a green line"], ["a dot"]])


@pytest.mark.parametrize("what", ["file", "folder"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_refuses_a_users_file_or_folder(command, what, good_model, data, tmp_path):
    kind, run, _ = COMMANDS[command]
    area, out = _occupied(tmp_path, what)
    needle = FORCE_WORDS if (what == "file" or kind == "folder") else "is a folder"
    cli(run(good_model, out, data), str(out), needle, watch=area)


@pytest.mark.parametrize("what", ["file", "folder"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_force_keeps_the_old_content_when_the_new_output_fails(command, what, good_model, data, tmp_path):
    kind, _, fail = COMMANDS[command]
    area, out = _occupied(tmp_path, what)
    before = tree(area)
    cli([*fail(good_model, out, data), "--force"], watch=area)
    assert tree(area) == before


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_writes_absent_then_replaces_its_own_output(command, good_model, data, tmp_path):
    _, run, _ = COMMANDS[command]
    out = tmp_path / "out"
    cli(run(good_model, out, data), watch=good_model, code=0)
    assert out.exists()
    cli(run(good_model, out, data), watch=good_model, code=0)      # its own output: replaced without --force


@pytest.mark.parametrize("what", ["file", "folder"])
def test_compress_refuses_a_users_file_or_folder(what, tmp_path):
    """compress writes its run folder in place (it resumes), so it has --resume/--restart instead of --force:
    a folder that is not a mope run is refused before any work, and --restart does not change that."""
    area, out = _occupied(tmp_path, what)
    for extra in ([], ["--restart"]):
        cli(["compress", "demo", "--out", out, *extra], str(out), "choose another --out", watch=area)


def test_a_plot_mope_wrote_is_replaced_but_a_users_png_is_not(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from mope_deploy.atomic import OutputPathError, check_file_target
    from mope_deploy.bench.plot import PLOT_FILE, save_png

    ours = save_png(plt.figure(), tmp_path / "ours.png")
    check_file_target(ours, PLOT_FILE)                       # its own plot: replaceable without --force
    users = tmp_path / "holiday.png"
    Image.new("RGB", (8, 8)).save(users)
    with pytest.raises(OutputPathError, match="holiday.png"):
        check_file_target(users, PLOT_FILE)
    check_file_target(users, PLOT_FILE, force=True)
    before = users.read_bytes()
    with pytest.raises(OutputPathError, match="holiday.png"):       # the writer itself refuses (every plot)
        save_png(plt.figure(), users)
    assert users.read_bytes() == before
    save_png(plt.figure(), ours)                                     # its own: replaced
    save_png(plt.figure(), users, force=True)
    assert PLOT_FILE.recognises(users.read_bytes())


def test_mope_plan_writes_its_json_and_plot_under_the_output_policy(tmp_path):
    """A plan JSON or plot path holding a user's file is refused before any timing; a plan mope wrote is not."""
    from mope_deploy.atomic import OutputPathError, check_file_target
    from mope_deploy.planning import PLAN_FILE, write_plan

    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    cli(["plan", "demo", "--backend", "torch", "--speedup", "2", "--json", str(notes)], "notes.json", "--force",
        watch=tmp_path)
    holiday = tmp_path / "holiday.png"
    holiday.write_bytes(b"\x89PNG\r\n\x1a\n not ours")
    cli(["plan", "demo", "--backend", "torch", "--speedup", "2", "--plot", str(holiday)], "holiday.png", "--force",
        watch=tmp_path)
    plan = write_plan({"budget_ms": 1.0, "cost_models": {}, "candidates": []}, tmp_path / "plan.json")
    check_file_target(plan, PLAN_FILE)                           # a plan mope wrote: replaceable
    with pytest.raises(OutputPathError, match="notes.json"):
        write_plan({"budget_ms": 1.0, "cost_models": {}, "candidates": []}, notes)
    assert notes.read_text() == '{"mine": 1}'
