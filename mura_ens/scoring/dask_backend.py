"""Scoring on a Dask cluster (``mura-ens score --backend dask``).

The unit of work is the local backend's: :func:`~mura_ens.scoring.runner.score_batch`
on one batch of whole studies, here run by :func:`run_batch` on a Dask worker.
The client (the ``mura-ens score`` process) plans the batches, keeps at most
``window`` of them in flight (twice the cluster's worker threads by default,
so memory stays bounded whatever the number of images), and yields each
batch's rows as it completes; :func:`~mura_ens.scoring.score.score` journals
and writes them exactly as for the local backend.

Where the cluster comes from (:func:`resolve_scheduler`): ``--scheduler
ADDRESS`` (or the path of a scheduler file written by ``dask scheduler
--scheduler-file``), else ``DASK_SCHEDULER_ADDRESS``, else Dask's own
``scheduler-address`` config; with none of them a ``LocalCluster`` of worker
processes (one thread each) is started in-process on 127.0.0.1 and closed at
the end.

Models reach the workers either as file paths, which every worker must see
(each worker checks the file's SHA-256 against the client's once), or, with
``ship_models``, as bytes: one :class:`ShipModel` worker plugin per model,
which the scheduler hands to every worker, including workers that join
later; each writes the file once into its local directory, named by SHA-256.
Sessions are cached per worker process
(:func:`~mura_ens.scoring.sessions.get_session`), with one intra-op thread per
worker thread by default, so that ``nthreads`` worker threads use
``nthreads`` cores.

A worker that dies mid-batch loses nothing: the scheduler reruns its tasks
elsewhere, and each batch is yielded exactly once. Task exceptions are
retried ``retries`` times, then raised in the client.

This module imports ``distributed``; :func:`~mura_ens.scoring.backends.make_backend`
imports it only for ``--backend dask`` and turns its absence into a
:class:`~mura_ens.errors.MissingExtraError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from distributed import Client, KilledWorker, LocalCluster, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import ModelError, RunFailed, UsageError
from ..io import file_sha256
from .models import ModelSpec
from .runner import ImageTask, RunnerConfig, score_batch

#: Environment variable naming the scheduler when ``--scheduler`` is not given (Dask's own name).
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
#: Prefix of the task keys (what the Dask dashboard shows).
TASK_PREFIX = "mura-ens-batch"
#: Retries of a batch whose task raised (a worker that died is handled by the scheduler separately).
DEFAULT_RETRIES = 2
#: Seconds to wait for the first worker of a running cluster.
DEFAULT_WORKER_TIMEOUT_S = 120.0
#: Folder (inside each worker's local directory) of the models shipped with ``ship_models``.
SHIPPED_DIR = "mura-ens-models"
#: How often (s) the client re-reads the cluster's thread count to resize the in-flight window.
_WINDOW_REFRESH_S = 5.0


@dataclass(frozen=True)
class SchedulerTarget:
    """Which cluster to use: an ``address``, a ``scheduler_file``, or neither (start a LocalCluster)."""

    address: str | None = None
    scheduler_file: str | None = None
    source: str = ""

    @property
    def is_local(self) -> bool:
        """True when a LocalCluster is started in-process."""
        return self.address is None and self.scheduler_file is None

    def describe(self) -> str:
        """One line for messages: where the scheduler is and who said so."""
        if self.is_local:
            return "an in-process LocalCluster"
        where = self.address if self.address is not None else f"the scheduler file {self.scheduler_file}"
        return f"{where} (from {self.source})"


def resolve_scheduler(scheduler: str | None = None, environ: Mapping[str, str] | None = None) -> SchedulerTarget:
    """Where to find the scheduler: ``scheduler``, else ``$DASK_SCHEDULER_ADDRESS``, else Dask's config.

    ``scheduler`` is an address (``tcp://host:8786``, ``host:8786``, ``tls://...``)
    or the path of a scheduler file (JSON written by ``dask scheduler
    --scheduler-file``). A value without ``://`` that names an existing file, ends
    in ``.json`` or contains a path separator is taken as a scheduler file, which
    must exist. With nothing set, the target is local (a LocalCluster).
    """
    environ = os.environ if environ is None else environ
    candidates = [(scheduler, "--scheduler"), (environ.get(SCHEDULER_ENV), SCHEDULER_ENV)]
    for value, source in candidates:
        if value is not None and value.strip():
            return _target(value.strip(), source)
        if value is not None:
            raise UsageError(f"{source} is empty; give a scheduler address such as tcp://host:8786")
    import dask.config

    configured = dask.config.get("scheduler-address", None)
    if configured:
        return _target(str(configured), "Dask config scheduler-address")
    return SchedulerTarget()


def _target(value: str, source: str) -> SchedulerTarget:
    if "://" not in value and (os.path.isfile(value) or value.endswith(".json") or os.sep in value):
        if not os.path.isfile(value):
            raise UsageError(f"scheduler file not found: {value} (from {source})")
        return SchedulerTarget(scheduler_file=os.path.abspath(value), source=source)
    return SchedulerTarget(address=value, source=source)


class DaskBackend:
    """Run :func:`run_batch` on a Dask cluster; see the module docstring.

    Parameters
    ----------
    scheduler
        Address or scheduler file (see :func:`resolve_scheduler`); ``None`` =
        ``$DASK_SCHEDULER_ADDRESS`` or Dask's config, else a LocalCluster.
    n_workers
        Worker processes of the LocalCluster (default: one per usable CPU);
        ignored when connecting to a running cluster.
    ship_models
        Send the model files' bytes to the workers instead of relying on them
        seeing the client's paths.
    retries
        Retries of a batch whose task raised.
    intra_op_threads
        onnxruntime intra-op threads of the workers' sessions (default 1 per
        worker thread; ``None`` keeps the client's setting, 0 onnxruntime's default).
    window
        Batches in flight at most (default: 2 x the cluster's worker threads).
    worker_timeout
        Seconds to wait for a running cluster's first worker.
    """

    name = "dask"

    def __init__(
        self,
        *,
        scheduler: str | None = None,
        n_workers: int | None = None,
        ship_models: bool = False,
        retries: int = DEFAULT_RETRIES,
        intra_op_threads: int | None = 1,
        window: int | None = None,
        worker_timeout: float = DEFAULT_WORKER_TIMEOUT_S,
    ):
        from .sessions import usable_cpus

        if n_workers is not None and n_workers < 1:
            raise UsageError(f"--workers must be >= 1, got {n_workers}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.target = resolve_scheduler(scheduler)
        self.n_workers = n_workers if n_workers is not None else usable_cpus()
        self.ship_models = ship_models
        self.retries = retries
        self.intra_op_threads = intra_op_threads
        self.window = window
        self.worker_timeout = worker_timeout

    def worker_config(self, config: RunnerConfig) -> RunnerConfig:
        """``config`` as the workers get it: sessions with this backend's intra-op threads."""
        if self.intra_op_threads is None:
            return config
        return replace(config, session=replace(config.session, intra_op_threads=self.intra_op_threads))

    def map(self, batches: Iterable[list[ImageTask]], config: RunnerConfig) -> Iterator[tuple[int, list[dict]]]:
        """Yield ``(batch_number, rows)`` for every batch, in completion order, each exactly once."""
        remote_config = self.worker_config(config)
        batches = iter(batches)
        first = next(batches, None)
        if first is None:  # e.g. a resumed run with every batch journalled: no cluster needed
            return
        batches = itertools.chain([first], batches)
        with self.connect() as client:
            plugins = ship_models(client, config.models) if self.ship_models else []
            try:
                yield from self._stream(client, batches, remote_config, shipped=bool(plugins))
            finally:
                for name in plugins:  # frees the bytes the scheduler keeps for late-joining workers
                    with contextlib.suppress(Exception):
                        client.unregister_worker_plugin(name)

    @contextlib.contextmanager
    def connect(self) -> Iterator[Client]:
        """A client of the target cluster (started here and closed after when local), with a worker."""
        target = self.target
        cluster = None
        try:
            if target.is_local:
                cluster = LocalCluster(
                    n_workers=self.n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",  # loopback only: nothing outside this machine may connect
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                client = Client(cluster, set_as_default=False)
            else:
                try:
                    client = Client(target.address, scheduler_file=target.scheduler_file, set_as_default=False)
                except (OSError, TimeoutError, ValueError) as exc:
                    raise UsageError(
                        f"cannot connect to the Dask scheduler at {target.describe()}: {_first_line(exc)}"
                    ) from None
            try:
                if not target.is_local:
                    try:
                        client.wait_for_workers(1, timeout=self.worker_timeout)
                    except TimeoutError:
                        raise UsageError(
                            f"no Dask worker joined the scheduler at {target.describe()} within "
                            f"{self.worker_timeout:g} s; start some with `dask worker {target.address or '--scheduler-file ' + str(target.scheduler_file)}`"
                        ) from None
                yield client
            finally:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()

    def _stream(
        self, client: Client, batches: Iterable[list[ImageTask]], config: RunnerConfig, *, shipped: bool
    ) -> Iterator[tuple[int, list[dict]]]:
        run_token = uuid.uuid4().hex[:12]
        numbered = iter(enumerate(batches))
        numbers: dict = {}  # future key -> batch number
        done = as_completed(loop=client.loop)  # not the default client's loop: this client is not the default
        window = _Window(client, self.window)

        def submit_next() -> bool:
            item = next(numbered, None)
            if item is None:
                return False
            number, tasks = item
            probe = _probe_path(tasks)
            future = client.submit(
                run_batch,
                tasks,
                config,
                shipped=shipped,
                probe=probe,
                key=f"{TASK_PREFIX}-{number}-{run_token}",
                retries=self.retries,
                pure=False,
            )
            numbers[future.key] = number
            done.add(future)
            return True

        def fill() -> None:
            while len(numbers) < window.size() and submit_next():
                pass

        # An early stop (error, Ctrl-C) needs no cancelling here: closing the client releases
        # its futures, and the scheduler drops the work nobody wants any more.
        fill()
        for future in done:
            try:
                rows = future.result()  # a task's exception (after its retries) is raised here
            except KilledWorker as exc:
                raise RunFailed(
                    f"batch {numbers[future.key]} killed every Dask worker that ran it ({_first_line(exc)}); "
                    "finished batches are journalled: rerun with --resume"
                ) from exc
            number = numbers.pop(future.key)
            del future  # nothing else holds it now: the cluster may forget the result
            fill()  # keep the workers busy while the caller journals this batch
            yield number, rows


class _Window:
    """How many batches may be in flight: fixed, or 2 x the cluster's threads, re-read every few seconds."""

    def __init__(self, client: Client, fixed: int | None):
        self.client = client
        self.fixed = fixed
        self._size = 2
        self._read_at = float("-inf")

    def size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        now = time.monotonic()
        if now - self._read_at >= _WINDOW_REFRESH_S:
            self._size = 2 * max(1, sum(self.client.nthreads().values()))
            self._read_at = now
        return self._size


def _probe_path(tasks: Sequence[ImageTask]) -> str | None:
    """An image of the batch that the client can see, for the worker to check that it sees it too."""
    for task in tasks[:3]:
        if os.path.isfile(task.path):
            return task.path
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------- on the workers

_SHIPPED: dict[str, str] = {}  # model sha256 -> local file, filled by ShipModel.setup
_VERIFIED: set[tuple[str, str]] = set()  # (path, sha256) of model files checked on this worker
_VERIFY_LOCK = threading.Lock()


def run_batch(
    tasks: Sequence[ImageTask], config: RunnerConfig, *, shipped: bool = False, probe: str | None = None
) -> list[dict]:
    """What a Dask worker runs: :func:`~mura_ens.scoring.runner.score_batch`, after checking what it can see.

    With ``shipped`` the models are read from the copies :class:`ShipModel`
    wrote on this worker; otherwise from the client's paths, each checked once
    per worker process to exist with the client's SHA-256. ``probe`` is an image
    the client can see; a worker that cannot see it raises a
    :class:`~mura_ens.errors.UsageError` instead of marking every image
    unreadable.
    """
    if probe is not None and not os.path.exists(probe):
        raise UsageError(
            f"Dask worker {_worker_name()} cannot see {probe}, which the client can: every worker "
            "must see the images at the same paths as the client (a shared filesystem)"
        )
    config = _with_shipped_models(config) if shipped else _with_verified_models(config)
    return score_batch(tasks, config)


def _with_shipped_models(config: RunnerConfig) -> RunnerConfig:
    models = []
    for spec in config.models:
        local = _SHIPPED.get(spec.sha256)
        if local is None:
            raise ModelError(f"{spec.path}: its bytes were not shipped to Dask worker {_worker_name()}")
        models.append(replace(spec, path=local))
    return replace(config, models=tuple(models))


def _with_verified_models(config: RunnerConfig) -> RunnerConfig:
    for spec in config.models:
        key = (spec.path, spec.sha256)
        if key in _VERIFIED:
            continue
        with _VERIFY_LOCK:
            if key in _VERIFIED:
                continue
            try:
                digest = file_sha256(spec.path)
            except OSError as exc:
                raise ModelError(
                    f"{spec.path}: not readable on Dask worker {_worker_name()} ({exc.strerror or type(exc).__name__}); "
                    "every worker must see the models at the client's paths, or pass --ship-models"
                ) from None
            if digest != spec.sha256:
                raise ModelError(
                    f"{spec.path}: differs on Dask worker {_worker_name()} (sha256 {digest[:12]}... there, "
                    f"{spec.sha256[:12]}... on the client); copy the same model everywhere or pass --ship-models"
                )
            _VERIFIED.add(key)
    return config


def _worker_name() -> str:
    try:
        return get_worker().address
    except ValueError:  # not inside a worker (tests calling run_batch directly)
        return f"process {os.getpid()}"


class ShipModel(WorkerPlugin):
    """Carries one model's bytes to every worker (present and future) and writes them there once.

    The file lands in ``<worker local directory>/mura-ens-models/<sha256>.onnx``
    (written to a temporary name, then renamed), after checking the bytes'
    SHA-256; :func:`run_batch` then reads the model from there.
    """

    idempotent = False

    def __init__(self, sha256: str, data: bytes, label: str = ""):
        self.sha256 = sha256
        self.data = data
        self.label = label  # the client's path, for messages

    def setup(self, worker) -> None:
        folder = Path(worker.local_directory) / SHIPPED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{self.sha256}.onnx"
        if not target.is_file():
            digest = hashlib.sha256(self.data).hexdigest()
            if digest != self.sha256:
                raise ModelError(f"{self.label}: shipped bytes arrived damaged on Dask worker {worker.address}")
            partial = folder / f".{self.sha256}.{os.getpid()}.{threading.get_ident()}.tmp"
            partial.write_bytes(self.data)
            os.replace(partial, target)
        _SHIPPED[self.sha256] = str(target)


def ship_models(client: Client, models: Sequence[ModelSpec]) -> list[str]:
    """Register one :class:`ShipModel` plugin per model; return the plugin names (unique to this run).

    Raises :class:`~mura_ens.errors.ModelError` if a file changed since it was
    loaded (its SHA-256 no longer matches).
    """
    token = uuid.uuid4().hex[:12]
    names = []
    for spec in models:
        data = Path(spec.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != spec.sha256:
            raise ModelError(f"{spec.path}: the file changed since it was loaded; rerun")
        name = f"mura-ens-model-{spec.sha256[:16]}-{token}"
        client.register_plugin(ShipModel(spec.sha256, data, spec.path), name=name)
        names.append(name)
    return names
