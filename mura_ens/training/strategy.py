"""Which ``tf.distribute`` strategy a training run uses, and what it means for batches and files.

``--strategy`` choices:

- ``auto``: ``MirroredStrategy`` when more than one GPU is visible, else ``one``;
- ``one``: TensorFlow's default strategy (one device: the first GPU, else the CPU);
- ``mirrored``: ``MirroredStrategy`` over all visible GPUs of this machine, or
  over the logical CPU devices when there is no GPU (see
  :data:`LOGICAL_CPUS_ENV`, a testing aid);
- ``multiworker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.

``--batch-size`` is per replica; a step consumes ``batch_size x replicas``
images (the *global* batch). The learning rate is used as given, whatever the
number of replicas (:data:`LR_SCALING`). Only the chief writes the run folder.

The TF-free parts (names, ``TF_CONFIG`` parsing, chief rule) can be used and
tested without TensorFlow; :func:`make_strategy` imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

#: The values of ``--strategy``.
STRATEGIES: tuple[str, ...] = ("auto", "one", "mirrored", "multiworker")
#: Environment variable splitting the CPU into N logical devices before TensorFlow starts (testing aid).
LOGICAL_CPUS_ENV = "MURA_ENS_LOGICAL_CPUS"
#: How ``--lr`` relates to the number of replicas (recorded in card.json).
LR_SCALING = "none: --lr is used as given, whatever the number of replicas (scale it yourself, e.g. linearly)"
#: Cluster jobs a multi-worker run understands (TensorFlow's names).
CLUSTER_JOBS: tuple[str, ...] = ("chief", "worker")
#: The upstream report of the Keras 3 bugs :func:`prepare_model` works around.
KERAS_MULTIWORKER_ISSUE = "https://github.com/keras-team/keras/issues/20585"

_ADDRESS = re.compile(r"^\[?[A-Za-z0-9_.:\-]+\]?:\d{1,5}$")


def check_strategy(name: str) -> str:
    """``name`` lower-cased, or a :class:`UsageError` listing the choices."""
    value = str(name).strip().lower()
    if value not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return value


def resolve_strategy(requested: str, *, gpu_count: int) -> str:
    """The strategy ``requested`` stands for on a machine with ``gpu_count`` visible GPUs.

    ``auto`` is ``mirrored`` with more than one GPU and ``one`` otherwise; the
    other names stand for themselves.
    """
    requested = check_strategy(requested)
    if requested == "auto":
        return "mirrored" if int(gpu_count) > 1 else "one"
    return requested


# --------------------------------------------------------------------------- TF_CONFIG


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster, as ``TF_CONFIG`` describes it."""

    cluster: Mapping[str, tuple[str, ...]]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        """Processes that train (chief + workers)."""
        return sum(len(self.cluster.get(job, ())) for job in CLUSTER_JOBS)

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule: the ``chief`` task, or worker 0 when the cluster has no chief."""
        if self.cluster.get("chief"):
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def label(self) -> str:
        """``chief``, ``worker 1``, ... (for progress lines)."""
        return "chief" if self.task_type == "chief" else f"{self.task_type} {self.task_index}"


def parse_tf_config(text: str | None) -> ClusterTask:
    """Parse and check a ``TF_CONFIG`` value; every problem is a one-line :class:`UsageError`.

    Expected: ``{"cluster": {"worker": ["host:port", ...], "chief": [...]?},
    "task": {"type": "worker", "index": 0}}``.
    """
    hint = 'expected {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}'
    if text is None or not str(text).strip():
        raise UsageError(f"--strategy multiworker needs the TF_CONFIG environment variable; {hint}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos}): {_clip(text)!r}") from exc
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("cluster"), dict)
        or not isinstance(config.get("task"), dict)
    ):
        raise UsageError(f"TF_CONFIG needs a 'cluster' and a 'task' object, got {_clip(text)!r}; {hint}")
    cluster: dict[str, tuple[str, ...]] = {}
    for job, addresses in config["cluster"].items():
        if job not in CLUSTER_JOBS:
            raise UsageError(
                f"TF_CONFIG cluster has a {job!r} job; multiworker training uses only {' and '.join(CLUSTER_JOBS)} jobs"
            )
        if isinstance(addresses, str) or not isinstance(addresses, (list, tuple)) or not addresses:
            raise UsageError(f"TF_CONFIG cluster[{job!r}] must be a non-empty list of 'host:port', got {addresses!r}")
        for address in addresses:
            if not isinstance(address, str) or not _ADDRESS.match(address):
                raise UsageError(f"TF_CONFIG cluster[{job!r}] has {address!r}; expected 'host:port'")
        cluster[job] = tuple(addresses)
    if not cluster:
        raise UsageError(f"TF_CONFIG cluster lists no worker; {hint}")
    if len(cluster.get("chief", ())) > 1:
        raise UsageError(f"TF_CONFIG cluster has {len(cluster['chief'])} chiefs; at most one is allowed")
    every = [address for addresses in cluster.values() for address in addresses]
    duplicated = sorted({address for address in every if every.count(address) > 1})
    if duplicated:
        raise UsageError(f"TF_CONFIG cluster lists {', '.join(duplicated)} more than once")
    task = config["task"]
    task_type, task_index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise UsageError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster ({', '.join(cluster)})")
    if isinstance(task_index, bool) or not isinstance(task_index, int):
        raise UsageError(f"TF_CONFIG task index must be an integer, got {task_index!r}")
    if not 0 <= task_index < len(cluster[task_type]):
        raise UsageError(
            f"TF_CONFIG task index {task_index} is out of range: the cluster has {len(cluster[task_type])} {task_type} task(s)"
        )
    return ClusterTask(cluster=types.MappingProxyType(cluster), task_type=task_type, task_index=task_index)


def read_tf_config(environ: Mapping[str, str] | None = None) -> ClusterTask:
    """:func:`parse_tf_config` of the ``TF_CONFIG`` environment variable."""
    return parse_tf_config((os.environ if environ is None else environ).get("TF_CONFIG"))


def _clip(text: str, limit: int = 80) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- logical CPUs


def logical_cpus_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The number in :data:`LOGICAL_CPUS_ENV`, ``None`` when unset; a bad value is a :class:`UsageError`."""
    text = (os.environ if environ is None else environ).get(LOGICAL_CPUS_ENV, "").strip()
    if not text:
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise UsageError(f"{LOGICAL_CPUS_ENV} must be a whole number from 1 to 64, got {text!r}")
    return count


