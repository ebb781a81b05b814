"""The unit of scoring work: one batch of whole studies -> one row per image.

:func:`score_batch` = :func:`prepare_batch` (decode each image once, resize
once per distinct model input size/policy; no onnxruntime) followed by
:func:`infer_batch` (run every applicable model, ``batch_size`` images per
``session.run``). Both are top-level functions of picklable arguments
(:class:`ImageTask`, :class:`RunnerConfig`): a process pool or a Dask
``Client.get_executor()`` can run :func:`score_batch` unchanged, each worker
building its sessions on first use (:func:`~mura_ens.scoring.sessions.get_session`).
The local backend calls the two halves separately to overlap decoding with
inference.

A row is a dict ``{"index", "path", "status", "error", "prob__<model>"...}``
holding a probability only for the models that serve the image's body part
and only when ``status == "ok"``.

Test-time augmentation (``RunnerConfig.tta``): with ``flip`` every model sees
each resized image and its horizontal mirror (the resized pixels reversed
along the width; decoded and resized once) side by side in the same
``session.run`` (chunks of ``2 x batch_size`` inputs), and the image's
probability is the mean of the two, ``(p + p_mirror) / 2`` in float64.

What a model gives back is checked per image: a value that is NaN, infinite
or outside [0, 1] (beyond :data:`PROB_TOLERANCE`, within which it is clipped)
makes the image ``model_error`` with the model named in ``error``; the image
then has no probability from any model, so a study is scored from the rest of
its images by every model alike. An ONNX Runtime error while a model runs is
not an image's fault (every input a model sees has the same shape; the batch
size is what varies): the run stops with a one-line
:class:`~mura_ens.errors.ModelError` naming the model, finished batches stay
journalled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from ..onnx.inference import run_model
from .models import ModelSpec
from .sessions import SessionConfig, get_session, quiet_run_options

#: Status of an image that was scored.
OK = "ok"
#: Status of an image that no model serves (its body part has no specialist and there is no generalist).
NO_MODEL = "no_model_for_body_part"
#: Status of an image a model gave no probability for (NaN, inf, a value outside [0, 1]).
MODEL_ERROR = "model_error"

#: Test-time augmentations: none, or the mean over the image and its horizontal mirror.
TTAS: tuple[str, ...] = ("none", "flip")

#: Outputs this far outside [0, 1] are float rounding (e.g. of a quantized sigmoid) and clipped;
#: farther ones make the image ``model_error``. The same tolerance as the load-time probe.
PROB_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ImageTask:
    """One image to score: its manifest row number (``index``), file and what models it needs."""

    index: int
    path: str
    study: str
    body_part: str


@dataclass(frozen=True)
class RunnerConfig:
    """Everything a worker needs besides the images; small and picklable."""

    models: tuple[ModelSpec, ...]
    session: SessionConfig = field(default_factory=SessionConfig)
    batch_size: int = 32
    tta: str = "none"

    def models_for(self, body_part: str) -> tuple[ModelSpec, ...]:
        """The models that score images of ``body_part``."""
        return tuple(m for m in self.models if m.serves(body_part))


@dataclass
class PreparedBatch:
    """Decoded and resized pixels of one batch, ready for inference.

    ``rows[i]`` is the output row of ``tasks[i]``; ``pixels[key]`` stacks the
    images resized for the input ``key`` = (size, policy), and
    ``slots[key][j]`` is the position in ``rows`` of ``pixels[key][j]``.
    """

    tasks: list[ImageTask]
    rows: list[dict]
    pixels: dict[tuple[int, str], np.ndarray]
    slots: dict[tuple[int, str], list[int]]


def prepare_batch(tasks: Sequence[ImageTask], config: RunnerConfig) -> PreparedBatch:
    """Decode every image of ``tasks`` once and resize it for each input size its models need.

    A bad image gets its :class:`~mura_ens.data.images.ImageError` status
    (``unreadable``, ``not_an_image``, ``truncated``, ``empty_file``,
    ``too_large``: over the pixel or the byte cap) and the error text; any other exception while reading one
    image is recorded as ``unreadable`` rather than stopping the run. An image
    no model serves is not decoded at all (``no_model_for_body_part``).
    """
    from ..data.images import ImageError, decoded, resize_rgb

    tasks = list(tasks)
    rows: list[dict] = []
    arrays: dict[tuple[int, str], list[np.ndarray]] = {}
    slots: dict[tuple[int, str], list[int]] = {}
    for pos, task in enumerate(tasks):
        row = {"index": task.index, "path": task.path, "status": OK, "error": ""}
        rows.append(row)
        models = config.models_for(task.body_part)
        if not models:
            row["status"] = NO_MODEL
            part = task.body_part or "unknown body part"
            row["error"] = f"no generalist model and no specialist for {part}"
            continue
        try:
            with decoded(task.path) as image:  # its bytes of the shared decode budget, until resized
                resized = {key: resize_rgb(image, *key) for key in dict.fromkeys(m.input_key for m in models)}
        except ImageError as exc:
            row["status"], row["error"] = exc.status, exc.detail or str(exc)
            continue
        except Exception as exc:
            row["status"], row["error"] = "unreadable", f"{type(exc).__name__}: {exc}"
            continue
        for key, pixels in resized.items():
            arrays.setdefault(key, []).append(pixels)
            slots.setdefault(key, []).append(pos)
    stacked = {key: np.stack(stack) for key, stack in arrays.items()}
    return PreparedBatch(tasks=tasks, rows=rows, pixels=stacked, slots=slots)


def infer_batch(prepared: PreparedBatch, config: RunnerConfig) -> list[dict]:
    """Run every model on the prepared images it serves; return the rows with probabilities.

    Each model sees only the ``ok`` images of the body parts it serves, in
    chunks of ``config.batch_size`` (:func:`mura_ens.onnx.inference.run_model`;
    with ``tta="flip"`` each chunk also holds the images' mirrors). Its first
    output is read as one probability per image ((N, 1) or (N,)). Images with
    an unusable output become ``model_error`` (module doc); an ONNX Runtime
    error is a :class:`~mura_ens.errors.ModelError`.
    """
    rows = prepared.rows
    failed: dict[int, list[str]] = {}
    for model in config.models:
        key = model.input_key
        if key not in prepared.pixels:
            continue
        stack, slots = prepared.pixels[key], prepared.slots[key]
        served = [j for j, pos in enumerate(slots) if model.serves(prepared.tasks[pos].body_part)]
        if not served:
            continue
        probs = _model_probabilities(model, stack if len(served) == len(stack) else stack[served], config)
        for j, p in zip(served, probs):
            problem = _unusable(p)
            if problem:
                failed.setdefault(slots[j], []).append(f"model {model.name} {problem}")
            else:
                rows[slots[j]][model.column] = min(max(float(p), 0.0), 1.0)
    for pos, problems in failed.items():
        row = rows[pos]
        for model in config.models:
            row.pop(model.column, None)
        row["status"], row["error"] = MODEL_ERROR, "; ".join(problems)
    return rows


def _model_probabilities(model: ModelSpec, images: np.ndarray, config: RunnerConfig) -> np.ndarray:
    """``model``'s probability of each image (with ``flip``: the mean over the image and its mirror)."""
    batch_size = config.batch_size
    if config.tta == "flip":  # image, mirror, image, mirror...: each session.run holds whole pairs
        images = np.stack([images, images[:, :, ::-1, :]], axis=1).reshape(-1, *images.shape[1:])
        batch_size *= 2
    try:
        probs = run_model(
            get_session(model, config.session),
            images,
            batch_size,
            input_name=model.input_name,
            dtype=np.uint8 if model.input_dtype == "uint8" else np.float32,
            name=model.path,
            run_options=quiet_run_options(),  # the error becomes one line below, not also an ORT log line
        )
    except ModelError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException types
        raise ModelError(_inference_failure(model, images, config, exc)) from None
    if config.tta == "flip":
        probs = (probs[0::2] + probs[1::2]) / 2.0
    return probs


def _unusable(p: float) -> str:
    """Why ``p`` is not a probability ("" when it is one)."""
    if not np.isfinite(p):
        return f"returned {p}"
    if p < -PROB_TOLERANCE or p > 1.0 + PROB_TOLERANCE:
        return f"returned {p:.6g}, not a probability in [0, 1]"
    return ""


def _inference_failure(model: ModelSpec, images: np.ndarray, config: RunnerConfig, exc: Exception) -> str:
    """The one line of an ONNX Runtime error at inference: the model, the batch size, the error."""
    n = min(len(images), config.batch_size * (2 if config.tta == "flip" else 1))
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{model.path}: onnxruntime failed at inference on a batch of {n} images ({model.name}): {text}"


def score_batch(tasks: Sequence[ImageTask], config: RunnerConfig) -> list[dict]:
    """Score one batch of whole studies: decode, resize, infer. The unit sent to any executor."""
    return infer_batch(prepare_batch(tasks, config), config)


def plan_batches(tasks: Iterable[ImageTask], batch_size: int) -> list[list[ImageTask]]:
    """Group tasks into batches of whole studies of at most ``batch_size`` images where possible.

    Studies keep their order of first appearance; a study is never split (a
    study larger than ``batch_size`` is a batch of its own), so a finished
    batch is a set of finished studies for the resume journal. Batches are
    closed before they would exceed ``batch_size``, so that each model runs
    one full ``session.run`` per batch rather than a full one and a small rest.
    """
    by_study: dict[str, list[ImageTask]] = {}
    for task in tasks:
        by_study.setdefault(task.study, []).append(task)
    batches: list[list[ImageTask]] = []
    current: list[ImageTask] = []
    for study_tasks in by_study.values():
        if current and len(current) + len(study_tasks) > batch_size:
            batches.append(current)
            current = []
        current.extend(study_tasks)
    if current:
        batches.append(current)
    return batches
