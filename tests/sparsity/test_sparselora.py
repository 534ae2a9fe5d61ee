"""SparseLoRA: the student path is the sparse model, the dense path the original, merge keeps the zeros, and the
recovery runs through the project trainer."""

import copy

import pytest
import torch

from mope_deploy.distill.losses import Outputs
from mope_deploy.distill.trainer import TrainConfig, Trainer, clip_forward
from mope_deploy.sparsity import (RecoverSpec, SparseLoRALinear, SparseLoRALoss, SparsifySpec, attach, dense_path,
                                  is_nm, merge, prunable, recover, sparsify)
from mope_deploy.sparsity.sparselora import kl_term, make_forward


def _data(calib, batch_size=8):
    def data(start):
        i = start
        while True:
            s = (i * batch_size) % len(calib)
            yield {"images": calib.images[s:s + batch_size], "tokens": calib.tokens[s:s + batch_size]}
            i += 1
    return data


@pytest.fixture
def pair(tiny_model, calib):
    sparse = copy.deepcopy(tiny_model)
    sparsify(sparse, SparsifySpec(method="sparsegpt", pattern="2:4"), calib, progress=False)
    return tiny_model, sparse


def test_paths_equal_sparse_and_dense_models(pair, calib):
    dense, sparse = pair
    ref_dense = copy.deepcopy(dense)
    model = attach(copy.deepcopy(dense), sparse, rank=4)
    with torch.no_grad():
        for lin in (m for m in model.modules() if isinstance(m, SparseLoRALinear)):
            lin.dense = False
        assert torch.allclose(model.encode_image(calib.images), sparse.encode_image(calib.images), atol=1e-5)
        assert torch.allclose(model.encode_text(calib.tokens), sparse.encode_text(calib.tokens), atol=1e-5)
        with dense_path(model):
            assert torch.allclose(model.encode_image(calib.images), ref_dense.encode_image(calib.images), atol=1e-6)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)                      # only LoRA factors train ...
    assert {n.split(".")[0] for n in trainable} == {"visual", "text"}              # ... on both towers by default
    only_v = attach(copy.deepcopy(dense), sparse, rank=4, lora_towers=("vision",))
    assert all(n.startswith("visual.") for n, p in only_v.named_parameters() if p.requires_grad)


def test_merge_keeps_exact_zero_pattern_and_nm(pair, calib):
    dense, sparse = pair
    model = attach(copy.deepcopy(dense), sparse, rank=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SparseLoRALinear) and m.lora_B is not None:
                m.lora_B.normal_()  # a trained-looking, non-zero update everywhere
    merged = merge(model)
    n_changed = 0
    for (t, i, n, a), (*_, b) in zip(prunable(merged), prunable(sparse)):
        assert type(a) is torch.nn.Linear
        assert torch.equal(a.weight != 0, b.weight != 0), (t, i, n)        # same positions, same count
        assert is_nm(a.weight, 2, 4)
        n_changed += int((a.weight != b.weight).any())
    assert n_changed == 16  # every linear of both towers got its LoRA update


def test_kl_term_matches_naive_and_is_zero_on_self():
    torch.manual_seed(0)
    f = lambda: torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)  # noqa: E731
    s, t = Outputs(f(), f(), torch.tensor(10.0)), Outputs(f(), f(), torch.tensor(10.0))
    T = 2.0
    ls, lt = 10 * s.image @ s.text.t() / T, 10 * t.image @ t.text.t() / T
    naive = 0.0
    for a, b in ((ls, lt), (ls.t(), lt.t())):
        p = b.softmax(-1)
        naive += (p * (p.log() - a.log_softmax(-1))).sum(-1).mean()
    assert float(kl_term(s, t, T)) == pytest.approx(float(naive / 2), rel=1e-5)  # no T^2, as the reference
    assert float(kl_term(s, s, T)) == pytest.approx(0.0, abs=1e-6)


def test_trainer_integration_trains_lora_only(pair, calib, tmp_path):
    dense, sparse = pair
    model = attach(copy.deepcopy(dense), sparse, rank=4)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainer = Trainer(model, TrainConfig(steps=6, lr=1e-2, weight_decay=0.0, out_dir=str(tmp_path / "run")),
                      _data(calib), loss=SparseLoRALoss(), forward=make_forward(clip_forward), progress=False)
    logs = trainer.train()
    assert {"task", "kl"} <= set(logs)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())   # only LoRA moved
    assert any(float(m.lora_B.detach().abs().max()) > 0 for m in model.modules()
               if isinstance(m, SparseLoRALinear) and m.lora_B is not None)
    assert (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.parametrize("kd", [False, True])
def test_recover_end_to_end_keeps_pattern(pair, calib, kd):
    dense, sparse = pair
    spec = RecoverSpec(steps=4, lr=5e-3, kd=kd)
    merged = recover(copy.deepcopy(dense), sparse, _data(calib), spec, progress=False)
    changed = set()
    for (t, *_, a), (*_, b) in zip(prunable(merged), prunable(sparse)):
        assert torch.equal(a.weight != 0, b.weight != 0) and is_nm(a.weight, 2, 4)  # the zeros, exactly
        if not torch.equal(a.weight, b.weight):
            changed.add(t)
    assert changed == {"vision", "text"}                                             # both towers recovered
    assert merged.config.sparsity["recovered"]["lora_towers"] == ["vision", "text"]
    assert merged.config.sparsity["recovered"]["method"] == "sparselora"
    assert merged.config.sparsity["pattern"] == "2:4"
    with torch.no_grad():
        assert torch.isfinite(merged.encode_image(calib.images)).all()


def test_lora_towers_and_settings_checked_before_work(tiny_model, calib):
    from mope_deploy.sparsity import SparsityError

    sparse = copy.deepcopy(tiny_model)
    sparsify(sparse, SparsifySpec(method="magnitude", pattern="2:4", towers=("vision",)), progress=False)
    with pytest.raises(SparsityError, match="text was not sparsified"):
        recover(copy.deepcopy(tiny_model), sparse, _data(calib), RecoverSpec(steps=1, lora_towers=("text",)))
    for bad, msg in [(dict(rank=0), "--lora-rank"), (dict(alpha=0.0), "--lora-alpha"),
                     (dict(lora_towers=("audio",)), "--lora-towers must be")]:
        with pytest.raises(SparsityError, match=msg):
            recover(copy.deepcopy(tiny_model), sparse, _data(calib), RecoverSpec(steps=1, **bad))
    merged = recover(copy.deepcopy(tiny_model), sparse, _data(calib), RecoverSpec(steps=2, lr=5e-3, alpha=8.0),
                     progress=False)  # default: LoRA on the sparsified tower only; the text tower stays dense
    assert merged.config.sparsity["recovered"]["lora_towers"] == ["vision"]
    assert merged.config.sparsity["recovered"]["alpha"] == 8.0
    for (t, *_, a), (*_, b) in zip(prunable(merged), prunable(tiny_model)):
        if t == "text":
            assert torch.equal(a.weight, b.weight)


def test_recovery_is_deterministic_for_a_seed(pair, calib):
    """The adapters start from the spec's seed, not the global RNG: two runs under different global seeds give the
    same merged weights."""
    dense, sparse = pair
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(recover(copy.deepcopy(dense), copy.deepcopy(sparse), _data(calib),
                            RecoverSpec(steps=2, lr=5e-3), progress=False).state_dict())
    assert all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())
