"""Fuzzed parsers (hypothesis): every file a user hands mope - a model config, a recipe YAML, a score table, a
pruning plan, a CSV/TSV or Karpathy JSON data file - answers arbitrary bytes and mutated valid documents with a
MopeError (never another exception) within a time bound (never a hang).

Examples are derandomised and bounded (``FUZZ``), so CI sees the same few hundred inputs every run and the file
stays under ~30 s; ``MOPE_FUZZ_EXAMPLES=2000`` explores more locally. What the fuzzer found before it was fixed is
listed in README's Safety section.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from mope_deploy.compress.recipe import RecipeError, apply_overrides, load_recipe
from mope_deploy.data.datasets import load_dataset
from mope_deploy.errors import MopeError
from mope_deploy.importance import magnitude_table
from mope_deploy.importance.table import ScoreTable
from mope_deploy.models import SlimCLIP, model_stats
from mope_deploy.models.config import CLIPConfig
from mope_deploy.models.io import read_config
from mope_deploy.models.tiny import tiny_config
from mope_deploy.pruning.plan import PruningPlan, full_plan
from mope_deploy.resources import RECIPES, read_text

N = int(os.environ.get("MOPE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=N, deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
HANG_S = 10  # one parse of a small input taking this long is a hang (hypothesis's deadline is off: CI load)

# ------------------------------------------------------------------------------------------------ strategies

LEAVES = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats()
          | st.text(max_size=12) | st.sampled_from(["", "0", "1e-5", "vision", "text", "2:4", "sparselora"]))
JSON = st.recursive(LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12)


def _nodes(doc, path=()):
    yield path
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in list(items):
        yield from _nodes(v, path + (k,))


def _at(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def mutate(data, doc, most: int = 3):
    """``doc`` with 1..``most`` random edits: a node replaced by arbitrary JSON, deleted, or given a new entry."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, most), label="edits")):
        path = data.draw(st.sampled_from(list(_nodes(doc))), label="at")
        op = data.draw(st.sampled_from(("replace", "delete", "add")), label="op")
        if not path:
            doc = data.draw(JSON, label="root") if op == "replace" else doc
            continue
        parent, key = _at(doc, path[:-1]), path[-1]
        node = parent[key]
        if op == "replace":
            parent[key] = data.draw(JSON, label="value")
        elif op == "delete":
            del parent[key]
        elif isinstance(node, dict):
            node[data.draw(st.text(max_size=8), label="key")] = data.draw(JSON, label="value")
        elif isinstance(node, list):
            node.append(data.draw(JSON, label="value"))
    return doc


def flip_bytes(data, raw: bytes) -> bytes:
    """``raw`` with a few bytes replaced, deleted or inserted, or cut short (a damaged file)."""
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4), label="byte edits")):
        i = data.draw(st.integers(0, max(0, len(b) - 1)), label="offset")
        op = data.draw(st.sampled_from(("set", "del", "ins", "cut")), label="byte op")
        v = data.draw(st.integers(0, 255), label="byte")
        if op == "set" and b:
            b[i] = v
        elif op == "del" and b:
            del b[i]
        elif op == "ins":
            b.insert(i, v)
        else:
            del b[i:]
    return bytes(b)


def raw_input(data, valid: bytes) -> bytes:
    """Arbitrary bytes, arbitrary text, or ``valid`` damaged byte-wise."""
    kind = data.draw(st.sampled_from(("bytes", "text", "damaged")), label="input kind")
    if kind == "bytes":
        return data.draw(st.binary(max_size=2048), label="bytes")
    if kind == "text":
        return data.draw(st.text(max_size=300), label="text").encode("utf-8", "surrogatepass")
    return flip_bytes(data, valid)


