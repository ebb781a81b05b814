"""Importing TensorFlow quietly and choosing the device setup (GPU, mixed precision, XLA).

Everything under ``mura_ens.training`` gets TensorFlow through
:func:`import_tensorflow`, called inside functions, so that importing the
package stays cheap and the log noise is gone before the first import.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import MissingExtraError

_IMPORTED = False


def import_tensorflow() -> tuple[Any, Any]:
    """Import and return ``(tensorflow, keras)`` with TF's start-up logs silenced.

    Sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it. TF 2.21 prints
    the absl "All log messages before absl::InitializeLog()" and oneDNN/CUDA
    lines straight to file descriptor 2 while importing, so stderr is pointed
    at /dev/null around the first import only (``MURA_ENS_DEBUG=1`` keeps it).
    Raises :class:`MissingExtraError` when the [train] extra is missing.
    """
    global _IMPORTED
    if _IMPORTED:  # the usual call, also from functions AutoGraph traces (augment_batch in Dataset.map):
        import keras  # nothing here for AutoGraph to convert; converting os.environ.setdefault fails with a
        import tensorflow as tf  # warning that prints the whole environment in an interactive session

        return tf, keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        import keras
        import tensorflow as tf

        _IMPORTED = True
        return tf, keras
    try:
        with _stderr_silenced(os.environ.get("MURA_ENS_DEBUG", "") in ("", "0")):
            import keras
            import tensorflow as tf
    except ImportError as exc:
        raise MissingExtraError(f"training and export ({exc.name or exc})", "train") from exc
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="keras.src.trainers.data_adapters")
    _IMPORTED = True
    return tf, keras


class _stderr_silenced:
    """Point file descriptor 2 at /dev/null inside the block (C++ logs bypass sys.stderr)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._saved: int | None = None

    def __enter__(self):
        if not self.enabled:
            return self
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:  # no real fd 2 (some embedded interpreters): keep the noise
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
        return False


def silenced_stderr(enabled: bool = True) -> _stderr_silenced:
    """Context manager silencing C-level stderr (used around tf2onnx's chatty conversion)."""
    return _stderr_silenced(enabled and os.environ.get("MURA_ENS_DEBUG", "") in ("", "0"))


@dataclass(frozen=True)
class DeviceSetup:
    """What training runs on: ``device`` (``"GPU"`` or ``"CPU"``), GPU names, mixed precision and XLA."""

    device: str
    gpus: tuple[str, ...]
    mixed_precision: bool
    xla: bool
    notes: tuple[str, ...] = ()


def device_setup(*, mixed_precision: bool | None = None, xla: bool | None = None) -> DeviceSetup:
    """Resolve the mixed-precision and XLA switches against the hardware.

    ``None`` means "on when a GPU is present". Both stay off on CPU even
    when asked for (float16 is slow on CPU and XLA there brings nothing for
    these models); the returned ``notes`` say so. The global Keras dtype
    policy is set accordingly (``mixed_float16`` or ``float32``).
    """
    tf, keras = import_tensorflow()
    gpus = tuple(d.name for d in tf.config.list_physical_devices("GPU"))
    notes = []
    if gpus:
        for gpu in tf.config.list_physical_devices("GPU"):
            try:  # share the GPU politely with other processes
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError):
                pass  # already initialised
        mixed = True if mixed_precision is None else bool(mixed_precision)
        jit = True if xla is None else bool(xla)
    else:
        mixed = jit = False
        if mixed_precision:
            notes.append("no GPU: mixed precision stays off")
        if xla:
            notes.append("no GPU: XLA stays off")
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    return DeviceSetup(device="GPU" if gpus else "CPU", gpus=gpus, mixed_precision=mixed, xla=jit, notes=tuple(notes))


def model_inputs(model: Any, images: Any) -> Any:
    """``images`` in the input structure ``model`` was built with: ``[images]`` for a model whose inputs are a
    one-element list (a model loaded from ``.keras``, or ``keras.Model(model.inputs, ...)``), a dict for named
    inputs, else ``images`` itself. Calling a functional model with another structure works but makes Keras
    warn "The structure of `inputs` doesn't match the expected structure" on every call."""
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, (list, tuple)) and len(struct) == 1:
        return [images]
    if isinstance(struct, dict) and len(struct) == 1:
        return {next(iter(struct)): images}
    return images
