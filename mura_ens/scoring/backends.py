"""Execution backends: how batches of studies reach :mod:`~mura_ens.scoring.runner`.

A backend maps an iterable of batches (lists of
:class:`~mura_ens.scoring.runner.ImageTask`) to an iterator of
``(batch_number, rows)`` pairs, in any order; the caller journals and
assembles them by row index, so completion order never matters. A distributed
backend only has to run :func:`~mura_ens.scoring.runner.score_batch` remotely:
``dask`` (:mod:`~mura_ens.scoring.dask_backend`, imported only when chosen).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

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
    ``(prefetch + 1) x batch_size`` resized images whatever the input size,
    plus the full-size images being decoded at that moment, which all threads
    hold within one byte budget (:data:`mura_ens.data.images.DECODE_BUDGET`:
    a thread whose image does not fit waits; one too large for the per-image
    cap is ``too_large`` without being decoded).
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


BACKENDS: tuple[str, ...] = ("local", "dask")


def make_backend(
    name: str = "local",
    *,
    workers: int = 2,
    scheduler: str | None = None,
    ship_models: bool = False,
    cluster_workers: int | None = None,
) -> Backend:
    """The backend called ``name``; :class:`~mura_ens.errors.UsageError` for an unknown one.

    ``workers`` are the local backend's decode threads. ``scheduler``,
    ``ship_models`` and ``cluster_workers`` (worker processes of an in-process
    LocalCluster; default one per CPU) belong to ``dask``
    (:class:`~mura_ens.scoring.dask_backend.DaskBackend`), whose absence is a
    :class:`~mura_ens.errors.MissingExtraError` naming the ``[dask]`` extra.
    """
    from ..errors import MissingExtraError, UsageError

    if name == "local":
        dask_only = [option for option, given in (("--scheduler", scheduler), ("--ship-models", ship_models)) if given]
        if dask_only:
            verb = "needs" if len(dask_only) == 1 else "need"
            raise UsageError(f"{' and '.join(dask_only)} {verb} --backend dask")
        return LocalBackend(workers=workers)
    if name == "dask":
        try:
            from .dask_backend import DaskBackend
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] in ("dask", "distributed"):
                raise MissingExtraError("--backend dask", "dask") from None
            raise
        return DaskBackend(scheduler=scheduler, n_workers=cluster_workers, ship_models=ship_models)
    raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
