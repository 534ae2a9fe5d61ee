"""``mope``: the typer app. Each command is a plain function in its own small module; this module registers
them (commands never import the app, so importing a command module has no side effect).

A new command: write ``def my_command(...)`` in ``cli/my_command.py`` (typer options as defaults, the work
done by library calls inside ``with user_errors():``), then add one ``app.command(...)(...)`` line below.
"""

from __future__ import annotations

import typer

from . import bench, compress, eval as eval_cmd, export, importance, info, prune
from . import sparsify
from . import index, serve
from . import plan
from .common import install_notices, set_debug

app = typer.Typer(
    name="mope",
    help="Compress CLIP models with MoPE-CLIP and deploy them (ONNX, TensorRT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of every error.")) -> None:
    """Compress CLIP models with MoPE-CLIP and deploy them (ONNX, TensorRT)."""
    set_debug(debug)
    install_notices()


app.command("info")(info.info)
app.command("importance")(importance.importance)
app.command("prune")(prune.prune)
app.command("export")(export.export)
app.command("eval")(eval_cmd.eval_cmd)
app.command("compress")(compress.compress)
app.command("bench")(bench.bench)
app.command("sparsify")(sparsify.sparsify)
app.command("index")(index.index)
app.command("serve")(serve.serve)
app.command("plan")(plan.plan)


def main() -> None:
    app()
