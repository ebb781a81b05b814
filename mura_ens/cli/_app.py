"""The one Typer app every command module attaches to.

Command modules keep heavy imports (numpy, pandas, onnxruntime, TensorFlow)
inside their functions so that ``mura-ens --help`` stays fast.
"""

import contextlib
import sys
from collections.abc import Iterator

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
    from ..console import install_warning_lines

    install_warning_lines()  # every warning one "mura-ens: warning: ..." line, no file:line (console.py)


def interrupted_line(exc: BaseException, kept: str = "") -> str:
    """``mura-ens: interrupted (SIGTERM): <what was kept and how to go on>``: the one line a command prints when
    Ctrl-C or SIGTERM (:class:`~mura_ens.errors.Terminated`) stops it; Typer then exits with code 130."""
    from ..errors import Terminated

    cause = " (SIGTERM)" if isinstance(exc, Terminated) else ""
    return f"mura-ens: interrupted{cause}" + (f": {kept}" if kept else "")


@contextlib.contextmanager
def said_when_interrupted(kept: str) -> Iterator[None]:
    """Inside the block, Ctrl-C or SIGTERM prints :func:`interrupted_line` with ``kept`` (what was kept and how to go
    on) on stderr, then goes on as a ``KeyboardInterrupt`` (Typer exits with code 130)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        print(interrupted_line(exc, kept), file=sys.stderr)
        raise
