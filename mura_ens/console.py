"""Progress lines and warnings for long library work (training, the demo): one place that writes to stderr.

Results go to stdout from the CLI only; library code reports progress through :func:`echo`
so that a caller can tell progress from results and tests can capture it with ``capsys``.

Warnings reach the user as one line each, ``mura-ens: warning: <message>`` (:func:`warning_line`):
the CLI installs the formatter for the whole process (:func:`install_warning_lines`), the Python
API for the duration of each call (:func:`warnings_as_lines`). No file name, line number or
source line is shown; a third-party warning is prefixed by its package and stripped of raw
identifiers (DICOM UIDs, long hexadecimal strings), which may be patient data.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

#: The prefix of every warning line the toolkit prints.
WARNING_PREFIX = "mura-ens: warning: "
#: Raw identifiers removed from third-party warnings: DICOM UIDs (dotted digits) and long hex strings.
_RAW_IDS = re.compile(r"\b\d+(?:\.\d+){3,}\b|\b[0-9a-fA-F]{16,}\b")
_PACKAGE_ROOT = Path(__file__).resolve().parent
_F = TypeVar("_F", bound=Callable[..., Any])


def echo(message: str) -> None:
    """Write one progress line to stderr and flush it (progress must show while work runs)."""
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()


def interactive() -> bool:
    """Whether progress bars can be drawn: stderr is a terminal, or this runs in a Jupyter kernel."""
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None)
    return get_ipython is not None and type(get_ipython()).__name__ == "ZMQInteractiveShell"


def _source_package(category: type, filename: str) -> str | None:
    """``None`` for the toolkit's own warnings, else the top-level package that warned (e.g. ``pydicom``)."""
    module = getattr(category, "__module__", "") or ""
    if module.startswith("mura_ens"):  # the core and the plugins (mura_ens_densenet201, ...)
        return None
    path = Path(filename or "")
    try:
        path.resolve().relative_to(_PACKAGE_ROOT)
        return None
    except (ValueError, OSError):
        pass
    parts = path.parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts and parts.index(anchor) + 1 < len(parts):
            return parts[parts.index(anchor) + 1].removesuffix(".py")
    top = module.split(".")[0]
    return None if top in ("", "builtins", "__main__") else top


def warning_line(message: Warning | str, category: type = UserWarning, filename: str = "") -> str:
    """The one line a warning is shown as: ``mura-ens: warning: [package: ]first line of the message``."""
    lines = str(message).strip().splitlines() or [""]
    text = lines[0].strip()
    package = _source_package(category, filename)
    if package is None:
        return f"{WARNING_PREFIX}{text}"
    return f"{WARNING_PREFIX}{package}: {_RAW_IDS.sub('<id>', text)}"


#: Third-party warning lines already shown: the same line (e.g. pydicom's, once its identifiers are masked) once.
_SHOWN: set[str] = set()


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    stream = file if file is not None else sys.stderr
    text = warning_line(message, category, filename)
    if _source_package(category, filename) is not None:
        if text in _SHOWN:
            return
        _SHOWN.add(text)
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):  # a closed stream: a warning never breaks the work
        pass


def install_warning_lines() -> None:
    """Show every warning of this process as one :func:`warning_line` (what the ``mura-ens`` CLI does)."""
    _SHOWN.clear()
    warnings.showwarning = _show


def _shown_as_python_does() -> bool:
    """Whether warnings would be printed by Python's own formatter: not recorded (``catch_warnings(record=True)``,
    pytest), not already redirected (the CLI, a caller's own ``showwarning``)."""
    original = getattr(warnings, "_showwarning_orig", None)
    impl = getattr(warnings, "_showwarnmsg_impl", None)
    recording = impl is not None and not inspect.isfunction(impl)  # a list's append
    return warnings.showwarning is original and not recording


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Inside the block, show warnings as one :func:`warning_line` each (restored afterwards).

    A caller that records warnings or shows them its own way keeps doing so."""
    with warnings.catch_warnings():
        if _shown_as_python_does():
            warnings.showwarning = _show
        yield


def one_line_warnings(function: _F) -> _F:
    """Decorator: run ``function`` inside :func:`warnings_as_lines` (the public API functions)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings_as_lines():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