@contextlib.contextmanager
def bounded(seconds: float = HANG_S):
    """Fail (not hang) when the block runs longer than ``seconds`` (SIGALRM; the main thread only)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: a hang")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def answers(fn, *args):
    """Run a parser: its result, or None when it refused the input with a MopeError (anything else fails)."""
    with bounded():
        try:
            return fn(*args)
        except MopeError as e:
            assert str(e).strip(), "a MopeError must say what is wrong"
            return None


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SlimCLIP(tiny_config(depth=2)).eval()


SPARSITY = {"method": "wanda", "pattern": "2:4", "target": 0.5, "achieved": 0.5, "towers": ["vision", "text"],
            "spec": {"method": "wanda", "sparsity": None, "pattern": "2:4", "samples": 128, "towers": ["vision", "text"]},
            "blocks": {"vision": [0.5, 0.5], "text": [0.5, None]},
            "recovered": {"method": "sparselora", "rank": 4, "lora_towers": ["vision"], "steps": 10,
                          "loss": "(1-0.5)*itc+0.5*KL(T=1.0)"}}


@pytest.fixture(scope="module")
def config_doc(tiny) -> dict:
    """A valid config with every optional record filled (a sparse, recovered model)."""
    return {**tiny.config.to_dict(), "sparsity": SPARSITY}


# ------------------------------------------------------------------------------------------------- config

def _config_file(tmp_path: Path, raw: bytes):
    (tmp_path / "config.json").write_bytes(raw)
    cfg = answers(read_config, tmp_path)
    if cfg is not None:                            # accepted: then every consumer of the fields works
        with bounded():
            model_stats(cfg)
            assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
            _info_lines(cfg)
    return cfg


def _info_lines(cfg: CLIPConfig) -> None:
    """What ``mope info`` reads from the sparsity record (the crash of issue 22), without the weights."""
    rec = cfg.sparsity
    if rec:
        str(rec.get("method", "?")) + (rec["recovered"]["method"] if rec.get("recovered") else "")


@FUZZ
@given(data=st.data())
def test_fuzz_model_config_mutated(data, config_doc, tmp_path):
    doc = mutate(data, config_doc)
    _config_file(tmp_path, json.dumps(doc).encode())


@FUZZ
@given(data=st.data())
def test_fuzz_model_config_bytes(data, config_doc, tmp_path):
    _config_file(tmp_path, raw_input(data, json.dumps(config_doc, indent=2).encode()))


def test_valid_config_still_loads(config_doc, tmp_path):
    """The fuzz base itself is accepted (so the mutations start from a config that loads)."""
    assert _config_file(tmp_path, json.dumps(config_doc).encode()).sparsity == SPARSITY


# ------------------------------------------------------------------------------------------------- recipe

@pytest.fixture(scope="module")
def recipe_doc() -> dict:
    return yaml.safe_load(read_text(RECIPES, "demo-sparse.yaml"))


def _recipe_file(tmp_path: Path, raw: bytes):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(raw)
    return answers(load_recipe, path)


@FUZZ
@given(data=st.data())
def test_fuzz_recipe_mutated(data, recipe_doc, tmp_path):
    _recipe_file(tmp_path, yaml.safe_dump(mutate(data, recipe_doc), allow_unicode=True).encode())


@FUZZ
@given(data=st.data())
def test_fuzz_recipe_bytes(data, recipe_doc, tmp_path):
    _recipe_file(tmp_path, raw_input(data, yaml.safe_dump(recipe_doc).encode()))


@FUZZ
@given(overrides=st.lists(st.text(max_size=30) | st.sampled_from(["train.epochs=x", "prune.vision={", "a.b.c=1",
                                                                   "sparsity.pattern=2:0", "data=[1]"]), max_size=3))
def test_fuzz_recipe_overrides(overrides, recipe_doc):
    with bounded():
        try:
            apply_overrides(recipe_doc, overrides, "fuzz")
        except RecipeError:
            pass


YAML_BOMBS = {
    # a billion-laughs document: aliases multiply a small file into 10^9 list items
    "alias-bomb": "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                  "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
                  "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
                  "name: demo\nteacher: demo\nstage: pretraining\ndata: {train: s, val: s, test: s}\n"
                  "prune: {vision: {width: 64}}\ntrain: {betas: *g}\n",
    "deep-nesting": "name: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep-mapping": "name: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
}


@pytest.mark.parametrize("case", sorted(YAML_BOMBS))
def test_recipe_yaml_bombs_are_refused_quickly(case, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(YAML_BOMBS[case])
    with bounded():
        with pytest.raises(RecipeError) as e:
            load_recipe(path)
    assert len(str(e.value)) < 2000, "the message must stay short (never the expanded document)"


# ------------------------------------------------------------------------------------- score table and plan

@pytest.fixture(scope="module")
def table_doc(tiny) -> dict:
    return magnitude_table(tiny, ("vision", "text"), 4).to_dict()


@pytest.fixture(scope="module")
def plan_doc(tiny) -> dict:
    return json.loads(full_plan(tiny.config, teacher="tiny").to_json())


def _table_file(tmp_path: Path, raw: bytes, config: CLIPConfig):
    path = tmp_path / "scores.json"
    path.write_bytes(raw)
    table = answers(ScoreTable.load, path)
    if table is not None:
        def use():
            table.check_model(config)
            for name in table.towers:
                t = table.tower(name)
                for b in range(len(t.layer)):
                    t.groups(b)
        answers(use)


def _plan_file(tmp_path: Path, raw: bytes, config: CLIPConfig):
    path = tmp_path / "plan.json"
    path.write_bytes(raw)
    plan = answers(PruningPlan.load, path)
    if plan is not None:
        pruned = answers(plan.apply_config, config)
        if pruned is not None:
            with bounded():
                model_stats(pruned)
                plan.hash()


@FUZZ
@given(data=st.data())
def test_fuzz_score_table_mutated(data, table_doc, tiny, tmp_path):
    _table_file(tmp_path, json.dumps(mutate(data, table_doc)).encode(), tiny.config)


@FUZZ
@given(data=st.data())
def test_fuzz_score_table_bytes(data, table_doc, tiny, tmp_path):
    _table_file(tmp_path, raw_input(data, json.dumps(table_doc).encode()), tiny.config)


@FUZZ
@given(data=st.data())
def test_fuzz_pruning_plan_mutated(data, plan_doc, tiny, tmp_path):
    _plan_file(tmp_path, json.dumps(mutate(data, plan_doc)).encode(), tiny.config)


@FUZZ
@given(data=st.data())
def test_fuzz_pruning_plan_bytes(data, plan_doc, tiny, tmp_path):
    _plan_file(tmp_path, raw_input(data, json.dumps(plan_doc).encode()), tiny.config)


DEEP_JSON = {"array": "[" * 100_000 + "]" * 100_000, "object": '{"a":' * 100_000 + "1" + "}" * 100_000}


@pytest.mark.parametrize("parser", ["config", "scores", "plan", "karpathy"])
@pytest.mark.parametrize("shape", sorted(DEEP_JSON))
def test_deeply_nested_json_is_refused(parser, shape, tmp_path):
    """JSON nested 100,000 deep overflows the decoder's recursion: still one MopeError naming the file."""
    name = {"config": "config.json", "scores": "scores.json", "plan": "plan.json", "karpathy": "data.json"}[parser]
    (tmp_path / name).write_text(DEEP_JSON[shape])
    fn = {"config": lambda: read_config(tmp_path), "scores": lambda: ScoreTable.load(tmp_path / name),
          "plan": lambda: PruningPlan.load(tmp_path / name), "karpathy": lambda: load_dataset(tmp_path / name)}[parser]
    with bounded(), pytest.raises(MopeError, match="nested too deeply") as e:
        fn()
    assert name in str(e.value)


