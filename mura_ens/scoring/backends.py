"""Execution backends: how batches of studies reach :mod:`~mura_ens.scoring.runner`.

A backend maps an iterable of batches (lists of
:class:`~mura_ens.scoring.runner.ImageTask`) to an iterator of
``(batch_number, rows)`` pairs, in any order; the caller journals and
assembles them by row index, so completion order never matters. A distributed
backend only has to run :func:`~mura_ens.scoring.runner.score_batch` remotely.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Protocol

from .runner import ImageTask, RunnerConfig, infer_batch, prepare_batch


class Backend(Protocol):
    """What :func:`mura_ens.scoring.score.score` needs from an execution backend."""

    name: str

    def map(
        self, batches: Iterable[list[ImageTask]], config: RunnerConfig
    ) -> Iterator[tuple[int, list[dict]]]:  # pragma: no cover - protocol
        """Yield ``(batch_number, rows)`` for every batch, in any order."""
        ...


class LocalBackend:
    """Streaming on this machine: a thread pool decodes while the calling thread infers.

    Threads, not processes: Pillow releases the GIL while decoding and
    resizing and onnxruntime releases it in ``run``, so the two overlap
    without pickling pixels between processes, and the sessions (with their
    own intra-op thread pool) exist once. At most ``prefetch`` batches are
    decoded ahead of inference, so memory is bounded by
    ``(prefetch + 1) x batch_size`` resized images whatever the input size.
    """

    name = "local"

    def __init__(self, workers: int = 2, prefetch: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.prefetch = prefetch if prefetch is not None else 2 * workers

    def map(self, batches: Iterable[list[ImageTask]], config: RunnerConfig) -> Iterator[tuple[int, list[dict]]]:
        """Yield ``(batch_number, rows)`` in input order, decoding up to ``prefetch`` batches ahead."""
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mura-ens-decode")
        pending: deque = deque()
        numbered = iter(enumerate(batches))

        def refill() -> None:
            while len(pending) < self.prefetch:
                item = next(numbered, None)
                if item is None:
                    return
                number, tasks = item
                pending.append((number, pool.submit(prepare_batch, tasks, config)))

        try:
            refill()
            while pending:
                number, future = pending.popleft()
                prepared = future.result()
                refill()  # keep the decoders busy while this batch is inferred
                yield number, infer_batch(prepared, config)
        finally:
            # Also runs when the consumer stops early (error, Ctrl-C): drop queued work.
            pool.shutdown(wait=True, cancel_futures=True)


BACKENDS: tuple[str, ...] = ("local",)


def make_backend(name: str = "local", *, workers: int = 2) -> Backend:
    """The backend called ``name``; :class:`~mura_ens.errors.UsageError` for an unknown one."""
    from ..errors import UsageError

    if name == "local":
        return LocalBackend(workers=workers)
    raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
