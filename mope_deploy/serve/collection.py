"""What `mope index` embeds: a collection of images (ids, captions, where each image lives) and the embedding of
a range of it (shared by the local build and the Ray Data workers)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_file, fsync_dir
from ..data.datasets import IMAGE_EXTS, DataReport, DatasetError, ImageFiles, TarImages


@dataclass
class Collection:
    """Images to index: a sequence of PIL images, an id per image, captions per image, where each image lives."""

    name: str
    images: Sequence[Any]
    ids: list[str]
    captions: list[list[str]]
    report: DataReport = field(default_factory=DataReport)

    def source(self, i: int) -> dict[str, Any]:
        """Where image ``i``'s bytes are: a file, a tar member, or nowhere (in memory: the index stores it)."""
        if isinstance(self.images, ImageFiles):
            return {"type": "file", "path": str(Path(self.images.paths[i]).resolve())}
        if isinstance(self.images, TarImages):
            path, offset, size, name = self.images.members[i]
            return {"type": "tar", "path": str(Path(path).resolve()), "offset": offset, "size": size, "member": name}
        return {"type": "memory"}


def load_collection(spec: str | Path, split: str = "test", image_root: str | Path | None = None,
                    **csv_options: Any) -> Collection:
    """Any dataset :func:`~mope_deploy.data.datasets.load_dataset` reads, or a folder of images (searched
    recursively; no captions)."""
    from ..data.datasets import _header_check, load_dataset

    p = Path(str(spec))
    plain_folder = (p.is_dir() and not any((p / n).is_file() for n in ("captions.csv", "captions.tsv", "captions.txt"))
                    and not any(p.glob("*.tar")))
    if plain_folder:
        report = DataReport()
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        ok = []
        for f in files:
            good, reason = _header_check(f)
            if good:
                ok.append(f)
            else:
                report.add(reason, str(f.relative_to(p)))
        if not ok:
            raise DatasetError(f"{p}: no readable images (extensions {', '.join(IMAGE_EXTS)}). {report.summary()}")
        return Collection(p.name, ImageFiles(ok), [str(f.relative_to(p)) for f in ok], [[] for _ in ok], report)
    ds = load_dataset(spec, split=split, image_root=image_root, **csv_options)
    names = ds.image_names or [str(i) for i in range(ds.n_images)]
    caps = [[ds.captions[c] for c in cs] for cs in ds.img2txt()]
    return Collection(ds.name, ds.images, list(names), caps, ds.report)


def encode_png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def embed_chunk(encoder, collection: Collection, start: int, stop: int, batch_size: int = 64,
                store_dir: Path | None = None) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Embeddings of images ``[start, stop)`` that decode, their positions, and ``(position, error)`` of the rest.
    In-memory images are written as PNGs to ``store_dir`` (the index keeps them); a failed write is raised, not
    counted as a bad image."""
    pixels, kept, bad, parts = [], [], [], []

    def flush():
        if pixels:
            parts.append(encoder.run_images(np.stack(pixels)))
            pixels.clear()

    for i in range(start, stop):
        try:
            im = collection.images[i]
            if getattr(im, "mode", "RGB") != "RGB":
                im = im.convert("RGB")
            x = np.asarray(encoder.preprocess(im), dtype=np.float32)
            png = encode_png(im) if store_dir is not None and collection.source(i)["type"] == "memory" else None
        except Exception as e:  # noqa: BLE001  (a bad image is counted and skipped, never fatal)
            bad.append((i, f"{type(e).__name__}: {e}"))
            continue
        if png is not None:
            store_dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(store_dir / f"{i}.png", sync_dir=False) as f:   # the folder once, below
                f.write(png)
        pixels.append(x)
        kept.append(i)
        if len(pixels) >= batch_size:
            flush()
    flush()
    if store_dir is not None and store_dir.is_dir():
        fsync_dir(store_dir)                  # the chunk's PNGs are durable before the chunk is committed
    from ..runtime import l2_normalize

    emb = l2_normalize(np.concatenate(parts)) if parts else np.zeros((0, encoder.config.embed_dim), np.float32)
    return emb, kept, bad


def embed_captions(encoder, texts: list[str], batch_size: int = 256) -> np.ndarray:
    return encoder.encode_texts(texts, batch_size=batch_size) if texts else \
        np.zeros((0, encoder.config.embed_dim), np.float32)


__all__ = ["Collection", "DatasetError", "load_collection", "embed_chunk", "embed_captions", "encode_png"]
