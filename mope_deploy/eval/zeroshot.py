"""Zero-shot classification: class names x prompt templates -> text classifier -> top-1 / top-5 accuracy.

Each class's weight is the mean of its L2-normalised prompt embeddings, normalised again (CLIP's prompt
ensembling). Ties follow the retrieval rule: a wrong class scoring EQUAL to the true class ranks ahead of it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..progress import progress_bar
from .retrieval import EvalError, _model_device_dtype, _record_failures, iter_image_batches

# Our own prompt set, in the spirit of CLIP's ImageNet ensemble: photo styles, sizes, renderings.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image showing a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a cropped photo of the {}.",
    "a drawing of a {}.",
    "a painting of the {}.",
    "a sketch of a {}.",
    "a cartoon {}.",
    "a low resolution photo of a {}.",
    "a good photo of the {}.",
    "there is a {} in this picture.",
    "{}.",
)


def _check(img_emb: Tensor, class_emb: Tensor, labels: Tensor | Sequence[int]) -> Tensor:
    if img_emb.ndim != 2 or class_emb.ndim != 2 or img_emb.shape[1] != class_emb.shape[1]:
        raise EvalError(f"expected image embeddings [N, D] and class embeddings [C, D]; got "
                         f"{tuple(img_emb.shape)} and {tuple(class_emb.shape)}")
    y = torch.as_tensor(labels, dtype=torch.long).to(img_emb.device)
    if y.shape != (img_emb.shape[0],):
        raise EvalError(f"need one label per image ({img_emb.shape[0]}); got shape {tuple(y.shape)}")
    if img_emb.shape[0] == 0:
        raise EvalError("no images to classify")
    if int(y.min()) < 0 or int(y.max()) >= class_emb.shape[0]:
        raise EvalError(f"labels outside [0, {class_emb.shape[0]})")
    if not (torch.isfinite(img_emb).all() and torch.isfinite(class_emb).all()):
        raise EvalError("embeddings contain NaN or inf")
    return y


def _summary(rank: Tensor, ks: Sequence[int]) -> dict[str, float]:
    return {f"top{k}": 100.0 * float((rank < k).double().mean()) for k in ks}


@torch.no_grad()
def zeroshot_metrics(img_emb: Tensor, class_emb: Tensor, labels: Tensor | Sequence[int], ks: Sequence[int] = (1, 5),
                     chunk_size: int = 4096) -> dict[str, float]:
    """Top-k accuracy in percent (``top1``, ``top5``); with fewer than k classes top-k is 100 by definition."""
    y = _check(img_emb, class_emb, labels)
    cls = class_emb.float()
    rank = torch.empty_like(y)
    for s in range(0, y.shape[0], chunk_size):
        sim = img_emb[s:s + chunk_size].float() @ cls.T
        true = sim.gather(1, y[s:s + chunk_size].unsqueeze(1))
        rank[s:s + chunk_size] = (sim >= true).sum(1) - 1     # wrong classes at or above the true one
    return _summary(rank.cpu(), ks)


def naive_zeroshot_metrics(img_emb: Tensor, class_emb: Tensor, labels: Tensor | Sequence[int],
                           ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Reference for tests: sort classes per image (wrong classes first among equal scores)."""
    y = _check(img_emb, class_emb, labels).tolist()
    sim = (img_emb.double() @ class_emb.double().T).tolist()
    ranks = []
    for i, row in enumerate(sim):
        order = sorted(range(len(row)), key=lambda c: (-row[c], c == y[i]))
        ranks.append(order.index(y[i]))
    return _summary(torch.tensor(ranks), ks)


@torch.inference_mode()
def class_embeddings(model, classnames: Sequence[str], templates: Sequence[str] = TEMPLATES) -> Tensor:
    """``[C, D]`` normalised float32 classifier: per class, the mean of its normalised prompt embeddings."""
    if not classnames:
        raise EvalError("no class names")
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise EvalError(f"every prompt template needs a '{{}}' for the class name; bad: {bad[:3]}")
    device, _ = _model_device_dtype(model)
    tokenizer = model.tokenizer
    out = []
    for name in classnames:
        tok = tokenizer([t.format(name) for t in templates]).to(device)
        e = model.encode_text(tok, normalize=True).float().mean(0)
        out.append(e / e.norm())
    return torch.stack(out).cpu()


@torch.inference_mode()
def evaluate_zeroshot(model, dataset, templates: Sequence[str] = TEMPLATES, batch_size: int = 64,
                      device: str | torch.device | None = None, progress: bool = True,
                      num_workers: int = 0) -> dict[str, Any]:
    """Top-1/top-5 accuracy (percent) of ``model`` on a :class:`ClassificationDataset`, plus ``n_images``,
    ``n_classes`` and ``n_skipped``. Images that fail to decode are skipped and recorded in ``dataset.report``."""
    if device is not None:
        model = model.to(device)
    model.eval()
    dev, dtype = _model_device_dtype(model)
    classes = class_embeddings(model, dataset.classnames, templates)
    embs, labels = [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("classify images", total=len(dataset.images))
        for x, idx, bad in iter_image_batches(dataset, model.preprocess, batch_size, num_workers):
            _record_failures(dataset, bad)
            if x is not None:
                embs.append(model.encode_image(x.to(dev, dtype), normalize=True).float().cpu())
                labels.extend(dataset.labels[i] for i in idx)
            bar.advance(task, len(idx) + len(bad))
    if not embs:
        raise EvalError(f"dataset {dataset.name!r}: no image could be decoded. {dataset.report.summary()}")
    metrics: dict[str, Any] = zeroshot_metrics(torch.cat(embs), classes, labels)
    metrics.update(n_images=len(labels), n_classes=len(dataset.classnames), n_skipped=len(dataset.report))
    return metrics
