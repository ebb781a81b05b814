"""int8 export: ONNX Runtime static quantization of a run's ``model.onnx`` into ``model.int8.onnx``.

Only ONNX Runtime, onnx, numpy, pandas and Pillow: a user with the scoring
install can quantize a run folder. The recipe (measured on a 2-core AVX-512
VNNI CPU, docs in FACTS.md):

- QDQ format, **uint8 activations** (asymmetric, per tensor) and **int8
  weights** (symmetric, per output channel): the combination ONNX Runtime's
  VNNI kernels are fastest with; int8 activations were half as fast, dynamic
  quantization ten times slower.
- MinMax calibration on images of the run's **training** fold, re-derived
  from ``card.json`` (:class:`~mura_ens.run_folder.FoldRecipe`: data source,
  split seed, validation fraction, body parts, image cap) with the trainer's
  own :func:`~mura_ens.data.training_rows.model_rows`, and checked against the
  recorded manifest hash.
- Before quantizing, :mod:`mura_ens.onnx.rewrite` turns the BatchNorm
  Mul/Add pairs that tf2onnx leaves after ``Concat`` into 1x1 depthwise
  convolutions (integer convolutions once quantized), folds the zero
  ``Pad`` before a ``MaxPool``, pools before DenseNet's pointwise transition
  convolutions and moves the input normalisation after the NHWC->NCHW
  transpose, after a parity check against the fp32 model.
- Stay in float: the per-pixel ops between the image input and the first
  convolution (normalisation, transpose; as QLinearMul/QLinearAdd they cost
  ~7% of DenseNet201's int8 time) and the final ``MatMul``/``Gemm`` and
  ``Sigmoid`` (negligible work, and the one place where rounding moves the
  probability directly).

:func:`quantize_run` then scores the run's test fold with both models
(:func:`~mura_ens.onnx.inference.run_model`) and records their agreement
(study-level AUC and kappa of each, their differences, image probability
differences, speed) in ``card.json``; it returns a :class:`QuantizedRun`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, UsageError
from ..run_folder import (
    CALIBRATION_IMAGES_PROP,
    CARD_FILE,
    INT8_FILE,
    MODEL_FILE,
    QUANTIZATION_PROP,
    FoldRecipe,
    ModelMetadata,
    as_onnx_props,
    read_card,
    read_onnx_props,
    require_run_files,
    update_card,
    write_onnx_props,
)
from .inference import cpu_session, run_model
from .runtime import SessionConfig, session_options
from .spec import load_model_spec

#: Value of the ``quantization`` metadata prop of every model this module writes.
QUANTIZATION = "int8-static-qdq"
#: Images per evaluation batch (as in scoring).
BATCH_SIZE = 16
#: Images per calibration batch: the calibration session runs unoptimised, keeping every activation
#: of the batch (DenseNet201 at 256 px: about 0.7 GB per image), and min/max do not depend on it.
CALIBRATION_BATCH_SIZE = 4
#: Node types never quantized: the classifier's logit and its sigmoid.
FLOAT_OP_TYPES = ("MatMul", "Gemm", "Sigmoid")
_INT8_DOC = (
    "mura-ens model, int8 (QDQ, uint8 activations, int8 per-channel weights): "
    "float32 (N, H, W, 3) RGB pixels in 0-255 -> (N, 1) probability of abnormality"
)
#: The metric keys of each model in the agreement section.
_METRIC_KEYS = ("n", "n_positive", "auc", "kappa", "accuracy", "sensitivity", "specificity")


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_model` wrote and how."""

    path: Path
    metadata: dict[str, str]
    calibration_images: int
    graph_rewrite: dict
    seconds: float
    bytes: int


@dataclass(frozen=True)
class QuantizedRun:
    """What :func:`quantize_run` wrote: the int8 model and the ``int8`` section it recorded in ``card.json``."""

    path: Path
    section: dict[str, Any]

    @property
    def agreement(self) -> dict[str, Any] | None:
        """The int8-vs-fp32 agreement on the run's test (else val) fold; None when not evaluated."""
        return self.section.get("agreement")


