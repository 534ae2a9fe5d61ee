"""Recipes and `mope compress` run folders: a recipe cannot name a folder outside runs/, every data path is
checked before the first stage, a changed recipe resumes when only later stages change, `--restart` clears
only a mope run and only the files it wrote, and a planted pickle is refused without being unpickled."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import yaml
from PIL import Image

from reliability_helpers import app, cli, runner


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A tiny teacher, a 4-image CSV and a recipe dict using them (2 training steps, magnitude scores)."""
    import torch

    from mope_deploy.models import SlimCLIP, save_model
    from mope_deploy.models.tiny import tiny_config

    root = tmp_path_factory.mktemp("kit")
    torch.manual_seed(0)
    teacher = save_model(SlimCLIP(tiny_config()).eval(), root / "teacher")
    (root / "data" / "images").mkdir(parents=True)
    rows = ["filepath,title"]
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        Image.new("RGB", (40, 40), rgb).save(root / "data" / "images" / f"{i}.png")
        rows += [f"{i}.png,colour {i}", f"{i}.png,square number {i}"]
    (root / "data" / "captions.csv").write_text("\n".join(rows) + "\n")
    data = str(root / "data" / "captions.csv")
    recipe = {"name": "tiny", "teacher": str(teacher), "stage": "pretraining",
              "data": {"train": data, "val": data, "test": data, "train_split": "test", "val_split": "test"},
              "prune": {"vision": {"width": 32}, "text": {"width": 32}, "method": "magnitude", "neuron_groups": 4},
              "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "eval_every_epoch": False}}
    return {"root": root, "recipe": recipe, "data": data}


def _recipe(tmp_path, base, **changes):
    r = json.loads(json.dumps(base))
    for key, value in changes.items():
        d = r
        *path, last = key.split("__")
        for k in path:
            d = d[k]
        d[last] = value
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


@pytest.fixture(scope="module")
def finished_run(kit, tmp_path_factory):
    """One complete tiny run (copied by the tests that need a run folder)."""
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "run"
    r = runner.invoke(app, ["compress", str(_recipe(tmp, kit["recipe"])), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    return out


# ----------------------------------------------------------------------------------------- recipe fields

@pytest.mark.parametrize("name", ["../../victim", "/tmp/victim", "my run", "..", "a/b", ""])
def test_recipe_name_is_a_plain_file_name(name, kit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    cli(["compress", _recipe(tmp_path, kit["recipe"], name=name), "--restart"], "name", "letters, digits",
        watch=tmp_path)


@pytest.mark.parametrize("text, message", [
    ("name: x\nteacher: demo\n  stage: [", "is not valid YAML"),
    ("- name: x\n- teacher: demo\n", "must be a mapping"),
    ("name: x\nteacher: demo\nstage: pretraining\nbogus: 1\n", "bogus: unknown key"),
], ids=["yaml-syntax", "yaml-list", "unknown-key"])
def test_unreadable_recipe_files(text, message, tmp_path):
    (tmp_path / "bad.yaml").write_text(text)
    cli(["compress", tmp_path / "bad.yaml", "--out", tmp_path / "o"], "bad.yaml", message, watch=tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"train__lr": -1.0}, "train.lr"),
    ({"stage": "finetuning"}, "exactly one tower"),
    ({"prune__vision": {"width": 32.5}}, "prune.vision.width"),
], ids=["negative-lr", "finetuning-two-towers", "float-width"])
def test_bad_recipe_values(changes, message, kit, tmp_path):
    cli(["compress", _recipe(tmp_path, kit["recipe"], **changes), "--out", tmp_path / "o"], message, watch=tmp_path)


@pytest.mark.parametrize("field, value, message", [
    ("data__test", "missing/test.csv", "data.test"),
    ("data__val", "nope/{000..003}.tar", "data.val"),
    ("data__image_root", "no-such-folder", "data.image_root"),
    ("teacher", "teachers/gone", "teacher"),
    ("pretrained", "weights/missing.pt", "pretrained"),
], ids=["test-csv", "val-shards", "image-root", "teacher-dir", "teacher-checkpoint"])
def test_every_data_path_is_checked_before_the_first_stage(field, value, message, kit, tmp_path):
    recipe = _recipe(tmp_path, kit["recipe"], **{field: str(tmp_path / value)})
    if field == "pretrained":
        recipe = _recipe(tmp_path, kit["recipe"], teacher="ViT-B-32", pretrained=str(tmp_path / value))
    r = cli(["compress", recipe, "--out", tmp_path / "run"], message, value.split("/")[-1], watch=tmp_path)
    assert "stage " not in r.output.split("error:")[-1] and "running" not in r.output   # no stage ran


# ------------------------------------------------------------------------------------------ run folders

def test_out_that_is_not_a_run_is_refused(kit, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("my own config")
    cli(["compress", _recipe(tmp_path, kit["recipe"]), "--out", out], "mine", "config.json", "state.json",
        watch=tmp_path)
    cli(["compress", _recipe(tmp_path, kit["recipe"]), "--out", out, "--restart"], "state.json", watch=tmp_path)


def test_restart_clears_only_what_the_run_wrote(kit, finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "my-notes.txt").write_text("keep me")
    (out / "analysis").mkdir()
    (out / "analysis" / "plot.png").write_bytes(b"\x89PNG")
    r = runner.invoke(app, ["compress", str(_recipe(tmp_path, kit["recipe"])), "--out", str(out), "--quiet",
                            "--restart"])
    assert r.exit_code == 0, r.output
    assert "kept" in r.output and "my-notes.txt" in r.output
    assert (out / "my-notes.txt").read_text() == "keep me" and (out / "analysis" / "plot.png").is_file()
    assert "already done" not in r.output                          # every stage ran again


def test_corrupt_state_json_names_the_file_and_the_way_out(kit, finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "state.json").write_text('{"recipe": {"name": ')
    cli(["compress", _recipe(tmp_path, kit["recipe"]), "--out", out], "state.json", "is damaged", "--out",
        watch=tmp_path)


def test_changed_recipe_resumes_only_when_later_stages_change(kit, finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    cli(["compress", _recipe(tmp_path, kit["recipe"], prune={**kit["recipe"]["prune"], "neuron_groups": 8}),
         "--out", out], "prune.neuron_groups", "--restart", watch=tmp_path)
    other = tmp_path / "test.csv"
    other.write_text(open(kit["data"]).read().replace("colour", "color"))
    (tmp_path / "images").symlink_to(kit["root"] / "data" / "images")
    recipe = _recipe(tmp_path, kit["recipe"], name="renamed", data={**kit["recipe"]["data"], "test": str(other)})
    r = runner.invoke(app, ["compress", str(recipe), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "changed: data.test, name" in " ".join(r.output.split())
    assert "stage distill-pretraining: already done" in r.output and "stage report: running" in r.output
    assert json.loads((out / "report.json").read_text())["test_data"].startswith(str(other))


class _Boom:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/mope-pickle-ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_planted_checkpoint_pickle_is_refused_not_run(kit, finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    state = json.loads((out / "state.json").read_text())
    state["done"] = {k: v for k, v in state["done"].items() if k.startswith(("score", "prune"))}
    (out / "state.json").write_text(json.dumps(state))
    ckpt = out / "stages" / "train-pretraining" / "last.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(pickle.dumps({"step": _Boom()}))
    shutil.rmtree("/tmp/mope-pickle-ran", ignore_errors=True)
    cli(["compress", _recipe(tmp_path, kit["recipe"]), "--out", out, "--quiet"], "last.pt", "was refused",
        "never unpickles", watch=tmp_path)
    assert not os.path.exists("/tmp/mope-pickle-ran")            # the payload never ran
