"""Keras -> ONNX export with tf2onnx, self-describing metadata and a Keras-vs-ORT parity check.

Version facts this code relies on (TF 2.21 / Keras 3.15 / tf2onnx 1.17 /
onnxruntime 1.32):

- ``tf2onnx.convert.from_keras`` needs an explicit ``input_signature`` for a
  Keras 3 model (it cannot infer one); a ``None`` batch dimension in the
  ``TensorSpec`` keeps the batch dynamic. tf2onnx supports opset <= 18; we
  use 17.
- Input/output tensor names depend on the conversion route: readers take
  them from the session, never hard-code them. We name the input ``image``
  and the batch dimension ``N``.
- onnxruntime also lists ``AzureExecutionProvider``: providers are passed
  explicitly.
- A model trained under the ``mixed_float16`` policy is rebuilt in float32
  (same weights) before conversion, so the ONNX graph is plain fp32.

Export fails (:class:`ParityError`, nothing written) when ONNX Runtime and
Keras disagree on a real batch of data images by more than
:data:`PARITY_TOLERANCE` in probability. The metadata written are
:class:`~mura_ens.run_folder.ModelMetadata`; file names are
:mod:`mura_ens.run_folder`'s.

Next to ``model.onnx``, :func:`write_explain` writes the explain artifact (``explain.json``, ``explain.npz``;
``explain.onnx.bin`` only when the feature map had to be converted apart) that scoring draws heatmaps with,
TensorFlow-free (docs/explain.md).

int8 models are made from the exported ``model.onnx`` by
:func:`mura_ens.onnx.quantize.quantize_run` (ONNX Runtime only, no TensorFlow);
``mura-ens export RUN_DIR --quantize int8`` runs it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, UsageError
from ..io import atomic_write_bytes
from ..onnx.inference import cpu_session, run_model
from ..run_folder import (  # file names re-exported: the trainer imports them from here
    BEST_FILE,
    CARD_FILE,
    MODEL_FILE,
    PARITY_BATCH_FILE,
    ModelMetadata,
    as_onnx_props,
    card_metadata,
    read_card,
    read_onnx_props,
    require_run_files,
    update_card,
    write_onnx_props,
)
from .tf_runtime import model_inputs

OPSET = 17
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "image"


class ParityError(ModelError):
    """ONNX Runtime and Keras disagree on the same images by more than the tolerance."""


@dataclass(frozen=True)
class ExportedRun:
    """What :func:`export_run` wrote: the ONNX model, its metadata and the card's new ``export`` section."""

    path: Path
    metadata: ModelMetadata
    export: dict[str, Any]

    @property
    def onnx_max_abs_diff(self) -> float:
        """Largest ONNX-vs-Keras probability difference on the parity images."""
        return self.export["onnx_max_abs_diff"]


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (no TensorFlow needed)."""
    import onnx

    return read_onnx_props(onnx.load(str(path), load_external_data=False))


def float32_model(model):
    """``model`` itself, or a float32 rebuild with the same weights when it uses a mixed policy."""
    from .tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    if not any(_policy_name(layer).startswith("mixed") for layer in _walk_layers(model)):
        return model
    config = _float32_config(model.get_config())
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        clone = model.__class__.from_config(config)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def _policy_name(layer) -> str:
    policy = getattr(layer, "dtype_policy", None)
    return str(getattr(policy, "name", "") or "")


def _walk_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _walk_layers(layer)


def _float32_config(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and str(
            value.get("config", {}).get("name", "")
        ).startswith("mixed"):
            return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _float32_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    if isinstance(value, str) and value.startswith("mixed_"):
        return "float32"
    return value


def convert_to_onnx(model, *, image_size: int, opset: int = OPSET):
    """The ONNX ``ModelProto`` of a float32 Keras model with input ``image`` (N, S, S, 3)."""
    from .tf_runtime import import_tensorflow, silenced_stderr

    tf, _ = import_tensorflow()
    import tf2onnx

    signature = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME),)
    with silenced_stderr():
        model_proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    _name_batch_dimension(model_proto)
    return model_proto


def _name_batch_dimension(model_proto) -> None:
    inputs = list(model_proto.graph.input)
    if len(inputs) != 1:
        raise ModelError(f"exported graph has {len(inputs)} inputs, expected 1")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or dims[0].HasField("dim_value"):
        raise ModelError(f"exported graph input is not (N, H, W, 3) with a dynamic batch: {dims}")
    for value in (*model_proto.graph.input, *model_proto.graph.output):
        dim = value.type.tensor_type.shape.dim
        if len(dim) and not dim[0].HasField("dim_value"):
            dim[0].dim_param = "N"


def set_metadata(model_proto, metadata: ModelMetadata | Mapping[str, str]) -> None:
    """Replace the ``metadata_props`` of ``model_proto`` with ``metadata`` (values as strings)."""
    write_onnx_props(model_proto, metadata)
    model_proto.doc_string = (
        "mura-ens model: float32 (N, H, W, 3) RGB pixels in 0-255 -> (N, 1) probability of abnormality"
    )


def onnx_probabilities(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    """Run ONNX Runtime (CPUExecutionProvider) on ``images`` as one batch; return probabilities (N,)."""
    return run_model(cpu_session(model_bytes), images, max(1, len(images)), name="exported model")


def export_model(
    model,
    path: str | Path,
    *,
    metadata: ModelMetadata | Mapping[str, str],
    parity_images: np.ndarray,
    opset: int = OPSET,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Convert ``model`` to ONNX at ``path`` after checking parity with Keras on ``parity_images``.

    ``metadata``: the model's :class:`~mura_ens.run_folder.ModelMetadata` (or its props as a dict).
    ``parity_images``: float32 (N, S, S, 3) 0-255 real data images (N >= 1).
    Returns ``{"path", "onnx_max_abs_diff", "parity_images", "opset",
    "seconds", "bytes", "input_name", "output_name"}``. Raises
    :class:`ParityError` (and writes nothing) when the largest absolute
    probability difference exceeds ``tolerance``.
    """
    images = np.asarray(parity_images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] < 1 or images.shape[-1] != 3:
        raise ModelError(f"parity check needs a batch of (N, S, S, 3) images, got shape {images.shape}")
    start = time.perf_counter()
    model = float32_model(model)
    image_size = int(images.shape[1])
    model_proto = convert_to_onnx(model, image_size=image_size, opset=opset)
    set_metadata(model_proto, metadata)
    data = model_proto.SerializeToString()
    onnx_prob = onnx_probabilities(data, images)
    keras_prob = np.asarray(model.predict_on_batch(model_inputs(model, images)), dtype=np.float64).reshape(-1)
    diff = float(np.max(np.abs(onnx_prob - keras_prob)))
    if not np.isfinite(diff) or diff > tolerance:
        raise ParityError(
            f"ONNX export of {as_onnx_props(metadata).get('model_name', '?')} fails the parity check: "
            f"max |p_onnx - p_keras| = {diff:.3g} > {tolerance:g} on {len(images)} images"
        )
    atomic_write_bytes(path, data)
    import onnx

    return {
        "path": str(Path(path)),
        "onnx_max_abs_diff": diff,
        "parity_images": int(len(images)),
        "parity_tolerance": tolerance,
        "opset": opset,
        "seconds": round(time.perf_counter() - start, 3),
        "bytes": len(data),
        "input_name": model_proto.graph.input[0].name,
        "output_name": model_proto.graph.output[0].name,
        "onnx_version": onnx.__version__,
    }


