"""Heatmaps of a run's model with ONNX Runtime and NumPy only: :func:`load_explainer` -> :class:`Explainer`.

The explain graph gives the feature map A (N, h, w, C) and the probability; the head
(:mod:`mura_ens.explain.head`) gives the channel weights, and every map is::

    map = ReLU(sum_k alpha_k * A[..., k]),   alpha_k = mean over (i, j) of d logit / d A[i, j, k]

(Grad-CAM on the abnormal logit, the pre-sigmoid value). For a ``cam`` head (global average pooling -> one
dense unit, dropout aside) ``alpha_k = w_k / (h * w)`` is read from the dense kernel -- exactly the Grad-CAM
of that head, and Zhou et al.'s class activation map divided by ``h * w``. Maps are returned raw (in logit
units per feature-map cell); :func:`normalise` scales one to [0, 1] for display.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..run_folder import EXPLAIN_GRAPH_FILE, EXPLAIN_WEIGHTS_FILE
from .artifact import CannotExplain, ExplainSpec, fp32_model, read_spec
from .head import Head, check_layers

#: Images per ONNX Runtime call (bounds memory; a DenseNet201 feature map at 224 px is 7x7x1920 floats).
BATCH_SIZE = 16


@dataclass(frozen=True)
class Heatmaps:
    """What :meth:`Explainer.heatmaps` returns: ``probabilities`` (N,) float64 from the explain graph (the
    model's own probability) and ``maps`` (N, h, w) float32, the raw maps (module docstring)."""

    probabilities: np.ndarray
    maps: np.ndarray


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] for display: divided by its maximum (0 stays 0; an all-zero or non-finite map
    gives zeros). A stack (N, h, w) is scaled map by map. float32."""
    maps = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    maps = np.maximum(maps, 0.0)
    if maps.ndim == 3:
        top = maps.max(axis=(1, 2), initial=0.0, keepdims=True)
    else:
        top = np.asarray(maps.max(initial=0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(top > 0, maps / np.where(top > 0, top, 1.0), 0.0)
    return scaled.astype(np.float32)


def grad_cam(features: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``ReLU(sum_k alpha[n, k] * features[n, :, :, k])``: (N, h, w, C) and (N, C) -> (N, h, w) float32."""
    maps = np.einsum("nhwc,nc->nhw", np.asarray(features, dtype=np.float64), np.asarray(alpha, dtype=np.float64))
    return np.maximum(maps, 0.0).astype(np.float32)


class Explainer:
    """Heatmaps for one model. Build with :func:`load_explainer`.

    ``method``: ``"cam"`` or ``"gradcam"``; ``input_size``: the square side the images must have;
    ``feature_layer``: the Keras layer whose output is the feature map; ``model_path``: the model explained.
    """

    def __init__(self, spec: ExplainSpec, head: Head, session: Any, model_path: Path):
        self.spec = spec
        self.head = head
        self.session = session
        self.model_path = model_path
        self.method = spec.method
        self.input_size = spec.input_size
        self.feature_layer = spec.feature_layer

    def __repr__(self) -> str:
        return f"<Explainer {self.method} {self.model_path} feature layer {self.feature_layer!r}>"

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feature maps (N, h, w, C) float32 and probabilities (N,) float64 of ``images`` (N, S, S, 3)."""
        batch = self._checked(images)
        features, probs = [], []
        for start in range(0, len(batch), BATCH_SIZE):
            chunk = np.ascontiguousarray(batch[start : start + BATCH_SIZE], dtype=np.float32)
            a, p = self.session.run(
                [self.spec.feature_output, self.spec.probability_output], {self.spec.input_name: chunk}
            )
            features.append(np.asarray(a, dtype=np.float32))
            probs.append(np.asarray(p, dtype=np.float64).reshape(len(chunk), -1)[:, 0])
        h, w, c = self.spec.feature_shape
        if not features:
            return np.zeros((0, h, w, c), np.float32), np.zeros(0, np.float64)
        return np.concatenate(features), np.concatenate(probs)

    def channel_weights(self, features: np.ndarray) -> np.ndarray:
        """``alpha`` (N, C): the dense kernel over h*w for ``cam``, else the spatial mean of the logit's gradient."""
        if self.method == "cam":
            dense = next(i for i, layer in enumerate(self.head.layers) if layer["kind"] == "dense")
            kernel = self.head.weight(dense, "kernel")[:, 0]
            area = features.shape[1] * features.shape[2]
            return np.broadcast_to(kernel / area, (len(features), len(kernel)))
        _, gradients = self.head.gradients(features)
        return gradients.mean(axis=(1, 2))

    def heatmaps(self, images: np.ndarray) -> Heatmaps:
        """Raw maps (N, h, w) and probabilities (N,) of ``images``: uint8, or float32 in 0-255, (N, S, S, 3)
        with S = :attr:`input_size` -- exactly what the scorer feeds the model."""
        features, probabilities = self.features(images)
        maps = grad_cam(features, self.channel_weights(features))
        return Heatmaps(probabilities=probabilities, maps=maps)

    def _checked(self, images: np.ndarray) -> np.ndarray:
        batch = np.asarray(images)
        size = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ModelError(
                f"{self.model_path}: heatmaps need images of shape (N, {size}, {size}, 3), got {batch.shape}"
            )
        return batch


