"""Entry point of the ``mura-ens`` console script."""

from __future__ import annotations

import os
import sys

from ..constants import DEBUG_ENV
from ..errors import ManifestError, RunFailed, UsageError

# Importing a command module registers its command on ``app``.
from . import compare, demo, evaluate, export, fit_ensemble, manifest, plugins, score, synth, train  # noqa: F401
from ._app import app


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2."""
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
    except KeyboardInterrupt:
        print("mura-ens: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