# ------------------------------------------------------------------------------------------------ data files

@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-images")
    for i in range(2):
        Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(root / f"{i}.png")
    return root


CSV = "image,caption,split\n0.png,a red square,test\n1.png,\"a blue, square\",test\n1.png,second caption,test\n"
KARPATHY = {"images": [{"filename": "0.png", "split": "test", "sentences": [{"raw": "a red square"}]},
                       {"filename": "1.png", "filepath": "", "split": "test",
                        "sentences": [{"raw": "a blue square"}, {"raw": "second"}]}]}


def _data_file(root: Path, name: str, raw: bytes):
    path = root / name
    path.write_bytes(raw)
    try:
        ds = answers(load_dataset, path)
    finally:
        path.unlink()
    if ds is not None:
        assert len(ds.captions) == len(ds.txt2img) and ds.n_images >= 1


def test_fuzz_bases_load(image_dir, tmp_path):
    for name, raw in (("a.csv", CSV.encode()), ("a.json", json.dumps(KARPATHY).encode())):
        work = tmp_path / name.split(".")[1]
        shutil.copytree(image_dir, work)
        (work / name).write_bytes(raw)
        assert load_dataset(work / name).n_captions == 3


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".csv", ".tsv"]))
def test_fuzz_csv(data, suffix, image_dir):
    _data_file(image_dir, "captions" + suffix, raw_input(data, CSV.encode()))


@FUZZ
@given(data=st.data())
def test_fuzz_karpathy_mutated(data, image_dir):
    _data_file(image_dir, "dataset.json", json.dumps(mutate(data, KARPATHY)).encode())


@FUZZ
@given(data=st.data())
def test_fuzz_karpathy_bytes(data, image_dir):
    _data_file(image_dir, "dataset.json", raw_input(data, json.dumps(KARPATHY).encode()))


# ------------------------------------------------------------------------------------ bundle manifest

MANIFEST_V2 = Path(__file__).parents[1] / "bundle" / "fixtures" / "manifest_v2.json"


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    """The format-2 manifest the exporter wrote, and the same upgraded to the typed schema (its JSON form)."""
    from mope_deploy.bundle import read_manifest

    v2 = json.loads(MANIFEST_V2.read_text())
    return {"v2": v2, "v3": json.loads(json.dumps(read_manifest(MANIFEST_V2).to_dict()))}


def _bundle(root: Path, raw: bytes) -> None:
    """Read a bundle through its public reader (``Bundle``) and use every lookup a runtime makes."""
    from mope_deploy.bundle import Bundle

    (root / "manifest.json").write_bytes(raw)
    b = Bundle(root)
    if answers(lambda: b.manifest) is None:
        return
    answers(b.config)
    for variant in ("fp32", "optimized", "int8", "fp16", "fused"):
        answers(b.variant_files, variant)
    for backend in ("onnxruntime", "portable"):
        answers(b.runtime_files, backend)
    answers(b.engine, "vision")
    answers(b.verify)


@FUZZ     # found by this fuzzer (fixed: the reader validates each variant's files)
@given(data=st.data(), schema=st.sampled_from(["v2", "v3"]))
def test_fuzz_manifest_mutated(data, schema, manifests, tmp_path):
    _bundle(tmp_path, json.dumps(mutate(data, manifests[schema])).encode())


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_bytes(data, manifests, tmp_path):
    _bundle(tmp_path, raw_input(data, json.dumps(manifests["v3"], indent=1).encode()))