def configure_logical_cpus(count: int) -> None:
    """Split the first CPU into ``count`` logical devices (so ``mirrored`` has replicas without a GPU).

    TensorFlow accepts this only before it initialises its devices (before
    the first tensor); later, an unchanged count is accepted and anything
    else is a :class:`UsageError`.
    """
    from .tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as exc:  # "Virtual devices cannot be modified after being initialized"
        have = len(tf.config.list_logical_devices("CPU"))
        raise UsageError(
            f"{LOGICAL_CPUS_ENV}={count}: TensorFlow has already started in this process with {have} CPU device(s); "
            "set it before the first training of the process"
        ) from exc


# --------------------------------------------------------------------------- the strategy


@dataclass
class StrategySetup:
    """A built strategy and what the run needs to know about it."""

    requested: str  # the --strategy value
    name: str  # one, mirrored or multiworker
    strategy: Any  # the tf.distribute.Strategy
    replicas: int  # replicas in sync, over all workers
    workers: int = 1
    devices: tuple[str, ...] = ()  # this process's devices
    task: ClusterTask | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder (always, outside a multi-worker cluster)."""
        return self.task is None or self.task.is_chief

    def scope(self):
        """The strategy's scope: build and compile models inside it."""
        return self.strategy.scope()

    def global_batch_size(self, per_replica: int) -> int:
        """Images per training step over all replicas."""
        return int(per_replica) * self.replicas

    def dataset_options(self):
        """``tf.data.Options`` for the training and validation streams, or ``None``.

        Multi-worker: shard by element (``DATA``): every worker reads every
        path in the same seeded order and keeps its part of each global batch
        (a list of paths has no files to shard by).
        """
        if self.name != "multiworker":
            return None
        from .tf_runtime import import_tensorflow

        tf, _ = import_tensorflow()
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return options

    def card(self, *, per_replica_batch_size: int, learning_rate: float) -> dict[str, Any]:
        """The ``card.json`` fields describing the distribution of the run."""
        return {
            "strategy": self.name,
            "strategy_requested": self.requested,
            "replicas": self.replicas,
            "workers": self.workers,
            "replica_devices": list(self.devices),
            "per_replica_batch_size": int(per_replica_batch_size),
            "global_batch_size": self.global_batch_size(per_replica_batch_size),
            "learning_rate": float(learning_rate),
            "learning_rate_scaling": LR_SCALING,
        }


def make_strategy(requested: str, *, gpus: Sequence[str], task: ClusterTask | None = None) -> StrategySetup:
    """Build the strategy ``requested`` stands for (see the module docstring).

    Call before any TensorFlow tensor exists in the process: a multi-worker
    strategy and logical CPU devices can only be set up then. ``task`` is the
    parsed ``TF_CONFIG`` for ``multiworker`` (read from the environment when
    ``None``). Applies :data:`LOGICAL_CPUS_ENV` when set.
    """
    from .tf_runtime import import_tensorflow

    name = resolve_strategy(requested, gpu_count=len(gpus))
    logical_cpus = logical_cpus_from_env()
    if name == "multiworker":
        task = task or read_tf_config()
    if logical_cpus is not None and name != "multiworker":
        configure_logical_cpus(logical_cpus)
    tf, _ = import_tensorflow()
    notes: list[str] = []
    if name == "one":
        strategy = tf.distribute.get_strategy()
        devices = ("/device:GPU:0",) if gpus else ("/device:CPU:0",)
        return StrategySetup(requested, name, strategy, replicas=1, devices=devices)
    if name == "mirrored":
        if gpus:
            strategy = tf.distribute.MirroredStrategy()
        else:
            cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
            strategy = tf.distribute.MirroredStrategy(devices=cpus)
            if len(cpus) == 1:
                notes.append(
                    f"mirrored: no GPU and one CPU device, so one replica ({LOGICAL_CPUS_ENV}=N splits the CPU)"
                )
        devices = tuple(strategy.extended.worker_devices)
        return StrategySetup(
            requested, name, strategy, replicas=int(strategy.num_replicas_in_sync), devices=devices, notes=tuple(notes)
        )
    # MultiWorkerMirroredStrategy reads TF_CONFIG itself; ours was checked above, one line per problem.
    assert task is not None  # read from TF_CONFIG above for multiworker
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return StrategySetup(
        requested,
        name,
        strategy,
        replicas=int(strategy.num_replicas_in_sync),
        workers=task.num_workers,
        devices=tuple(strategy.extended.worker_devices),
        task=task,
    )


