"""ONNX Runtime sessions: execution providers, session options, one cached session per model per process.

An ``InferenceSession`` cannot be pickled, so work sent to another process
(or a Dask worker) carries only :class:`~mura_ens.scoring.models.ModelSpec`
and :class:`SessionConfig`; :func:`get_session` builds the session there on
first use and keeps it for the life of the process.

Every new session is probed before it is handed out (:func:`probe_session`):
one run on a 2-image batch at the model's input size (:func:`probe_images`:
a mid-grey image and a fixed noise image) must give one finite probability
in [0, 1] per image. A model that fails (an ONNX Runtime error at run time,
NaN/inf, logits, one value for two images) is a one-line :class:`ModelError`
naming the file, before any image of the run is scored.

:class:`SessionConfig`, :func:`session_options` and :func:`shared_cpu_arena` live in
:mod:`mura_ens.onnx.runtime` (int8 agreement uses them too) and are importable from here.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from ..errors import ModelError, UsageError
from ..onnx.runtime import SessionConfig, session_options
from ..onnx.runtime import shared_cpu_arena as shared_cpu_arena  # re-exported: docs, tests
from ..onnx.wire import WireError, read_header

#: Listed by onnxruntime but never usable for local scoring (FACTS.md): never chosen.
_EXCLUDED_PROVIDERS = frozenset({"AzureExecutionProvider"})
_SHORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, minus ones we never use."""
    import onnxruntime as ort

    return [p for p in ort.get_available_providers() if p not in _EXCLUDED_PROVIDERS]


