"""Will a training step fit in memory? An estimate from the model and the batch, checked before any folder is made.

:func:`estimate_training_memory` adds up, in bytes:

- ``weights``: the model's parameters x 4 copies (weights, gradients, Adam's two moments) x 4 bytes;
- ``activations``: per image, the elements of every layer's output (read from the built Keras model,
  nested models walked into) x :data:`ACTIVATION_FACTOR` (kept for the backward pass, plus the
  gradients alive at once) x the compute dtype's bytes (2 under mixed precision, else 4), times the
  batch size per replica;
- ``input``: the decoded float32 batches the ``tf.data`` pipeline holds (:data:`INPUT_BATCHES_HELD` of
  the global batch: the batch being trained on, prefetched ones, the augmented copy).

:func:`available_memory` is the smallest of ``MemAvailable`` (``/proc/meminfo``) and what the cgroup
limit leaves (v2 ``memory.max - memory.current``, v1 ``limit_in_bytes - usage_in_bytes``); psutil's
``available`` where ``/proc`` is missing; ``None`` when nothing tells.

:func:`check_training_memory`: on CPU the whole estimate is compared with it; with GPUs only the input
batches are (activations and weights live in GPU memory, which this does not check: TensorFlow reports
an out-of-memory error there). Above :data:`REFUSE_FRACTION` of the available memory training is refused
(one line naming ``--batch-size`` and ``--image-size``); above :data:`WARN_FRACTION` it warns.
``MURA_ENS_MEMORY_CHECK=warn`` turns the refusal into a warning (for an estimate known to be too high).
The estimate is rough (TensorFlow fuses and frees some tensors, keeps workspace for others); measured
on CPU (TF 2.21), the peak memory of a step was 0.9x the estimate for ``custom_cnn`` (256 px, batch
32) and 0.25-0.45x for ResNet50/DenseNet201 (128 px): it is meant to catch runs that would need more
than the machine has (``--image-size 4096``: hundreds of GiB), not to budget the last GiB.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

GIB = 1024**3
#: Refuse when the estimate is above this share of the available memory.
REFUSE_FRACTION = 1.0
#: Warn when the estimate is above this share of the available memory.
WARN_FRACTION = 0.5
#: Decoded global batches the input pipeline holds at once.
INPUT_BATCHES_HELD = 4
#: Activation bytes per output element of a layer, relative to one forward copy.
ACTIVATION_FACTOR = 1.5
#: Copies of each parameter training keeps: weights, gradients, Adam's m and v.
PARAMETER_COPIES = 4
#: ``MURA_ENS_MEMORY_CHECK=warn``: warn instead of refusing.
MEMORY_CHECK_ENV = "MURA_ENS_MEMORY_CHECK"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step needs: weights (+ optimizer state), activations, input batches."""

    weights: int
    activations: int
    input: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.input

    def describe(self, *, on_gpu: bool = False) -> str:
        parts = f"activations {_gib(self.activations)}, input batches {_gib(self.input)}, weights {_gib(self.weights)}"
        return parts + (" (activations and weights on the GPU)" if on_gpu else "")


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.0f} GiB"


def activation_elements(model) -> int:
    """Elements of every layer's output for one image (batch dimension left out; nested models walked into).

    Layers whose output shape is unknown (e.g. in a subclassed model) count 0.
    """
    total = 0
    for layer in getattr(model, "layers", None) or []:
        if getattr(layer, "layers", None):
            total += activation_elements(layer)
            continue
        try:
            outputs = layer.output
        except (AttributeError, ValueError, RuntimeError):
            continue
        for output in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            shape = tuple(getattr(output, "shape", ()) or ())[1:]
            if shape and all(isinstance(d, int) for d in shape):
                total += math.prod(shape)
    return total


def estimate_training_memory(
    model, *, batch_size: int, image_size: int, replicas: int = 1, mixed_precision: bool = False
) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of one training step (``batch_size`` per replica)."""
    params = int(model.count_params())
    per_image = activation_elements(model)
    compute_bytes = 2 if mixed_precision else 4
    return MemoryEstimate(
        weights=params * PARAMETER_COPIES * 4,
        activations=int(ACTIVATION_FACTOR * per_image * compute_bytes * batch_size),
        input=INPUT_BATCHES_HELD * batch_size * replicas * image_size * image_size * 3 * 4,
    )


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What the cgroup memory limit leaves, or None without a limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        limit = _read_int(root / limit_file)
        if limit is not None and limit < 2**60:  # v1 writes a huge number for "no limit"
            return max(0, limit - (_read_int(root / usage_file) or 0))
    return None


def available_memory() -> tuple[int | None, str]:
    """Bytes of memory this process can still take, and where the figure comes from."""
    found: list[tuple[int, str]] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except (OSError, ValueError, IndexError):
        pass
    room = _cgroup_room()
    if room is not None:
        found.append((room, "cgroup limit"))
    if not found:
        try:
            import psutil
        except ImportError:
            return None, "unknown"
        found.append((int(psutil.virtual_memory().available), "available"))
    return min(found)


def check_training_memory(
    name: str, estimate: MemoryEstimate, *, on_gpu: bool, batch_size: int, image_size: int
) -> str | None:
    """Refuse (:class:`UsageError`) a step far above the available memory; a warning text above half of it."""
    available, source = available_memory()
    if available is None or available <= 0:
        return None
    needed = estimate.input if on_gpu else estimate.total
    if needed <= WARN_FRACTION * available:
        return None
    text = (
        f"{name}: training needs about {_gib(needed)} of memory per step (batch {batch_size} at {image_size} px: "
        f"{estimate.describe(on_gpu=on_gpu)}); {_gib(available)} is available ({source})"
    )
    if needed > REFUSE_FRACTION * available and os.environ.get(MEMORY_CHECK_ENV, "").lower() != "warn":
        raise UsageError(f"{text}: lower --batch-size or --image-size (or set {MEMORY_CHECK_ENV}=warn to try anyway)")
    return text + ": lower --batch-size or --image-size if the machine starts swapping"
