"""Image-text retrieval: TR@k / IR@k / Recall Mean, chunked so large test sets fit in memory.

Protocol (Karpathy 5k COCO / 1k Flickr30K): one row of ``img_emb`` per image, one row of ``txt_emb`` per
caption, ``txt2img[c]`` the image of caption ``c``. Text retrieval (TR, image -> text) finds an image at
``k`` when ANY of its captions ranks within the top ``k`` captions; image retrieval (IR, text -> image)
finds a caption at ``k`` when its image ranks within the top ``k`` images. Recall Mean is the mean of the six.

Ties are broken pessimistically: a wrong item whose score EQUALS the best correct score ranks ahead of it.
The rule is deterministic, independent of item order, and makes a collapsed model (all embeddings equal)
score ~0 instead of an order-dependent accident. The rank of the best correct item is therefore
``#{wrong items with score >= best correct score}`` and it is found at ``k`` when that count is ``< k``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..errors import MopeError
from ..progress import progress_bar


class EvalError(MopeError, ValueError):
    """Evaluation inputs that cannot be scored (nothing decodable, mismatched sizes)."""


KS = (1, 5, 10)
METRIC_KEYS = ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10", "recall_mean", "tr_mean", "ir_mean")


def _check(img_emb: Tensor, txt_emb: Tensor, txt2img: Tensor | Sequence[int]) -> Tensor:
    if img_emb.ndim != 2 or txt_emb.ndim != 2:
        raise EvalError(f"embeddings must be 2-D [N, D] and [M, D]; got {tuple(img_emb.shape)} and "
                         f"{tuple(txt_emb.shape)}")
    if img_emb.shape[1] != txt_emb.shape[1]:
        raise EvalError(f"image and text embeddings have different widths ({img_emb.shape[1]} vs "
                         f"{txt_emb.shape[1]}); both must come from the same model")
    n, m = img_emb.shape[0], txt_emb.shape[0]
    if n == 0 or m == 0:
        raise EvalError(f"nothing to evaluate: {n} images and {m} captions")
    t2i = torch.as_tensor(txt2img, dtype=torch.long).to(img_emb.device)
    if t2i.shape != (m,):
        raise EvalError(f"txt2img must hold one image index per caption ({m}); got shape {tuple(t2i.shape)}")
    if int(t2i.min()) < 0 or int(t2i.max()) >= n:
        raise EvalError(f"txt2img has image indices outside [0, {n}): min {int(t2i.min())}, max {int(t2i.max())}")
    counts = torch.bincount(t2i, minlength=n)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise EvalError(f"{int((counts == 0).sum())} image(s) have no caption (first: {missing}); drop images "
                         "without captions before evaluating retrieval")
    if not (torch.isfinite(img_emb).all() and torch.isfinite(txt_emb).all()):
        raise EvalError("embeddings contain NaN or inf; the model produced invalid outputs (check its weights "
                         "and input dtype)")
    return t2i


def _summary(tr_rank: Tensor, ir_rank: Tensor) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in KS:
        out[f"tr{k}"] = 100.0 * float((tr_rank < k).double().mean())
    for k in KS:
        out[f"ir{k}"] = 100.0 * float((ir_rank < k).double().mean())
    out["tr_mean"] = sum(out[f"tr{k}"] for k in KS) / len(KS)
    out["ir_mean"] = sum(out[f"ir{k}"] for k in KS) / len(KS)
    out["recall_mean"] = (out["tr_mean"] + out["ir_mean"]) / 2
    return {k: out[k] for k in METRIC_KEYS}


@torch.no_grad()
def retrieval_ranks(img_emb: Tensor, txt_emb: Tensor, txt2img: Tensor | Sequence[int],
                    chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """0-based rank of the best correct caption per image (TR) and of the correct image per caption (IR).

    Peak extra memory is about ``chunk_size * max(N, M) * 6`` bytes (a float32 score block plus masks).
    """
    if chunk_size < 1:
        raise EvalError(f"chunk_size must be >= 1, got {chunk_size}")
    t2i = _check(img_emb, txt_emb, txt2img)
    img = img_emb.float()
    txt = txt_emb.float()
    n, m = img.shape[0], txt.shape[0]

    tr_rank = torch.empty(n, dtype=torch.long, device=img.device)
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        sim = img[s:e] @ txt.T                                              # [B, M]
        own = t2i.unsqueeze(0) == torch.arange(s, e, device=img.device).unsqueeze(1)
        best = sim.masked_fill(~own, float("-inf")).amax(dim=1, keepdim=True)
        tr_rank[s:e] = ((sim >= best) & ~own).sum(dim=1)
        del sim, own

    ir_rank = torch.empty(m, dtype=torch.long, device=img.device)
    for s in range(0, m, chunk_size):
        e = min(s + chunk_size, m)
        sim = txt[s:e] @ img.T                                              # [B, N]
        gt = sim.gather(1, t2i[s:e].unsqueeze(1))
        # the correct image always satisfies >= itself; every other hit is a wrong image at or above it
        ir_rank[s:e] = (sim >= gt).sum(dim=1) - 1
        del sim
    return tr_rank.cpu(), ir_rank.cpu()


def retrieval_metrics(img_emb: Tensor, txt_emb: Tensor, txt2img: Tensor | Sequence[int],
                      chunk_size: int = 1024) -> dict[str, float]:
    """TR@1/5/10, IR@1/5/10 and their means, in percent (embeddings assumed L2-normalised; any dot
    product works since only ranks matter). Keys: ``tr1 tr5 tr10 ir1 ir5 ir10 recall_mean tr_mean ir_mean``."""
    tr_rank, ir_rank = retrieval_ranks(img_emb, txt_emb, txt2img, chunk_size)
    return _summary(tr_rank, ir_rank)


def naive_retrieval_metrics(img_emb: Tensor, txt_emb: Tensor, txt2img: Tensor | Sequence[int]) -> dict[str, float]:
    """Reference implementation for tests: full score matrix, explicit sorting, Python loops.

    Sorts each list by score descending with wrong items first among equal scores (the documented tie rule)
    and reads off the position of the first correct item.
    """
    t2i = [int(i) for i in _check(img_emb, txt_emb, txt2img).tolist()]
    sim = (img_emb.double() @ txt_emb.double().T).tolist()
    n, m = len(sim), len(t2i)
    tr_rank = []
    for i in range(n):
        order = sorted(range(m), key=lambda c: (-sim[i][c], t2i[c] == i))
        tr_rank.append(next(pos for pos, c in enumerate(order) if t2i[c] == i))
    ir_rank = []
    for c in range(m):
        order = sorted(range(n), key=lambda i: (-sim[i][c], i == t2i[c]))
        ir_rank.append(order.index(t2i[c]))
    return _summary(torch.tensor(tr_rank), torch.tensor(ir_rank))


# ---------------------------------------------------------------------------------------------------------
# From a model and a dataset to embeddings and metrics.


class _Preprocessed(torch.utils.data.Dataset):
    """Images -> (tensor | None, index, error); a failing image is reported, never raised."""

    def __init__(self, images: Sequence[Any], preprocess: Callable):
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            img = self.images[i]
            if getattr(img, "mode", "RGB") != "RGB":
                img = img.convert("RGB")
            return self.preprocess(img), i, None
        except Exception as e:  # noqa: BLE001  (bad data must never crash a run; it is recorded instead)
            return None, i, f"{type(e).__name__}: {e}"


def _collate(items):
    ok = [(x, i) for x, i, err in items if err is None]
    bad = [(i, err) for _, i, err in items if err is not None]
    x = torch.stack([t for t, _ in ok]) if ok else None
    return x, [i for _, i in ok], bad


def iter_image_batches(dataset, preprocess: Callable, batch_size: int = 64, num_workers: int = 0
                       ) -> Iterator[tuple[Tensor | None, list[int], list[tuple[int, str]]]]:
    """Yield ``(pixels [b,3,S,S] or None, image indices, [(index, error)])`` over ``dataset.images``."""
    loader = torch.utils.data.DataLoader(_Preprocessed(dataset.images, preprocess), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_collate, shuffle=False)
    yield from loader


def _map_images(dataset, preprocess: Callable, batch_size: int, num_workers: int, bar, label: str,
                fn: Callable[[Tensor], Tensor]) -> tuple[list[Tensor], list[int]]:
    """``fn`` over every decodable image batch (failures recorded in the dataset report) and the kept indices."""
    parts, kept = [], []
    task = bar.add_task(label, total=len(dataset.images))
    for x, idx, bad in iter_image_batches(dataset, preprocess, batch_size, num_workers):
        _record_failures(dataset, bad)
        if x is not None:
            parts.append(fn(x))
            kept.extend(idx)
        bar.advance(task, len(idx) + len(bad))
    return parts, kept


def _record_failures(dataset, bad: list[tuple[int, str]]) -> None:
    names = getattr(dataset, "image_names", None)
    seen = {s["item"] for s in dataset.report.skipped if s["reason"] == "unreadable image"}
    for i, err in bad:
        label = names[i] if names is not None and i < len(names) else f"image #{i}"
        item = f"{label} ({err})"
        if item not in seen:                # evaluating the same dataset twice must not count a bad image twice
            dataset.report.add("unreadable image", item)


def _remap(dataset, kept: list[int]) -> tuple[list[int], list[int]]:
    """Captions whose image survived and their image index among the kept images."""
    new_index = {old: new for new, old in enumerate(kept)}
    caps, t2i = [], []
    for c, i in enumerate(dataset.txt2img):
        if i in new_index:
            caps.append(c)
            t2i.append(new_index[i])
    if not kept or not caps:
        raise EvalError(f"dataset {dataset.name!r}: no image could be decoded, nothing left to evaluate. "
                         f"{dataset.report.summary()}")
    return caps, t2i


def _tokenize(tokenizer: Callable, captions: list[str], batch_size: int = 1024) -> Tensor:
    parts = [tokenizer(captions[s:s + batch_size]) for s in range(0, len(captions), batch_size)]
    return torch.cat(parts).long()


def encode_inputs(model, dataset, batch_size: int = 64, num_workers: int = 0, progress: bool = False
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Model inputs for the whole dataset, computed once with the model's own preprocess and tokenizer.

    Returns ``(images [N,3,S,S] float32, tokens [M,ctx] long, txt2img [M] long)``. Images that fail to decode
    are dropped with their captions and recorded in ``dataset.report``. Holds every image in memory
    (N*3*S*S*4 bytes); use :func:`evaluate` to stream large sets.
    """
    preprocess, tokenizer = model.preprocess, model.tokenizer
    with progress_bar(progress) as bar:
        chunks, kept = _map_images(dataset, preprocess, batch_size, num_workers, bar, "preprocess images",
                                   lambda x: x)
    caps, t2i = _remap(dataset, kept)
    tokens = _tokenize(tokenizer, [dataset.captions[c] for c in caps])
    return torch.cat(chunks).float(), tokens, torch.tensor(t2i, dtype=torch.long)


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@torch.inference_mode()
def embed(model, images: Tensor, tokens: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """L2-normalised float32 embeddings (on CPU) of pre-built inputs, in batches, on the model's device."""
    device, dtype = _model_device_dtype(model)
    img = [model.encode_image(images[s:s + batch_size].to(device, dtype), normalize=True).float().cpu()
           for s in range(0, images.shape[0], batch_size)]
    txt = [model.encode_text(tokens[s:s + batch_size].to(device), normalize=True).float().cpu()
           for s in range(0, tokens.shape[0], batch_size)]
    return torch.cat(img), torch.cat(txt)


@torch.inference_mode()
def evaluate(model, dataset, batch_size: int = 64, device: str | torch.device | None = None,
             progress: bool = True, num_workers: int = 0, chunk_size: int = 1024) -> dict[str, Any]:
    """Retrieval metrics of ``model`` on ``dataset`` (streamed: images are preprocessed and encoded batch by
    batch). ``device=None`` keeps the model where it is; otherwise the model is moved there.

    Returns the :func:`retrieval_metrics` keys plus ``n_images``, ``n_captions`` (evaluated) and ``n_skipped``
    (items skipped while loading or decoding; details in ``dataset.report``).
    """
    if device is not None:
        model = model.to(device)
    model.eval()
    dev, dtype = _model_device_dtype(model)
    preprocess, tokenizer = model.preprocess, model.tokenizer
    with progress_bar(progress) as bar:
        img_parts, kept = _map_images(dataset, preprocess, batch_size, num_workers, bar, "encode images",
                                      lambda x: model.encode_image(x.to(dev, dtype), normalize=True).float().cpu())
        caps, t2i = _remap(dataset, kept)
        task = bar.add_task("encode captions", total=len(caps))
        txt_parts = []
        for s in range(0, len(caps), batch_size):
            batch = [dataset.captions[c] for c in caps[s:s + batch_size]]
            txt_parts.append(model.encode_text(tokenizer(batch).to(dev), normalize=True).float().cpu())
            bar.advance(task, len(batch))
    img_emb, txt_emb = torch.cat(img_parts), torch.cat(txt_parts)
    metrics: dict[str, Any] = retrieval_metrics(img_emb, txt_emb, torch.tensor(t2i), chunk_size=chunk_size)
    metrics.update(n_images=int(img_emb.shape[0]), n_captions=int(txt_emb.shape[0]),
                   n_skipped=len(dataset.report))
    return metrics