def resolve_providers(requested: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """Validate and order the execution providers to use.

    ``None`` picks CUDA when this onnxruntime build has it, else CPU (always
    explicit: onnxruntime would otherwise also list AzureExecutionProvider).
    ``requested`` may be full names or short ones (``cpu``, ``cuda``), as a list
    or a comma list; an unknown or unavailable one is a :class:`UsageError`
    naming the available providers. CPU is appended as the fallback for nodes
    a GPU provider cannot run.
    """
    available = available_providers()
    if requested is None:
        chosen = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
    else:
        items = [requested] if isinstance(requested, str) else list(requested)
        names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
        if not names:
            raise UsageError(f"--providers is empty; available: {', '.join(available)}")
        chosen = []
        for name in names:
            full = _SHORT_NAMES.get(name.lower(), name)
            if full not in available:
                raise UsageError(f"execution provider {name!r} is not available; available: {', '.join(available)}")
            if full not in chosen:
                chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return tuple(chosen)


def usable_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


def default_intra_op_threads(decode_workers: int) -> int:
    """Intra-op threads for inference, leaving room for the decode workers.

    Decoding + resizing a 512-px PNG costs 5-8% of a DenseNet201 inference
    (FACTS.md), so inference should own nearly every core: on small machines
    (<= 4 CPUs) it takes all of them, on larger ones it gives up to a quarter
    of the cores (but no more than there are decode workers) to decoding.
    """
    cpus = usable_cpus()
    reserve = 0 if cpus <= 4 else min(max(1, decode_workers), cpus // 4)
    return max(1, cpus - reserve)


def model_source(path: str, *, rewrite: bool = True) -> str | bytes:
    """What to hand ``InferenceSession``: the rewritten model's bytes, or ``path`` when nothing changes.

    The rewrites compute the same function (to float rounding); on
    DenseNet201 they keep onnxruntime's blocked (NCHWc) layout across the
    ~100 BatchNorms that follow a Concat and skip 9% of the multiply-adds
    (fp32 14.2 -> 16.6 images/s on 2 cores). A model the rewrite cannot
    handle is used as it is. A path that is not valid UTF-8 (which onnxruntime
    cannot take) is handed over as the file's bytes.
    """
    as_is = path if _utf8_path(path) else Path(path).read_bytes()
    if not rewrite or not _may_gain_from_rewrite(path):
        return as_is
    try:
        import onnx

        from ..onnx.rewrite import rewrite_for_inference

        model = onnx.load(path)
        model, summary = rewrite_for_inference(model, inplace=True, check=False)
        return model.SerializeToString() if summary.changed else as_is
    except Exception:
        return as_is


#: Op types the rewrites that change speed start from (BatchNorm after a Concat, Pad + MaxPool,
#: 1x1 Conv + AveragePool). A graph with none of them could only have its input normalisation
#: moved after the NHWC->NCHW transpose: 0.8% of custom_cnn's CPU time per batch (measured
#: single-threaded, 256 px, batch 16), less than the ~0.65 s that ``import onnx`` costs a process.
_REWRITE_OPS = frozenset({"Concat", "Pad", "AveragePool"})


def _may_gain_from_rewrite(path: str) -> bool:
    """Whether the graph holds an op the speed-relevant rewrites start from (True when unsure)."""
    try:
        return bool(read_header(Path(path).read_bytes()).op_types & _REWRITE_OPS)
    except (OSError, WireError):
        return True


def _utf8_path(path: str) -> bool:
    """Whether ``path`` can be passed to onnxruntime as text (no undecodable file-name bytes)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Tolerance of the [0, 1] check on probe outputs (float rounding of a quantized sigmoid, never a logit).
PROBE_TOLERANCE = 1e-6
_PROBE_SEED = 0


def probe_images(size: int, dtype: str = "float32"):
    """The probe batch: (2, size, size, 3) pixels, a mid-grey image (128) and a fixed uniform noise image (0-255).

    Deterministic (seeded), so a model fails or passes the probe the same way every time.
    """
    import numpy as np

    noise = np.random.default_rng(_PROBE_SEED).integers(0, 256, size=(size, size, 3))
    grey = np.full((size, size, 3), 128)
    return np.stack([grey, noise]).astype(dtype)


def probe_session(session, spec):
    """Run ``session`` once on :func:`probe_images` and check its output; return the two probabilities.

    ``spec`` is a :class:`~mura_ens.scoring.models.ModelSpec` (its path, input name, size and dtype).
    Raises :class:`ModelError` (one line, naming ``spec.path``) when ONNX Runtime fails on the
    batch (e.g. a Reshape fixed to batch 1), the output is not one value per image, a value is
    NaN/inf, or a value is outside [0, 1] (logits: export with a sigmoid output).
    """
    import numpy as np

    images = probe_images(spec.input_size, spec.input_dtype)
    try:
        output = session.run(None, {spec.input_name: images}, quiet_run_options())[0]
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException types
        raise ModelError(
            f"{spec.path}: onnxruntime fails on a 2-image test batch: {_first_line(exc)} "
            "(if it was exported for a fixed batch size, export it with a dynamic batch dimension)"
        ) from None
    values = np.asarray(output, dtype=np.float64)
    if values.size != len(images):
        raise ModelError(
            f"{spec.path}: output shape {tuple(np.shape(output))} on a 2-image test batch; expected (2, 1), "
            "one probability per image (export it with a dynamic batch dimension)"
        )
    values = values.reshape(-1)
    if not np.isfinite(values).all():
        shown = ", ".join(str(v) for v in values)
        raise ModelError(
            f"{spec.path}: outputs {shown} on a 2-image test batch (mid-grey and noise images); "
            "a model must output finite probabilities (NaN/inf: broken weights or an unstable graph?)"
        )
    if values.min() < -PROBE_TOLERANCE or values.max() > 1 + PROBE_TOLERANCE:
        shown = ", ".join(f"{v:.4g}" for v in values)
        raise ModelError(
            f"{spec.path}: outputs {shown} on a 2-image test batch, outside [0, 1]: it looks like logits; "
            "export it with a sigmoid output"
        )
    return values


def quiet_run_options():
    """``RunOptions`` under which a failing ``session.run`` raises without also logging to stderr.

    onnxruntime logs a run-time error (e.g. a Reshape that fails) on stderr *and* raises it;
    the caller turns the exception into one line, so the log would be a second, noisy copy.
    """
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4  # fatal only
    return options


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()


def get_session(spec, config: SessionConfig):
    """The process's session for ``spec`` (a ModelSpec) under ``config``, built on first use.

    Cached per (file, its hash, config): every later batch in this process
    reuses it. A new session is probed once (:func:`probe_session`) before it is
    cached. A model onnxruntime cannot load, or one that fails the probe, is a
    :class:`ModelError`.
    """
    key = (spec.path, spec.sha256, config)
    session = _CACHE.get(key)
    if session is not None:
        return session
    with _CACHE_LOCK:
        session = _CACHE.get(key)
        if session is None:
            try:
                session = _built_session(model_source(spec.path, rewrite=config.rewrite), config)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise ModelError(f"{spec.path}: onnxruntime cannot load it: {_first_line(exc)}") from None
            probe_session(session, spec)
            _CACHE[key] = session
    return session


def _built_session(source: str | bytes, config: SessionConfig):
    """An ``InferenceSession`` of ``source``; bytes (a rewritten model) go through a temporary file.

    With onnxruntime 1.32 a DenseNet201 @ 320 px session built from the rewritten model's bytes kept about
    150 MB, one built from a file holding the same bytes about 85 MB (process RSS after 8 sessions: 1.36 vs
    0.86 GB; measured side by side), so scoring's memory grew with every model (``benchmarks/memory.py``:
    8 models vs 1, 1.58 -> 1.33). Plain conv or MatMul chains of similar size show no such difference, so
    the cause lies in onnxruntime's handling of that graph, not in the bytes as such; the file costs one
    write (~0.1 s for 80 MB). It lives only while the session is built; where it cannot be written (a full
    or read-only temp folder) the bytes are handed over as before.
    """
    import onnxruntime as ort

    options, providers = session_options(config, nodes=_node_count(source)), list(config.providers)
    if isinstance(source, str):
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    try:
        handle, path = tempfile.mkstemp(prefix="mura-ens-model-", suffix=".onnx")
    except OSError:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    try:
        try:
            with os.fdopen(handle, "wb") as fh:
                fh.write(source)
        except OSError:
            return ort.InferenceSession(source, sess_options=options, providers=providers)
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    finally:
        Path(path).unlink(missing_ok=True)


def _node_count(source: str | bytes) -> int | None:
    """The main graph's node count of a model file or its bytes (None when it cannot be read here)."""
    try:
        return read_header(source if isinstance(source, bytes) else Path(source).read_bytes()).node_count
    except (OSError, WireError):
        return None


def clear_sessions() -> None:
    """Drop every cached session (tests; freeing memory after a run)."""
    with _CACHE_LOCK:
        _CACHE.clear()
