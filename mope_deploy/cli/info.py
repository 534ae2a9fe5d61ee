"""``mope info MODEL``: architecture, parameters and FLOPs per tower and block."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..models import load_config, model_stats
from ..vocab import TOWERS
from .common import MODEL_HELP, console, user_errors


def info(
    model: str = typer.Argument(..., help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Show a model's shape: blocks, heads and FFN width per block, parameters, GFLOPs."""
    with user_errors():
        config = load_config(model)
    stats = model_stats(config)
    sparse = None
    if config.sparsity:  # a sparsified model: measure its zeros (the weights are the truth, config says how)
        from ..models import load
        from ..sparsity import sparsity_report

        with user_errors():
            sparse = sparsity_report(load(model))
        stats["sparsity"] = {**sparse, "recorded": config.sparsity}
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    for tower in TOWERS:
        s = stats[tower]
        t = Table(title=f"{tower}: width {s['width']}, {s['depth']} blocks, {s['tokens']} tokens, "
                        f"{s['params'] / 1e6:.2f}M block params ({s['params_total'] / 1e6:.2f}M total), "
                        f"{s['gflops']:.3f} GFLOPs")
        if sparse is not None:
            st = sparse["towers"][tower]
            t.title += f", weight sparsity {st['sparsity']:.1%} ({st['pattern']})"
        for col in ("block", "from", "heads", "attn width", "FFN", "params (M)", "GFLOPs") + (
                ("zeros",) if sparse is not None else ()):
            t.add_column(col, justify="right")
        for i, b in enumerate(s["blocks"]):
            z = sparse["towers"][tower]["blocks"][i] if sparse is not None else None
            t.add_row(str(b["index"]), str(b["source"]), str(b["heads"]), str(b["attn_width"]), str(b["mlp"]),
                      f"{b['params'] / 1e6:.3f}", f"{b['gflops']:.3f}",
                      *(() if sparse is None else ("-" if z is None else f"{z:.1%}",)))
        console.print(t)
    console.print(f"[bold]total[/]: {stats['params'] / 1e6:.2f}M block params, "
                  f"{stats['params_total'] / 1e6:.2f}M params, {stats['gflops']:.2f} GFLOPs (one image + one text)")
    if sparse is not None:
        rec = config.sparsity
        console.print(f"[bold]weight sparsity[/]: {sparse['sparsity']:.1%} of block weights are zero, pattern "
                      f"{sparse['pattern']} (method {rec.get('method', '?')}"
                      f"{', recovered with ' + rec['recovered']['method'] if rec.get('recovered') else ''}); "
                      "params and GFLOPs above count the zeros: dense kernels do not skip them")
