"""The one Typer app every command module attaches to.

Command modules keep heavy imports (numpy, pandas, onnxruntime, TensorFlow)
inside their functions so that ``mura-ens --help`` stays fast.
"""

import typer

app = typer.Typer(
    name="mura-ens",
    help="Abnormality detection on MURA-layout radiographs: data, training, ONNX export, scoring, ensembles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Abnormality detection on MURA-layout radiographs: data, training, ONNX export, scoring, ensembles."""
