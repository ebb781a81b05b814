"""Progress lines for long library work (training, the demo): one place that writes to stderr.

Results go to stdout from the CLI only; library code reports progress through :func:`echo`
so that a caller can tell progress from results and tests can capture it with ``capsys``.
"""

from __future__ import annotations

import sys


def echo(message: str) -> None:
    """Write one progress line to stderr and flush it (progress must show while work runs)."""
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()
