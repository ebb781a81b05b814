"""Test-only: make every scoring batch take longer, from outside the production code.

Both ways in wrap the function a backend calls once per batch:

- as a launcher, ``python tests/slow_batches.py SECONDS score ...`` runs the ``mura-ens``
  CLI with a pause after the local backend infers each batch
  (``mura_ens.scoring.backends.infer_batch``), so that a test can kill a run of a few
  dozen tiny images mid-way (tests/test_scoring_resume.py);
- as a Dask worker preload, ``dask worker --preload tests/slow_batches.py``, it wraps what
  ``run_batch`` calls on the worker (``mura_ens.scoring.dask_backend.score_batch``), so
  that a test can kill a worker while it is scoring a batch (tests/test_scoring_dask.py).
"""

from __future__ import annotations

import functools
import sys
import time

#: Pause per batch of a Dask worker started with this preload.
WORKER_DELAY_S = 0.2


def slowed(function, seconds: float):
    """``function`` followed by a pause of ``seconds``."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        time.sleep(seconds)
        return result

    return wrapper


def dask_setup(worker) -> None:
    """Dask's preload hook, run once in each worker process before it takes tasks."""
    from mura_ens.scoring import dask_backend

    dask_backend.score_batch = slowed(dask_backend.score_batch, WORKER_DELAY_S)


def main(argv: list[str]) -> int:
    """``SECONDS ARGS...``: the mura-ens CLI on ``ARGS`` with each local batch slowed by ``SECONDS``."""
    from mura_ens.cli.main import main as cli
    from mura_ens.scoring import backends

    backends.infer_batch = slowed(backends.infer_batch, float(argv[0]))
    return cli(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
