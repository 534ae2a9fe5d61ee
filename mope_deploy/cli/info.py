"""``mope info MODEL``: architecture, parameters and FLOPs per tower and block."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..models import load_config, model_stats
from .app import MODEL_HELP, app
from .common import console, user_errors


@app.command()
def info(
    model: str = typer.Argument(..., help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Show a model's shape: blocks, heads and FFN width per block, parameters, GFLOPs."""
    with user_errors():
        config = load_config(model)
    stats = model_stats(config)
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    for tower in ("vision", "text"):
        s = stats[tower]
        t = Table(title=f"{tower}: width {s['width']}, {s['depth']} blocks, {s['tokens']} tokens, "
                        f"{s['params'] / 1e6:.2f}M block params ({s['params_total'] / 1e6:.2f}M total), "
                        f"{s['gflops']:.3f} GFLOPs")
        for col in ("block", "from", "heads", "attn width", "FFN", "params (M)", "GFLOPs"):
            t.add_column(col, justify="right")
        for b in s["blocks"]:
            t.add_row(str(b["index"]), str(b["source"]), str(b["heads"]), str(b["attn_width"]), str(b["mlp"]),
                      f"{b['params'] / 1e6:.3f}", f"{b['gflops']:.3f}")
        console.print(t)
    console.print(f"[bold]total[/]: {stats['params'] / 1e6:.2f}M block params, "
                  f"{stats['params_total'] / 1e6:.2f}M params, {stats['gflops']:.2f} GFLOPs (one image + one text)")
