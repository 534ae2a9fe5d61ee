"""Shared helpers for the exporter tests (tiny models, a small caption dataset, ORT runs)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from mope_deploy.models import SlimCLIP
from mope_deploy.models.tiny import tiny_config


def ort_run(path, x) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy() if isinstance(x, torch.Tensor) else x})[0]


def tiny(seed: int = 0, **overrides) -> SlimCLIP:
    torch.manual_seed(seed)
    return SlimCLIP(tiny_config(**overrides)).eval()


CANDIDATES = [f"a {c} {a} {o}" for c in ("red", "blue", "green", "small", "large", "old")
              for a in ("dog", "car", "house", "tree", "boat", "bird") for o in ("at night", "in the snow", "")]


@torch.no_grad()
def matched_dataset(model: SlimCLIP, root: Path, n_images: int = 12, seed: int = 0) -> Path:
    """A caption CSV + noise images where each image's caption is the candidate ``model`` ranks best for it,
    so the fp32 model retrieves well above chance and a broken variant visibly does not."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    size = model.config.vision.image_size
    names = []
    for i in range(n_images):
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        name = f"img{i:03d}.png"
        Image.fromarray(arr).save(root / "images" / name)
        names.append(name)
    pre = model.preprocess
    imgs = torch.stack([pre(Image.open(root / "images" / n).convert("RGB")) for n in names])
    img = torch.nn.functional.normalize(model.encode_image(imgs), dim=-1)
    txt = torch.nn.functional.normalize(model.encode_text(model.tokenizer(CANDIDATES)), dim=-1)
    sim = img @ txt.T
    used: set[int] = set()
    rows = []
    for i in range(n_images):  # greedy: the best caption not yet taken
        order = sim[i].argsort(descending=True).tolist()
        c = next(c for c in order if c not in used)
        used.add(c)
        rows.append((names[i], CANDIDATES[c]))
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return root
