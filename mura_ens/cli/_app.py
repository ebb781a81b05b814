"""The one Typer app every command module attaches to.

Command modules keep heavy imports (numpy, pandas, onnxruntime, TensorFlow)
inside their functions so that ``mura-ens --help`` stays fast.
"""

import sys

import typer

app = typer.Typer(
    name="mura-ens",
    help="Abnormality detection on MURA-layout radiographs: data, training, ONNX export, scoring, ensembles.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _paths_printable() -> None:
    """Let stdout print file names that are not valid UTF-8 (their bytes, as ``ls`` does) instead of crashing.

    Python holds such names with surrogate escapes (PEP 383); a strict stdout
    would raise ``UnicodeEncodeError`` on ``wrote <path>``. stderr already
    uses ``backslashreplace``.
    """
    stream = sys.stdout
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None and getattr(stream, "errors", "strict") == "strict":
        try:
            reconfigure(errors="surrogateescape")
        except (ValueError, OSError):  # pragma: no cover - a stream that cannot change
            pass


#: Distributions named by ``mura-ens --version`` after mura-ens itself: (label, distribution names tried in order).
VERSION_DISTRIBUTIONS = (
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    ("tensorflow", ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly")),
)


def version_lines() -> list[str]:
    """``mura-ens X``, ``onnxruntime Y``, ``tensorflow Z`` (or why not), ``python V``: from package metadata,
    importing none of them."""
    import platform
    from importlib import metadata

    from .. import __version__

    def installed(names: tuple[str, ...]) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    lines = [f"mura-ens {__version__}"]
    for label, names in VERSION_DISTRIBUTIONS:
        found = installed(names)
        if found is None and label == "tensorflow":
            lines.append("tensorflow not installed (training and export: pip install 'mura-ens[train]')")
        else:
            lines.append(f"{label} {found or 'not installed'}")
    lines.append(f"python {platform.python_version()}")
    return lines


def _print_version(value: bool) -> None:
    if value:
        for line in version_lines():
            typer.echo(line)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the versions of mura-ens, onnxruntime, TensorFlow (when installed) and Python, and exit.",
    ),
) -> None:
    """Abnormality detection on MURA-layout radiographs: data, training, ONNX export, scoring, ensembles."""
    _paths_printable()