def load_explainer(model_path: str | Path) -> Explainer:
    """The :class:`Explainer` of ``model_path`` (a run's ``model.onnx`` or ``model.int8.onnx``).

    Reads the explain artifact in the same folder, checks it belongs to this model (sha256, or the int8
    model's name and plugin), loads the head's weights and opens a CPU ONNX Runtime session on the explain
    graph: the fp32 ``model.onnx`` plus its feature-map output, rebuilt in memory (an int8 model's heatmaps
    come from its fp32 twin), or the separately converted ``explain.onnx.bin`` where export wrote one.
    Raises :class:`CannotExplain` (one-line reason, naming ``mura-ens export RUN_DIR`` where it helps).
    """
    from ..onnx.inference import cpu_session

    model_path = Path(model_path)
    spec = read_spec(model_path)
    folder = model_path.parent
    head = _load_head(folder / EXPLAIN_WEIGHTS_FILE, spec)
    graph = folder / EXPLAIN_GRAPH_FILE if spec.feature_tensor is None else fp32_model(model_path)
    try:
        session = cpu_session(explain_graph_bytes(model_path, spec))
    except CannotExplain:
        raise
    except Exception as exc:  # a missing or broken graph is one reason line
        reason = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise CannotExplain(f"cannot load {graph} ({reason}): run `mura-ens export {folder}` to rewrite it") from None
    outputs = {o.name for o in session.get_outputs()}
    inputs = [i.name for i in session.get_inputs()]
    if {spec.feature_output, spec.probability_output} - outputs or inputs != [spec.input_name]:
        raise CannotExplain(f"{graph} does not have the inputs/outputs its explain.json names")
    return Explainer(spec, head, session, model_path)


def explain_graph_bytes(model_path: Path, spec: ExplainSpec) -> bytes:
    """The serialized explain graph of ``model_path``'s artifact ``spec``: ``explain.onnx.bin`` where export wrote
    one, else the fp32 model with the feature tensor ``spec`` names added as an output, rebuilt from exactly the
    bytes whose sha256 the artifact records. ``OSError``/``ValueError``, or :class:`CannotExplain` when the fp32
    model is missing or another one."""
    from .graph import rebuild_explain_graph

    if spec.feature_tensor is None or spec.feature_layout is None:
        return (model_path.parent / EXPLAIN_GRAPH_FILE).read_bytes()
    fp32 = fp32_model(model_path)
    if not fp32.is_file():
        raise CannotExplain(
            f"heatmaps of {model_path.name} are drawn with its fp32 twin {fp32.name}, which is missing: "
            f"run `mura-ens export {model_path.parent}` to write it again"
        )
    model_bytes = fp32.read_bytes()
    if hashlib.sha256(model_bytes).hexdigest() != spec.model_sha256:  # replaced since read_spec checked it
        raise CannotExplain(f"{fp32} changed while loading: run `mura-ens export {model_path.parent}` to renew it")
    return rebuild_explain_graph(model_bytes, spec.feature_tensor, spec.feature_layout, spec.feature_shape)


def _load_head(path: Path, spec: ExplainSpec) -> Head:
    try:
        with np.load(path) as data:
            weights = {key: np.asarray(data[key], dtype=np.float64) for key in data.files}
        check_layers(spec.layers, weights)
    except (OSError, ValueError) as exc:
        raise CannotExplain(
            f"{path} is missing or unusable ({exc}): run `mura-ens export {path.parent}` to rewrite it"
        ) from None
    return Head(layers=spec.layers, weights=weights)