class _ImageReader:
    """A ``CalibrationDataReader``: one batch of images per ``get_next``, as the float32 feed; counts the images."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name = input_name
        self._batches = iter(batches)
        self.count = 0

    def get_next(self):
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += len(batch)
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self):  # pragma: no cover - ORT's calibrators read once
        raise RuntimeError("calibration data can be read once")


def _batches(images: np.ndarray | Iterable[np.ndarray], size: int = BATCH_SIZE) -> Iterator[np.ndarray]:
    """Batches of at most ``size`` images from an array (N, S, S, 3) or an iterable of such arrays/images."""
    if isinstance(images, np.ndarray):
        for start in range(0, len(images), size):
            yield images[start : start + size]
        return
    pending: list[np.ndarray] = []
    for item in images:
        item = np.asarray(item)
        pending.extend(item if item.ndim == 4 else [item])
        while len(pending) >= size:
            yield np.stack(pending[:size])
            pending = pending[size:]
    if pending:
        yield np.stack(pending)


def quantize_model(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration: np.ndarray | Iterable[np.ndarray],
    *,
    metadata: ModelMetadata | Mapping[str, str] | None = None,
    rewrite: bool = True,
) -> QuantizeResult:
    """Statically quantize the fp32 model at ``fp32_path`` into ``int8_path`` (written atomically).

    Parameters
    ----------
    fp32_path, int8_path
        The float model and where to write the QDQ int8 model.
    calibration
        uint8-range images (N, S, S, 3), as one array or an iterable of
        arrays or single images; consumed once.
    metadata
        ``metadata_props`` of the result; default: those of the fp32 model.
        ``quantization`` (= :data:`QUANTIZATION`) and ``calibration_images``
        are added.
    rewrite
        Apply :func:`mura_ens.onnx.rewrite.rewrite_for_inference` first (with
        its parity check on the first calibration batch).

    Raises
    ------
    ModelError
        The fp32 model cannot be read, the rewrite fails its parity check,
        or there are no calibration images.
    """
    from ..io import atomic_write_bytes

    start = time.perf_counter()
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    model = _load_model(fp32_path)
    props = as_onnx_props(metadata) if metadata is not None else read_onnx_props(model)
    initializers = {t.name for t in model.graph.initializer}
    input_name = next(i.name for i in model.graph.input if i.name not in initializers)

    batches = _batches(calibration, CALIBRATION_BATCH_SIZE)
    first = next(batches, None)
    if first is None or not len(first):
        raise ModelError(f"{fp32_path}: no calibration images")
    rewrite_info: dict = {"applied": False}
    if rewrite:
        model, rewrite_info = _checked_rewrite(model, first.astype(np.float32), fp32_path)

    def all_batches():
        yield first
        yield from batches

    reader = _ImageReader(input_name, all_batches())
    result = _quantize_static(model, reader)
    props[QUANTIZATION_PROP] = QUANTIZATION
    props[CALIBRATION_IMAGES_PROP] = str(reader.count)
    write_onnx_props(result, props)
    result.doc_string = _INT8_DOC
    data = result.SerializeToString()
    atomic_write_bytes(int8_path, data)
    return QuantizeResult(
        path=int8_path,
        metadata=props,
        calibration_images=reader.count,
        graph_rewrite=rewrite_info,
        seconds=round(time.perf_counter() - start, 3),
        bytes=len(data),
    )


def _load_model(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def _checked_rewrite(model, sample: np.ndarray, fp32_path: Path) -> tuple[Any, dict]:
    """The rewritten model (or ``model`` when nothing changes) and the card's ``graph_rewrite`` record.

    The rewrite must keep the probabilities on ``sample`` (the first calibration batch) within
    :data:`~mura_ens.onnx.rewrite.REWRITE_TOLERANCE`, else :class:`ModelError`.
    """
    from .rewrite import REWRITE_TOLERANCE, check_rewrite_parity, rewrite_for_inference

    rewritten, summary = rewrite_for_inference(model)
    if summary.changed:
        summary.parity_images = len(sample)
        summary.max_abs_diff = check_rewrite_parity(model, rewritten, sample)
        if not summary.max_abs_diff <= REWRITE_TOLERANCE:
            raise ModelError(
                f"{fp32_path}: graph rewrite changes outputs by {summary.max_abs_diff:.3g} > "
                f"{REWRITE_TOLERANCE:g}; quantize with rewrite=False"
            )
        model = rewritten
    return model, {"applied": summary.changed, **summary.as_dict()}


def _quantize_static(model, reader: _ImageReader):
    """ORT's pre-processing and QDQ static quantization of ``model`` calibrated on ``reader``; the int8 ModelProto."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory(prefix="mura-ens-int8-") as tmp:
        source, prepared, quantized = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        onnx.save(model, str(source))
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        prepared_model = onnx.load(str(prepared))
        if _name_nodes(prepared_model):  # nodes_to_exclude matches by name: "" would match every unnamed node
            onnx.save(prepared_model, str(prepared))
        keep_float = [n.name for n in prepared_model.graph.node if n.op_type in FLOAT_OP_TYPES]
        keep_float += _input_chain(prepared_model)
        del prepared_model
        quantize_static(
            str(prepared),
            str(quantized),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,  # VNNI accumulates 8-bit products without saturation
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return onnx.load(str(quantized))


#: Cheap per-pixel ops that may sit between the image input and the first convolution.
_INPUT_CHAIN_OPS = ("Mul", "Add", "Sub", "Div", "Transpose", "Cast")


def _input_chain(model) -> list[str]:
    """Names of the per-pixel ops from the image input up to the first other op (normalisation, layout).

    Kept in float: as int8 ops (QLinearMul/QLinearAdd on every input pixel)
    they cost several times their float time, and the first convolution
    quantizes their output anyway.
    """
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input if i.name not in initializers}
    produced_by_chain = set(graph_inputs)
    chain = []
    for node in model.graph.node:  # topological order
        data = [i for i in node.input if i and i not in initializers]
        if node.op_type in _INPUT_CHAIN_OPS and data and all(i in produced_by_chain for i in data):
            chain.append(node.name)
            produced_by_chain.update(node.output)
    return chain


