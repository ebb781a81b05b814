"""Entry point of the ``mura-ens`` console script."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from ..constants import DEBUG_ENV
from ..errors import ManifestError, RunFailed, Terminated, UsageError

# Importing a command module registers its command on ``app``.
from . import compare, demo, evaluate, explain_eval, export, fit_ensemble, manifest, plugins, score, synth, train  # noqa: F401
from ._app import app, interrupted_line


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`~mura_ens.errors.Terminated` (a ``KeyboardInterrupt``) in the main
    thread, so a scheduler's or ``docker stop``'s SIGTERM cleans up like Ctrl-C; the old handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while cleaning up ends the process
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted_line(exc: KeyboardInterrupt) -> str:
    """One line for an interrupt that reached ``main`` (the commands print their own, with what was kept)."""
    return interrupted_line(exc, "; ".join(getattr(exc, "__notes__", None) or []))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2; Ctrl-C and SIGTERM exit 130."""
    try:
        with _sigterm_as_interrupt():
            return _run(argv)
    except KeyboardInterrupt as exc:  # SIGTERM right before or after the handler's block
        print(_interrupted_line(exc), file=sys.stderr)
        return 130


def _run(argv: list[str] | None) -> int:
    try:
        app(args=argv, prog_name="mura-ens", standalone_mode=True)
    except SystemExit as exc:  # click's normal exit path
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except ManifestError as exc:
        if _debug():
            raise
        print(f"mura-ens: error: invalid manifest {exc.source}", file=sys.stderr)
        for line in exc.problems[:20]:
            print(f"mura-ens: error: {line}", file=sys.stderr)
        if len(exc.problems) > 20:
            print(f"mura-ens: error: ... and {len(exc.problems) - 20} more problems", file=sys.stderr)
        return 2
    except UsageError as exc:
        if _debug():
            raise
        print(f"mura-ens: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        if _debug():
            raise
        print(f"mura-ens: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(_interrupted_line(exc), file=sys.stderr)
        return 130
    except OSError as exc:  # a full, read-only or forbidden disk met outside the commands' own checks
        from ..io import disk_error_line

        said = disk_error_line(exc)
        if said is None or _debug():
            raise
        print(f"mura-ens: error: {said}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