def write_explain(
    model, run_dir: str | Path, images: np.ndarray, *, feature_layer: str | None = None, source: str = "plugin"
) -> dict[str, Any]:
    """Write the explain artifact (heatmaps at scoring time, docs/explain.md) next to ``run_dir/model.onnx``:
    model.onnx with the feature map as a second output (or, failing that, converted like it), checked against
    model.onnx on ``images``. Returns the card's ``export.explain`` section.

    Never raises for a model that cannot be explained: ``explain.json`` then records why (``written: false``).
    """
    from .explain_export import export_explain

    batch = np.asarray(images, dtype=np.float32)
    return export_explain(
        float32_model(model),
        run_dir,
        batch,
        convert=convert_to_onnx,
        feature_layer=feature_layer,
        feature_layer_source=source,
    )


def plugin_feature_layer(plugin: Any) -> str | None:
    """The feature layer a plugin names (its optional ``feature_layer`` attribute), for a plugin object or a
    registry name; None when it names none or the plugin is not installed."""
    if isinstance(plugin, str) or plugin is None:
        from ..errors import PluginError
        from ..registry import get_plugin

        try:
            plugin = get_plugin(plugin) if plugin else None
        except PluginError:
            return None
    name = getattr(plugin, "feature_layer", None)
    return name if isinstance(name, str) and name else None


def save_parity_batch(run_dir: str | Path, images: np.ndarray, paths: list[str]) -> Path:
    """Keep the parity images (uint8) and their paths in the run folder."""
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=np.asarray(images).round().astype(np.uint8), paths=np.asarray(paths, dtype=str))
    return atomic_write_bytes(Path(run_dir) / PARITY_BATCH_FILE, buffer.getvalue())


