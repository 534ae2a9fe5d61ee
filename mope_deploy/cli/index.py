"""``mope index DATA --model MODEL --out INDEX``: bulk-embed a dataset into a FAISS retrieval index."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import MODEL_HELP, console, err_console, user_errors

BACKEND_HELP = ("An encoder backend of the runtime registry: onnxruntime, onnxruntime-int8, torch, tensorrt, ... "
                "(default: onnxruntime for an export bundle, torch for a model).")

DATA_HELP = ("'synthetic[:SPLIT]', a CSV/TSV (or a folder with captions.csv), a Karpathy JSON, WebDataset shards "
             "('shards/{000..009}.tar'), or a folder of images.")


def index(
    data: str = typer.Argument(..., help=DATA_HELP),
    model: str = typer.Option(..., "--model", "-m", help="Export bundle directory, or " + MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory (written atomically)."),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP),
    split: str = typer.Option("test", "--split",
                              help="Split of a Karpathy JSON, a CSV with a split column, or synthetic."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Folder image paths are relative to."),
    captions: bool = typer.Option(True, "--captions/--no-captions",
                                  help="Also index the captions (image->text search)."),
    kind: str = typer.Option("auto", "--kind", help="exact (FAISS flat inner product) | hnsw | auto (hnsw from "
                                                    "100k images; its recall@10 vs exact is measured and stored)."),
    chunk_size: int = typer.Option(1024, "--chunk-size", min=1, help="Images per committed chunk (resume unit)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Encoder intra-op threads."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index at --out."),
    use_ray: bool = typer.Option(False, "--ray", help="Embed images on Ray Data (map_batches over actors)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start a local Ray)."),
    ray_workers: int = typer.Option(2, "--ray-workers", min=1, help="Ray Data encoder actors."),
    img_key: Optional[str] = typer.Option(None, "--csv-img-key", help="CSV column with image paths."),
    caption_key: Optional[str] = typer.Option(None, "--csv-caption-key", help="CSV column with captions."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Embed every image (and caption) of DATA with MODEL into a FAISS index; a killed run resumes."""
    from ..runtime import check_backend, open_encoder
    from ..serve.build import build_index, check_out, load_collection, partial_dir
    from ..serve.index import model_fingerprint
    from ..serve.server import default_backend

    with user_errors():
        backend = backend or default_backend(model)
        check_backend(backend)
        check_out(out, overwrite)
        opts = {k: v for k, v in (("img_key", img_key), ("caption_key", caption_key)) if v is not None}
        load_options = {"split": split, "image_root": str(image_root) if image_root else None, **opts}
        collection = load_collection(data, **load_options)
        console.print(f"[dim]·[/] {collection.name}: {len(collection.images)} images"
                      + (f" ({len(collection.report)} skipped while loading)" if len(collection.report) else ""))
        encoder = open_encoder(model, backend, threads=threads)
        chunk_fn = None
        if use_ray:
            from ..serve.ray_scale import ray_chunk_fn, require_ray
            ray = require_ray()
            ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
            chunk_fn = ray_chunk_fn(model, backend, data, load_options, partial_dir(out) / "images",
                                    batch_size=batch_size, concurrency=ray_workers, threads=threads or 1)
        meta = build_index(collection, encoder, out, fingerprint=model_fingerprint(model), data_spec=data,
                           captions=captions, kind=kind, chunk_size=chunk_size, batch_size=batch_size,
                           overwrite=overwrite, progress=not quiet, chunk_fn=chunk_fn,
                           log=lambda msg: console.print(f"[dim]·[/] {msg}"))
    skipped = meta["skipped"]
    if skipped["n_skipped"]:
        err_console.print(f"[yellow]skipped {skipped['n_skipped']} image(s): {skipped['counts']}[/]", highlight=False)
    line = f"[green]indexed[/] {meta['n_items']} images, {meta['n_captions']} captions -> {out} ({meta['kind']}"
    if meta.get("approx_recall_at_10") is not None:
        line += f", recall@10 vs exact {meta['approx_recall_at_10']:.4f}"
    console.print(line + ")")
