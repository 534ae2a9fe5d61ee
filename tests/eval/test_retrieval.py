"""Retrieval metrics: chunked implementation vs the naive reference, a hand-made case, and evaluate()."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from mope_deploy.data.datasets import RetrievalDataset, load_dataset
from mope_deploy.eval.retrieval import (METRIC_KEYS, embed, encode_inputs, evaluate, naive_retrieval_metrics,
                                        retrieval_metrics, retrieval_ranks)


def test_hand_made_case_with_known_answers():
    # 3 images, 5 captions; scores img.txt are written out below (rows images, columns captions).
    img = torch.eye(3)
    txt = torch.tensor([
        [0.9, 0.0, 0.0],    # c0 -> image 0: best for image 0           (IR rank 0)
        [0.0, 0.2, 0.8],    # c1 -> image 1: image 2 scores higher     (IR rank 1)
        [0.0, 0.5, 0.0],    # c2 -> image 1                             (IR rank 0)
        [0.7, 0.0, 0.7],    # c3 -> image 2: tie with image 0 -> pessimistic rank 1
        [0.0, 0.0, 0.1],    # c4 -> image 2: images 0 and 1 score 0 < 0.1 (IR rank 0)
    ])
    t2i = [0, 1, 1, 2, 2]
    # TR: image 0 scores [.9 0 0 .7 0] -> own c0 first (rank 0).
    #     image 1 scores [0 .2 .5 0 0] -> own c2 first (rank 0).
    #     image 2 scores [0 .8 0 .7 .1] -> c1 (wrong, .8) beats best own c3 (.7): rank 1.
    tr_rank, ir_rank = retrieval_ranks(img, txt, t2i)
    assert tr_rank.tolist() == [0, 0, 1]
    assert ir_rank.tolist() == [0, 1, 0, 1, 0]
    m = retrieval_metrics(img, txt, t2i)
    assert m["tr1"] == pytest.approx(200 / 3) and m["tr5"] == 100 and m["tr10"] == 100
    assert m["ir1"] == pytest.approx(60.0) and m["ir5"] == 100 and m["ir10"] == 100
    assert m["recall_mean"] == pytest.approx((200 / 3 + 60 + 400) / 6)
    assert m["tr_mean"] == pytest.approx((200 / 3 + 200) / 3) and m["ir_mean"] == pytest.approx(260 / 3)
    assert list(m) == list(METRIC_KEYS)
    assert naive_retrieval_metrics(img, txt, t2i) == m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_matches_naive_with_many_ties(seed):
    # Small integer vectors make exact scores and plenty of ties; caption counts per image vary (1..4).
    g = torch.Generator().manual_seed(seed)
    n = 23
    per_image = torch.randint(1, 5, (n,), generator=g)
    t2i = torch.repeat_interleave(torch.arange(n), per_image)
    t2i = t2i[torch.randperm(len(t2i), generator=g)]
    img = torch.randint(-1, 2, (n, 3), generator=g).float()
    txt = torch.randint(-1, 2, (len(t2i), 3), generator=g).float()
    ref = naive_retrieval_metrics(img, txt, t2i)
    for chunk in (1, 2, 7, 23, 64, 4096):
        assert retrieval_metrics(img, txt, t2i, chunk_size=chunk) == ref


def test_chunked_matches_naive_on_random_unit_vectors():
    g = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(200, 16, generator=g), dim=-1)
    txt[::5] = torch.nn.functional.normalize(img + 0.3 * torch.randn(40, 16, generator=g), dim=-1)
    t2i = torch.arange(200) // 5
    ref = naive_retrieval_metrics(img, txt, t2i)
    assert 0 < ref["tr1"] < 100 and 0 < ref["ir1"] < 100            # a non-degenerate case
    for chunk in (3, 40, 1000):
        got = retrieval_metrics(img, txt, t2i, chunk_size=chunk)
        assert got == pytest.approx(ref)


def test_collapsed_embeddings_score_zero_not_an_order_accident():
    img, txt = torch.ones(20, 4), torch.ones(100, 4)
    m = retrieval_metrics(img, txt, torch.arange(100) // 5)
    assert all(m[k] == 0 for k in ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10"))
    assert naive_retrieval_metrics(img, txt, torch.arange(100) // 5) == m


def test_perfect_embeddings_score_100():
    img = torch.eye(8)
    txt = torch.eye(8).repeat_interleave(3, dim=0)
    m = retrieval_metrics(img, txt, torch.arange(24) // 3, chunk_size=5)
    assert all(v == 100 for v in m.values())


def test_bad_inputs_are_clear_errors():
    img, txt = torch.randn(3, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(img, txt, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(img, txt, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="one image index per caption"):
        retrieval_metrics(img, txt, [0, 1, 2])
    with pytest.raises(ValueError, match="different widths"):
        retrieval_metrics(img, torch.randn(4, 5), [0, 1, 2, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(img, txt.clone().fill_(float("nan")), [0, 1, 2, 2])
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(img, txt, [0, 1, 2, 2], chunk_size=0)


# ---------------------------------------------------------------------------------------------------------
# From model + dataset


def _pil(i: int) -> Image.Image:
    g = torch.Generator().manual_seed(i)
    arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def _dataset() -> RetrievalDataset:
    images = [_pil(i) for i in range(6)]
    captions = [f"a picture number {i} variant {j}" for i in range(6) for j in range(2)]
    return RetrievalDataset("mem", images, captions, [i for i in range(6) for _ in range(2)])


def test_evaluate_equals_cached_inputs_path(tiny_model):
    ds = _dataset()
    result = evaluate(tiny_model, ds, batch_size=4, progress=False)
    images, tokens, t2i = encode_inputs(tiny_model, ds, batch_size=5)
    assert images.shape == (6, 3, 32, 32) and tokens.shape == (12, 16) and tokens.dtype == torch.long
    assert t2i.tolist() == ds.txt2img
    img_emb, txt_emb = embed(tiny_model, images, tokens, batch_size=3)
    assert torch.allclose(img_emb.norm(dim=-1), torch.ones(6), atol=1e-5)
    # independent path: model's own preprocess/tokenizer applied by hand, the naive metric
    with torch.no_grad():
        ref_img = tiny_model.encode_image(torch.stack([tiny_model.preprocess(im) for im in ds.images]), normalize=True)
        ref_txt = tiny_model.encode_text(tiny_model.tokenizer(ds.captions), normalize=True)
    assert torch.allclose(img_emb, ref_img, atol=1e-5) and torch.allclose(txt_emb, ref_txt, atol=1e-5)
    ref = naive_retrieval_metrics(ref_img, ref_txt, ds.txt2img)
    assert {k: result[k] for k in METRIC_KEYS} == pytest.approx(ref)
    assert result["n_images"] == 6 and result["n_captions"] == 12 and result["n_skipped"] == 0


def test_evaluate_skips_images_that_fail_to_decode(tiny_model, tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    for i in range(3):
        _pil(i).save(tmp_path / f"ok{i}.png")
    rows = ["image,caption", "ok0.png,zero", "cut.jpg,broken a", "ok1.png,one", "cut.jpg,broken b", "ok2.png,two"]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "captions.csv")
    assert ds.n_images == 4 and len(ds.report) == 0                   # header looks fine until decoded
    result = evaluate(tiny_model, ds, batch_size=2, progress=False)
    assert result["n_images"] == 3 and result["n_captions"] == 3 and result["n_skipped"] == 1
    assert ds.report.counts() == {"unreadable image": 1} and "cut.jpg" in ds.report.summary()
    assert evaluate(tiny_model, ds, batch_size=2, progress=False)["n_skipped"] == 1    # not counted twice
    images, tokens, t2i = encode_inputs(tiny_model, load_dataset(tmp_path / "captions.csv"))
    assert images.shape[0] == 3 and t2i.tolist() == [0, 1, 2]


def test_evaluate_all_images_broken_is_an_error(tiny_model, tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    (tmp_path / "captions.csv").write_text("image,caption\ncut.jpg,a\n")
    with pytest.raises(ValueError, match="no image could be decoded.*cut.jpg"):
        evaluate(tiny_model, load_dataset(tmp_path / "captions.csv"), progress=False)


def test_flickr8k_500_counts(tiny_model, flickr_dir):
    ds = load_dataset(flickr_dir / "captions.csv")
    assert ds.n_images == 500 and ds.n_captions == 2500 and len(ds.report) == 0
    result = evaluate(tiny_model, ds, batch_size=100, progress=False)
    assert result["n_images"] == 500 and result["n_captions"] == 2500
    assert all(0 <= result[k] <= 100 for k in METRIC_KEYS)
    assert result["tr1"] <= result["tr5"] <= result["tr10"] and result["ir1"] <= result["ir5"] <= result["ir10"]