def load_parity_batch(run_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """The images (float32) and paths saved by :func:`save_parity_batch`."""
    with np.load(Path(run_dir) / PARITY_BATCH_FILE) as data:
        return data["images"].astype(np.float32), [str(p) for p in data["paths"]]


def require_finished_run(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path when it is a finished run; one-line :class:`UsageError` for a run being built or
    killed (a hidden ``.<name>.partial-<pid>`` folder, or a run folder without ``card.json``)."""
    from ..run_folder import is_partial_run_dir, is_unfinished_run

    run_dir = Path(run_dir)
    if run_dir.is_dir() and is_partial_run_dir(run_dir):
        raise UsageError(
            f"{run_dir} is an unfinished run (a training still running or killed); it is never exported: "
            "use the finished run folder, or train again"
        )
    if run_dir.is_dir() and is_unfinished_run(run_dir):
        raise UsageError(
            f"{run_dir} is an unfinished run (no {CARD_FILE}: training stopped before the end); train again"
        )
    return run_dir


def export_run(run_dir: str | Path) -> ExportedRun:
    """Re-export ``RUN_DIR/best.keras`` to ``RUN_DIR/model.onnx``; update ``card.json``.

    Metadata come from the card (``onnx_metadata``, parsed as :class:`ModelMetadata`); parity is
    checked on the run's saved batch of real images (``parity_batch.npz``), or on the card's
    parity image paths when that file is gone. Returns the path, metadata and the card's new
    ``export`` section (:class:`ExportedRun`). An unfinished run is refused (:func:`require_finished_run`).
    The explain artifact (heatmaps, :func:`write_explain`) is written again too; its summary is ``export.explain``.
    """
    run_dir = require_finished_run(run_dir)
    run_dir = require_run_files(run_dir, CARD_FILE, BEST_FILE)
    card = read_card(run_dir)
    metadata = card_metadata(card, run_dir=run_dir)
    images, paths = _run_parity_images(run_dir, card, metadata.input_size, metadata.resize_policy)
    plugin = card.get("base_plugin") or card.get("plugin")
    model = float32_model(load_best_model(run_dir / BEST_FILE, plugin=plugin))
    info = export_model(model, run_dir / MODEL_FILE, metadata=metadata, parity_images=images)
    info["parity_paths"] = paths
    chosen = (card.get("config") or {}).get("explain_layer")  # train --explain-layer
    layer = chosen or plugin_feature_layer(plugin)
    info["explain"] = write_explain(
        model, run_dir, images, feature_layer=layer, source="option" if chosen else "plugin"
    )
    update_card(run_dir, {"export": info, "onnx_max_abs_diff": info["onnx_max_abs_diff"]})
    return ExportedRun(path=run_dir / MODEL_FILE, metadata=metadata, export=info)


def _run_parity_images(run_dir: Path, card: dict, image_size: int, resize_policy: str) -> tuple[np.ndarray, list[str]]:
    if (run_dir / PARITY_BATCH_FILE).exists():
        images, paths = load_parity_batch(run_dir)
        if images.shape[1:] == (image_size, image_size, 3) and len(images):
            return images, paths
    from .pipeline import load_batch

    paths = card.get("export", {}).get("parity_paths") or []
    images, used = load_batch(paths, image_size=image_size, resize_policy=resize_policy, limit=len(paths) or 1)
    if not len(images):
        raise UsageError(
            f"{run_dir}: no images for the parity check ({PARITY_BATCH_FILE} missing and the card's image paths unreadable)"
        )
    return images, used


def save_inference_model(model, path: str | Path) -> Path:
    """Save ``model`` (loaded with ``compile=False``: no optimizer) to ``path`` (``.keras``), atomically.

    What a finished run's ``best.keras`` holds: the architecture and the weights, which is all that
    ``export`` and ``--init-from`` read. The Adam state (two more copies of every weight, about two
    thirds of the file) is dropped: nothing resumes a finished run's training (a killed run is
    retrained, see :mod:`.atomic_run`), and a fine-tune starts a fresh optimizer anyway.
    """
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.slim.tmp.keras")  # Keras insists on the .keras suffix
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_best_model(path: str | Path, *, plugin: str | None = None):
    """Load a ``best.keras`` for inference (``compile=False``).

    The run's plugin is imported first (through the registry) so that any
    custom layers it registers are known; a missing plugin is not an error
    for models made of stock Keras layers.
    """
    from .tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    if plugin:
        from ..errors import PluginError
        from ..registry import get_plugin

        try:
            get_plugin(plugin)
        except PluginError:
            pass
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # a damaged or foreign file: Keras raises ValueError, OSError, BadZipFile, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UsageError(
            f"{path} cannot be loaded ({type(exc).__name__}: {first[:300]}): the file is damaged or not a Keras "
            "model; retrain the run (mura-ens train ... --overwrite) or put its best.keras back"
        ) from exc
