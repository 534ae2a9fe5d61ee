"""Zero-shot classification: metric vs naive reference, prompt ensembling, and a run over an image folder."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mope_deploy.data.datasets import load_image_folder
from mope_deploy.eval.zeroshot import (TEMPLATES, class_embeddings, evaluate_zeroshot, naive_zeroshot_metrics,
                                       zeroshot_metrics)


def test_hand_made_case():
    classes = torch.eye(6)
    img = torch.tensor([
        [1.0, 0, 0, 0, 0, 0],           # label 0: rank 0
        [0.0, 0.5, 0.9, 0, 0, 0],        # label 1: class 2 above -> rank 1
        [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],  # label 4: five-way tie -> pessimistic rank 5 (misses top-5)
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 4: rank 4
    ])
    labels = [0, 1, 4, 4]
    m = zeroshot_metrics(img, classes, labels)
    assert m == {"top1": 25.0, "top5": 75.0}
    assert naive_zeroshot_metrics(img, classes, labels) == m


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_matches_naive_with_ties(chunk):
    g = torch.Generator().manual_seed(chunk)
    img = torch.randint(-1, 2, (50, 3), generator=g).float()
    cls = torch.randint(-1, 2, (9, 3), generator=g).float()
    y = torch.randint(0, 9, (50,), generator=g)
    ref = naive_zeroshot_metrics(img, cls, y, ks=(1, 3, 5))
    assert zeroshot_metrics(img, cls, y, ks=(1, 3, 5), chunk_size=chunk) == ref


def test_bad_inputs():
    with pytest.raises(ValueError, match="one label per image"):
        zeroshot_metrics(torch.randn(3, 4), torch.randn(2, 4), [0, 1])
    with pytest.raises(ValueError, match="outside"):
        zeroshot_metrics(torch.randn(2, 4), torch.randn(2, 4), [0, 2])


def test_class_embeddings_are_normalised_prompt_means(tiny_model):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    w = class_embeddings(tiny_model, ["cat", "dog"], templates)
    assert w.shape == (2, 32) and torch.allclose(w.norm(dim=-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        e = tiny_model.encode_text(tiny_model.tokenizer(["a photo of a dog.", "a drawing of a dog."]), normalize=True)
    ref = e.mean(0) / e.mean(0).norm()
    assert torch.allclose(w[1], ref, atol=1e-5)
    assert len(TEMPLATES) >= 10 and all("{}" in t for t in TEMPLATES)
    with pytest.raises(ValueError, match="template"):
        class_embeddings(tiny_model, ["cat"], ["no slot"])


def test_evaluate_zeroshot_on_image_folder(tiny_model, tmp_path):
    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    for name, rgb in colours.items():
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 40), tuple(c + 10 * i for c in rgb)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "red" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    ds = load_image_folder(tmp_path)
    result = evaluate_zeroshot(tiny_model, ds, templates=TEMPLATES[:3], batch_size=4, progress=False)
    assert result["n_images"] == 6 and result["n_classes"] == 3 and result["n_skipped"] == 1
    # independent reference: embeddings by hand, naive metric
    with torch.no_grad():
        img = tiny_model.encode_image(torch.stack([tiny_model.preprocess(im) for im in ds.images]), normalize=True)
    ref = naive_zeroshot_metrics(img, class_embeddings(tiny_model, ds.classnames, TEMPLATES[:3]), ds.labels)
    assert result["top1"] == pytest.approx(ref["top1"]) and result["top5"] == 100.0   # 3 classes: top-5 is all
