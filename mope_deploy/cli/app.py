"""``mope``: the typer app. Each command lives in its own small module and registers itself here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mope",
    help="Compress CLIP models with MoPE-CLIP and deploy them (ONNX, TensorRT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Compress CLIP models with MoPE-CLIP and deploy them (ONNX, TensorRT)."""


MODEL_HELP = "'demo', a saved model directory, or an open_clip name (ViT-L-14 or ViT-L-14:openai)."


def _register() -> None:
    from . import info  # noqa: F401  (commands register on import)
    from . import importance, prune  # noqa: F401
    from . import export  # noqa: F401
    from . import eval  # noqa: F401
    from . import compress  # noqa: F401
    from . import bench  # noqa: F401


def main() -> None:
    _register()
    app()
