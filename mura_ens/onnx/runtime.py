"""ONNX Runtime session options: :class:`SessionConfig`, :func:`session_options` and the process's shared CPU arena.

The one definition of how a session is configured, used by scoring
(:mod:`mura_ens.scoring.sessions`, which re-exports these names) and by
int8 agreement (:mod:`mura_ens.onnx.quantize`). onnxruntime is imported only
when options are built.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class SessionConfig:
    """How sessions are built; picklable, part of the run's fingerprint."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0  # 0 = onnxruntime's default (one per physical core)
    #: Apply the exact graph rewrites of :mod:`mura_ens.onnx.rewrite` (BatchNorm Mul/Add after a Concat
    #: -> depthwise 1x1 Conv, pool before pointwise conv, ...) before building the session.
    rewrite: bool = True
    #: CPU sessions draw their buffers from one arena shared by every session of the process
    #: (:func:`shared_cpu_arena`) instead of one arena each: memory flat in the number of models.
    shared_arena: bool = True


#: Graphs with at least this many nodes keep idle intra-op threads spinning (see :func:`session_options`).
SPIN_MIN_NODES = 100


def session_options(config: SessionConfig, *, nodes: int | None = None):
    """The ``SessionOptions`` every scoring session uses, each choice deliberate. ``nodes``: the graph's
    node count where known (spinning is for graphs of :data:`SPIN_MIN_NODES` or more)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # Constant folding, node fusions (Conv+BN+Relu...) and layout transforms: free speed for inference.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # CNNs are one chain of ops: parallelism belongs inside each op (intra-op), not across ops.
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if config.intra_op_threads > 0:
        so.intra_op_num_threads = config.intra_op_threads
    # Let idle intra-op threads spin briefly between parallel sections when there is a pool of them.
    # Measured on 2 cores with decode threads running alongside (DenseNet201, 256 px, batch 16):
    # spinning off, raw 15.2 img/s fp32 / 47.6 int8 and streaming 14.6 / 45.8; spinning on, raw
    # 16.5 / 51.9 and streaming 15.5 / 46.9: waking sleeping threads for each of DenseNet's ~400
    # parallel sections costs more than the decode time the spinning takes away. A small graph is the
    # other way round: custom_cnn (25 nodes, 256 px, batch 16), `mura-ens score` streaming rate with
    # spinning on / off, side by side (benchmarks/scoring.py, quiet 2 cores): fp32 50.9 / 55.9 img/s,
    # int8 119 / 146 (raw session.run the same either way): its few, longer sections leave the spinning
    # threads burning the cores the decode threads need. DenseNet201 has 613 nodes, ResNet50 147.
    # With one thread (e.g. one per Dask worker process) there is no pool and nothing to spin.
    spin = config.intra_op_threads != 1 and (nodes is None or nodes >= SPIN_MIN_NODES)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    # Same-shape batches repeat: the arena and memory pattern reuse buffers instead of re-allocating.
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    if config.shared_arena and shared_cpu_arena():
        # The models of a run take turns (one session.run at a time in the local backend), so one arena
        # sized for the largest of them serves all: custom_cnn @ 256 px, batch 32, 8 models: 6.2 GB of
        # peak RSS with one arena per session, 1.5 GB shared (1.1 GB for one model); same speed.
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
    return so


_ARENA_LOCK = threading.Lock()
_ARENA: list[bool] = []  # [registered?] once tried


def shared_cpu_arena() -> bool:
    """Register the process's shared CPU arena allocator with onnxruntime (once); whether it is there.

    Every session built with ``session.use_env_allocators`` then allocates its
    intermediate tensors from this one arena instead of growing an arena of its
    own. Sessions run one after another reuse the same buffers, so the peak is
    that of the largest model's batch plus each model's weights, not the sum of
    every model's batch. The arena grows by powers of two (onnxruntime's default
    ``arena_extend_strategy``); it is thread-safe. If onnxruntime refuses the
    registration, sessions keep their own arenas (as before) and this returns False.
    """
    with _ARENA_LOCK:
        if not _ARENA:
            import onnxruntime as ort

            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 0}))
                _ARENA.append(True)
            except Exception:  # pragma: no cover - an onnxruntime build without shared allocators
                _ARENA.append(False)
        return _ARENA[0]