def check_workers_agree(setup: StrategySetup, fingerprint: str, *, what: str) -> None:
    """Raise :class:`UsageError` on every worker unless all workers have the same ``fingerprint``.

    One all-reduce over the replicas of all workers; also the point where the
    workers first wait for each other. A no-op outside a multi-worker cluster.
    """
    if setup.workers <= 1:
        return
    import numpy as np

    from .tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    digest = hashlib.sha256(fingerprint.encode("utf-8")).digest()
    local = np.frombuffer(digest[:8], dtype=np.uint16).astype(np.float64)
    values = tf.constant(np.concatenate([local, local**2]))

    @tf.function
    def summed():
        return setup.strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("SUM", values))

    sums = setup.strategy.experimental_local_results(summed())[0].numpy()
    total, total_of_squares = sums[: len(local)], sums[len(local) :]
    # All replicas hold the same values exactly when n * sum(v^2) == (sum v)^2 (exact in float64 here).
    if np.any(setup.replicas * total_of_squares != total**2):
        raise UsageError(
            f"the workers of the cluster disagree on {what}: give every worker the same --data "
            "(same files), the same options and the same mura-ens version"
        )


# --------------------------------------------------------------------------- Keras 3 + MultiWorkerMirroredStrategy


def prepare_model(model, setup: StrategySetup) -> None:
    """Make ``model.fit`` work under ``setup``'s strategy (compile ``model`` first).

    Only ``multiworker`` needs anything. Keras 3 (checked with 3.15.1 and
    TF 2.21) fails there in two places (:data:`KERAS_MULTIWORKER_ISSUE`):

    1. before the first step, ``_maybe_symbolic_build`` passes the whole
       per-replica batch (a tuple) to ``strategy.reduce``, which the
       collective strategy cannot convert ("Attempt to convert a value
       (PerReplica...) with an unsupported type"). Here the build uses this
       worker's first local batch instead: only its shapes matter.
    2. after every step, ``reduce_per_replica`` reduces each scalar metric
       with ``strategy.reduce("MEAN", v, axis=0)``: "Invalid reduction
       dimension 0 for input with 0 dimensions". Scalars are reduced with
       ``axis=None`` (the mean over all replicas, what the single-worker path
       computes); everything else goes through Keras unchanged.

    Epoch logs (what the callbacks and ``history.tsv`` see) are Keras' own
    metric results, aggregated over all workers.
    """
    if setup.name != "multiworker":
        return
    from .tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    if hasattr(model, "_maybe_symbolic_build") and hasattr(model, "_symbolic_build"):
        model._maybe_symbolic_build = types.MethodType(_symbolic_build_from_local_batch, model)
    try:
        from keras.src.backend.tensorflow import trainer as keras_tf_trainer
    except ImportError:  # another Keras layout: nothing to patch
        return
    original = getattr(keras_tf_trainer, "reduce_per_replica", None)
    is_multi_worker = getattr(keras_tf_trainer, "_collective_all_reduce_multi_worker", None)
    if original is None or is_multi_worker is None or getattr(original, "_mura_ens_scalar_fix", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not is_multi_worker(strategy):
            return original(values, strategy, reduction)

        def reduce_one(value):
            if value is None or not _rank_is_zero(value, strategy):
                return original(value, strategy, reduction)
            return strategy.reduce("MEAN", value, axis=None)

        return tf.nest.map_structure(reduce_one, values)

    reduce_per_replica._mura_ens_scalar_fix = True  # type: ignore[attr-defined]  # marks the patch as applied
    keras_tf_trainer.reduce_per_replica = reduce_per_replica


def _rank_is_zero(value, strategy) -> bool:
    first = strategy.experimental_local_results(value)[0]
    shape = getattr(first, "shape", None)
    return shape is not None and shape.rank == 0


def _symbolic_build_from_local_batch(self, iterator=None, data_batch=None):
    """``Trainer._maybe_symbolic_build`` building from this worker's first local batch (see :func:`prepare_model`)."""
    if self._distribute_strategy is None:
        return
    from .tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    strategy = self.distribute_strategy
    if iterator is not None:
        for _, _, batches in iterator:
            batch = next(batches)
            data_batch = tf.nest.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
                ),
                batch,
            )
            break
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)