def _name_nodes(model) -> int:
    """Give every unnamed node a unique name; return how many were named."""
    taken = {node.name for node in model.graph.node if node.name}
    named = 0
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


# --------------------------------------------------------------------------- run folders


def run_folds(card: Mapping, *, data: str | os.PathLike | None = None):
    """The run's labelled manifest rows with their ``fold`` (train / val / test), as training saw them.

    Re-derived from ``card.json`` (:class:`~mura_ens.run_folder.FoldRecipe`): the
    data source (or ``data`` when the data moved), the split seed and validation
    fraction (:func:`mura_ens.data.split.assign_folds`), then the body parts the
    model serves and the ``max_images`` cap with the trainer's own
    :func:`mura_ens.data.training_rows.model_rows`. The manifest hash must match the
    card's, so calibration never silently runs on other data.
    """
    from ..data.training_rows import load_training_data, model_rows  # pandas: deferred

    recipe = FoldRecipe.from_card(card)
    source = data if data is not None else recipe.source
    if not source or source == "<DataFrame>":
        raise UsageError(
            "card.json does not say where the training data are (trained from an in-memory manifest?); "
            "pass the data source explicitly (mura-ens export --data PATH; data=PATH in Python)"
        )
    if not Path(source).exists():
        raise UsageError(f"training data not found: {source} (moved? pass --data PATH)")
    training = load_training_data(source, val_fraction=recipe.val_fraction, seed=recipe.split_seed)
    recorded = recipe.manifest_sha256
    if recorded and recorded != training.manifest_sha256:
        raise UsageError(
            f"the data at {source} are not the ones this model was trained on "
            f"(manifest sha256 {training.manifest_sha256[:12]}... != card's {str(recorded)[:12]}...)"
        )
    return model_rows(training.frame, recipe.body_parts, recipe.max_images, seed=recipe.seed)


def calibration_sample(
    paths: Sequence[str], count: int, *, image_size: int, resize_policy: str, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Up to ``count`` images of ``paths`` in a seeded random order, decoded and resized (uint8), and their paths.

    Images that fail to load are skipped (the next one in the order is taken).
    """
    from ..data.images import ImageError, load_image

    if count < 1:
        raise UsageError(f"calibration images must be >= 1, got {count}")
    order = np.random.default_rng(seed).permutation(len(paths))
    images: list[np.ndarray] = []
    used: list[str] = []
    for index in order:
        try:
            images.append(load_image(paths[index], image_size, resize_policy))
        except ImageError:
            continue
        used.append(str(paths[index]))
        if len(images) == count:
            break
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8), []
    return np.stack(images), used


def _group_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    import warnings

    from ..metrics import NO_BOOTSTRAP, binary_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one class -> auc None, reported as such
        result = binary_metrics(labels, probs, threshold=threshold, bootstrap=NO_BOOTSTRAP)
    return {key: result[key] for key in _METRIC_KEYS}


def _difference(a, b):
    return None if a is None or b is None else float(a - b)


@dataclass
class _Scores:
    """Both models' image probabilities (NaN where the image did not load) and inference seconds."""

    probs: dict[str, np.ndarray]
    seconds: dict[str, float]
    not_loaded: int


def _score_both(
    sessions: Mapping[str, Any], paths: Sequence[str], *, image_size: int, resize_policy: str, batch_size: int
) -> _Scores:
    """Run every session on the same decoded pixels, ``batch_size`` paths at a time; time inference only."""
    from ..data.images import ImageError, load_image

    scores = _Scores({key: np.full(len(paths), np.nan) for key in sessions}, dict.fromkeys(sessions, 0.0), 0)
    for start in range(0, len(paths), batch_size):
        images, slots = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                images.append(load_image(paths[i], image_size, resize_policy))
                slots.append(i)
            except ImageError:
                scores.not_loaded += 1
        if not images:
            continue
        batch = np.stack(images).astype(np.float32)
        for key, session in sessions.items():
            tick = time.perf_counter()
            scores.probs[key][slots] = run_model(session, batch, len(batch), name=f"{key} model")
            scores.seconds[key] += time.perf_counter() - tick
    return scores


def _agreement_metrics(rows, scores: _Scores, threshold: float) -> dict:
    """Study- and image-level metrics of both models on the images that loaded, and how far apart they are."""
    import pandas as pd

    from ..metrics import study_probabilities

    ok = np.isfinite(scores.probs["fp32"])
    frame = pd.DataFrame(
        {
            "study": rows["study"].astype(str).to_numpy()[ok],
            "label": pd.to_numeric(rows["label"]).to_numpy(dtype=np.float64, na_value=np.nan)[ok],
            "fp32": scores.probs["fp32"][ok],
            "int8": scores.probs["int8"][ok],
        }
    )
    studies = study_probabilities(frame, prob_cols=("fp32", "int8"))
    levels = {}
    for level, table in (("study", studies), ("image", frame)):
        labelled = table.loc[table["label"].notna()]
        labels = labelled["label"].to_numpy(dtype=np.int64)
        levels[level] = {key: _group_metrics(labels, labelled[key].to_numpy(), threshold) for key in ("fp32", "int8")}
    image_diff = np.abs(frame["int8"].to_numpy() - frame["fp32"].to_numpy())
    same_prediction = (studies["fp32"] > threshold) == (studies["int8"] > threshold)
    study, image = levels["study"], levels["image"]
    return {
        "n_studies": int(len(studies)),
        "threshold": float(threshold),
        "study": study,
        "image": image,
        "study_auc_diff": _difference(study["int8"]["auc"], study["fp32"]["auc"]),
        "study_kappa_diff": _difference(study["int8"]["kappa"], study["fp32"]["kappa"]),
        "study_prediction_agreement": float(same_prediction.mean()),
        "image_max_abs_prob_diff": float(image_diff.max()),
        "image_mean_abs_prob_diff": float(image_diff.mean()),
        "study_max_abs_prob_diff": float(np.abs(studies["int8"] - studies["fp32"]).max()),
    }


def int8_agreement(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    rows,
    *,
    image_size: int,
    resize_policy: str = "stretch",
    threshold: float = 0.5,
    batch_size: int = BATCH_SIZE,
) -> dict:
    """How the int8 model agrees with the fp32 one on ``rows`` (path, study, label): metrics and differences.

    Both models score the same decoded pixels, with the session options
    scoring uses. Returns image-level probability differences (max, mean),
    study-level (mean of image probabilities, as in the MURA paper,
    :func:`mura_ens.metrics.study_probabilities`) AUC, kappa and accuracy of
    each model and their differences (int8 minus fp32), the share of studies
    whose prediction agrees, and each model's images/s on these images.
    """
    sessions = {
        key: cpu_session(str(path), session_options(SessionConfig()))
        for key, path in (("fp32", fp32_path), ("int8", int8_path))
    }
    paths = rows["path"].astype(str).tolist()
    scores = _score_both(sessions, paths, image_size=image_size, resize_policy=resize_policy, batch_size=batch_size)
    n_ok = int(np.isfinite(scores.probs["fp32"]).sum())
    if not n_ok:
        raise UsageError("no evaluation image could be loaded: cannot measure int8 agreement")
    rate = {key: (n_ok / seconds if seconds > 0 else None) for key, seconds in scores.seconds.items()}
    return {
        "n_images": n_ok,
        "n_images_not_loaded": scores.not_loaded,
        **_agreement_metrics(rows, scores, threshold),
        "fp32_images_per_s": rate["fp32"],
        "int8_images_per_s": rate["int8"],
        "speedup": (rate["int8"] / rate["fp32"]) if rate["fp32"] and rate["int8"] else None,
        "batch_size": int(batch_size),
    }


def quantize_run(
    run_dir: str | os.PathLike,
    *,
    calibration_images: int = 200,
    seed: int = 0,
    data: str | os.PathLike | None = None,
    rewrite: bool = True,
    evaluate: bool = True,
) -> QuantizedRun:
    """Write ``RUN_DIR/model.int8.onnx`` from ``RUN_DIR/model.onnx`` and record it in ``card.json``.

    Calibration uses ``calibration_images`` images of the run's training
    fold (:func:`run_folds`), drawn with ``seed``. The int8 model carries
    the fp32 model's metadata plus ``quantization`` and
    ``calibration_images``. With ``evaluate`` (the default), both models
    score the run's test fold (the validation fold when there is no test
    fold) and the agreement goes into the card's ``int8`` section
    (:func:`int8_agreement`). ``data`` replaces the data source recorded in
    the card (same data, moved). Returns the int8 model's path and the
    card's new ``int8`` section (:class:`QuantizedRun`).

    Raises :class:`~mura_ens.errors.UsageError` for a folder that is not a
    run folder, data that cannot be found or differ from the training data,
    or no loadable training image.
    """
    run_dir = require_run_files(run_dir, CARD_FILE, MODEL_FILE)
    if calibration_images < 1:
        raise UsageError(f"--calibration-images must be >= 1, got {calibration_images}")
    card = read_card(run_dir)
    spec = load_model_spec(run_dir / MODEL_FILE)
    rows = run_folds(card, data=data)
    images = _calibration_images(run_dir, rows, spec, count=calibration_images, seed=seed)
    result = quantize_model(run_dir / MODEL_FILE, run_dir / INT8_FILE, images, rewrite=rewrite)
    source = str(data) if data is not None else (card.get("data") or {}).get("source")
    section = _int8_section(result, requested=calibration_images, seed=seed, source=source)
    if evaluate:
        fold = "test" if (rows["fold"] == "test").any() else "val"
        agreement = int8_agreement(
            run_dir / MODEL_FILE,
            result.path,
            rows.loc[rows["fold"] == fold],
            image_size=spec.input_size,
            resize_policy=spec.resize_policy,
            threshold=spec.threshold,
        )
        section["agreement"] = {"fold": fold, **agreement}
    update_card(run_dir, {"int8": section})  # re-reads the card: keeps anything written meanwhile
    return QuantizedRun(path=result.path, section=section)


def _calibration_images(run_dir: Path, rows, spec, *, count: int, seed: int) -> np.ndarray:
    """``count`` decoded images of the run's training fold, for :func:`quantize_model`; UsageError when none."""
    train_paths = rows.loc[rows["fold"] == "train", "path"].astype(str).tolist()
    if not train_paths:
        raise UsageError(f"{run_dir}: the run's training fold is empty; nothing to calibrate on")
    images, _ = calibration_sample(
        train_paths, count, image_size=spec.input_size, resize_policy=spec.resize_policy, seed=seed
    )
    if not len(images):
        raise UsageError(f"{run_dir}: none of the {len(train_paths)} training images could be loaded for calibration")
    return images


def _int8_section(result: QuantizeResult, *, requested: int, seed: int, source: str | None) -> dict[str, Any]:
    """The card's ``int8`` section for ``result`` (docs/INTERNALS.md), without the agreement."""
    from datetime import datetime

    return {
        "path": INT8_FILE,
        "quantization": QUANTIZATION,
        "format": "QDQ",
        "activations": "uint8, asymmetric, per tensor",
        "weights": "int8, symmetric, per output channel",
        "float_ops": list(FLOAT_OP_TYPES),
        "bytes": result.bytes,
        "calibration": {
            "method": "MinMax",
            "fold": "train",
            "images": result.calibration_images,
            "requested": int(requested),
            "seed": int(seed),
            "source": source,
        },
        "graph_rewrite": result.graph_rewrite,
        "seconds": result.seconds,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {pkg: _version(pkg) for pkg in ("onnxruntime", "onnx")},
    }


def _version(package: str) -> str | None:
    from importlib import metadata as importlib_metadata

    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None
