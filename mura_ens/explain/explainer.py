"""Heatmaps of a run's model with ONNX Runtime and NumPy only: :func:`load_explainer` -> :class:`Explainer`.

The explain graph gives the feature map A (N, h, w, C) and the probability; the head
(:mod:`mura_ens.explain.head`) gives G = d logit / d A (N, h, w, C) on the abnormal logit (the pre-sigmoid
value) by a NumPy backward pass, and a map is one of :data:`MAP_METHODS`::

    xgradcam:  map = ReLU(sum_k alpha_k * A[..., k]),  alpha_k = sum_ij A[i, j, k] G[i, j, k] / sum_ij A[i, j, k]
    hirescam:  map[i, j] = ReLU(sum_k G[i, j, k] * A[i, j, k])
    gradcam:   map = ReLU(sum_k alpha_k * A[..., k]),  alpha_k = mean over (i, j) of G[i, j, k]

XGrad-CAM (Fu et al., 2020; the default) weights each cell's gradient by the channel's own activation there,
HiResCAM (Draelos & Carin, 2020) keeps each cell's own gradient, Grad-CAM averages it evenly. They differ when
the target map is an inner one (custom_cnn's 8x8 map at 64 px is followed by two more cells). The default was
chosen on the demo's calibration seeds 100-102: ensemble pointing game 3.73x / 3.25x / 3.02x the random
baseline with XGrad-CAM, 3.19x / 3.13x / 3.02x with HiResCAM, 3.62x / 2.93x / 2.43x with Grad-CAM
(docs/explain.md). For a ``cam`` head (global average pooling -> one dense unit, dropout aside) G = w_k / (h * w)
at every cell, so all three are Zhou et al.'s class activation map divided by ``h * w``, read from the dense
kernel without a backward pass.
Maps are returned raw (in logit units per feature-map cell); :func:`normalise` scales one to [0, 1] for display.
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

#: How a map is made from the feature map and its gradient (module docstring); the first is the default.
MAP_METHODS: tuple[str, ...] = ("xgradcam", "hirescam", "gradcam")
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


def hires_cam(features: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """``ReLU(sum_k gradients[n, i, j, k] * features[n, i, j, k])``: two (N, h, w, C) -> (N, h, w) float32."""
    product = np.asarray(features, dtype=np.float64) * np.asarray(gradients, dtype=np.float64)
    return np.maximum(product.sum(axis=-1), 0.0).astype(np.float32)


def xgrad_cam(features: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """XGrad-CAM: ``ReLU(sum_k alpha[n, k] * features[n, :, :, k])`` with ``alpha[n, k]`` the gradient averaged
    over the map weighted by the channel's own activation, ``sum_ij A * G / sum_ij A`` (0 for a silent channel)."""
    features = np.asarray(features, dtype=np.float64)
    mass = features.sum(axis=(1, 2))
    weighted = (features * np.asarray(gradients, dtype=np.float64)).sum(axis=(1, 2))
    alpha = np.divide(weighted, mass, out=np.zeros_like(weighted), where=np.abs(mass) > 0)
    return grad_cam(features, alpha)


def check_map_method(method: str) -> str:
    """``method`` if it is one of :data:`MAP_METHODS`, else ValueError naming the choices."""
    if method not in MAP_METHODS:
        raise ValueError(f"unknown heatmap method {method!r}: choose one of {', '.join(MAP_METHODS)}")
    return method


class Explainer:
    """Heatmaps for one model. Build with :func:`load_explainer`.

    ``method``: the artifact's head kind, ``"cam"`` or ``"gradcam"`` (needs the backward pass);
    ``map_method``: one of :data:`MAP_METHODS`, how :meth:`heatmaps` makes a map (the same for a ``cam`` head);
    ``input_size``: the square side the images must have; ``feature_layer``: the Keras layer whose output is
    the feature map; ``model_path``: the model explained.
    """

    def __init__(self, spec: ExplainSpec, head: Head, session: Any, model_path: Path, map_method: str = "xgradcam"):
        self.map_method = check_map_method(map_method)
        self.spec = spec
        self.head = head
        self.session = session
        self.model_path = model_path
        self.method = spec.method
        self.input_size = spec.input_size
        self.feature_layer = spec.feature_layer

    def __repr__(self) -> str:
        return f"<Explainer {self.map_name} {self.model_path} feature layer {self.feature_layer!r}>"

    @property
    def map_name(self) -> str:
        """How the maps are made, as a reader knows it: CAM, XGrad-CAM, HiResCAM or Grad-CAM."""
        if self.method == "cam":
            return "CAM"
        return {"hirescam": "HiResCAM", "gradcam": "Grad-CAM", "xgradcam": "XGrad-CAM"}[self.map_method]

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feature maps (N, h, w, C) float32 and probabilities (N,) float64 of ``images`` (N, S, S, 3)."""
        features, _, probs = self.inputs(images)
        return features, probs

    def inputs(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Feature maps (N, h, w, C), the head's side inputs (each (N, h', w', C'), none for most heads) and the
        probabilities (N,) of ``images`` (N, S, S, 3), in one ONNX Runtime pass per batch."""
        batch = self._checked(images)
        names = [self.spec.feature_output, *(str(side["output"]) for side in self.spec.sides)]
        parts: list[list[np.ndarray]] = [[] for _ in names]
        probs = []
        for start in range(0, len(batch), BATCH_SIZE):
            chunk = np.ascontiguousarray(batch[start : start + BATCH_SIZE], dtype=np.float32)
            *values, p = self.session.run([*names, self.spec.probability_output], {self.spec.input_name: chunk})
            for store, value in zip(parts, values, strict=True):
                store.append(np.asarray(value, dtype=np.float32))
            probs.append(np.asarray(p, dtype=np.float64).reshape(len(chunk), -1)[:, 0])
        if not probs:
            shapes = [self.spec.feature_shape, *(tuple(side["shape"]) for side in self.spec.sides)]
            empty = [np.zeros((0, *shape), np.float32) for shape in shapes]
            return empty[0], empty[1:], np.zeros(0, np.float64)
        arrays = [np.concatenate(store) for store in parts]
        return arrays[0], arrays[1:], np.concatenate(probs)

    def channel_weights(self, features: np.ndarray, sides: list[np.ndarray] | None = None) -> np.ndarray:
        """``alpha`` (N, C): the dense kernel over h*w for ``cam``, else the spatial mean of the logit's gradient
        (``sides``: the head's side inputs from :meth:`inputs`, for a head that reads any)."""
        if self.method == "cam":
            dense = next(i for i, layer in enumerate(self.head.layers) if layer["kind"] == "dense")
            kernel = self.head.weight(dense, "kernel")[:, 0]
            area = features.shape[1] * features.shape[2]
            return np.broadcast_to(kernel / area, (len(features), len(kernel)))
        if len(sides or []) != len(self.spec.sides):
            raise ValueError(f"this head reads {len(self.spec.sides)} side input(s): pass those of inputs(images)")
        _, gradients = self.head.gradients(features, sides or [])
        return gradients.mean(axis=(1, 2))

    def heatmaps(self, images: np.ndarray, method: str | None = None) -> Heatmaps:
        """Raw maps (N, h, w) and probabilities (N,) of ``images``: uint8, or float32 in 0-255, (N, S, S, 3)
        with S = :attr:`input_size` -- exactly what the scorer feeds the model. ``method``: one of
        :data:`MAP_METHODS` (default :attr:`map_method`)."""
        method = check_map_method(method or self.map_method)
        features, sides, probabilities = self.inputs(images)
        if self.method == "cam" or method == "gradcam":
            maps = grad_cam(features, self.channel_weights(features, sides))
        else:
            combine = hires_cam if method == "hirescam" else xgrad_cam
            maps = combine(features, self.head.gradients(features, sides)[1])
        return Heatmaps(probabilities=probabilities, maps=maps)

    def _checked(self, images: np.ndarray) -> np.ndarray:
        batch = np.asarray(images)
        size = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ModelError(
                f"{self.model_path}: heatmaps need images of shape (N, {size}, {size}, 3), got {batch.shape}"
            )
        return batch


def load_explainer(model_path: str | Path, *, map_method: str = "xgradcam") -> Explainer:
    """The :class:`Explainer` of ``model_path`` (a run's ``model.onnx`` or ``model.int8.onnx``), making maps by
    ``map_method`` (one of :data:`MAP_METHODS`).

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
    wanted = {spec.feature_output, spec.probability_output, *(str(side["output"]) for side in spec.sides)}
    if wanted - outputs or inputs != [spec.input_name]:
        raise CannotExplain(f"{graph} does not have the inputs/outputs its explain.json names")
    explainer = Explainer(spec, head, session, model_path, check_map_method(map_method))
    _check_forward(explainer)
    return explainer


def _check_forward(explainer: Explainer) -> None:
    """The artifact's head must reproduce the model's own probability (:func:`~.artifact.check_forward`)."""
    from .artifact import check_forward, probe_images

    spec, folder = explainer.spec, explainer.model_path.parent
    try:
        images = probe_images(spec.input_size)
        features, sides, probs = explainer.inputs(images)
        logits = explainer.head.logits(features, sides)
        own = None
        fp32 = fp32_model(explainer.model_path)
        if spec.feature_tensor is None and fp32.is_file():  # a separate explain graph: against model.onnx's own
            from ..onnx.inference import cpu_session

            model = cpu_session(fp32.read_bytes())
            own = model.run(None, {model.get_inputs()[0].name: images.astype(np.float32)})[0]
    except CannotExplain:
        raise
    except Exception as exc:  # a head that cannot even run on its own feature maps
        raise CannotExplain(
            f"the explain artifact in {folder} fails on a probe image ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): run `mura-ens export {folder}`"
        ) from None
    check_forward(probs, logits, own, folder)


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
    return rebuild_explain_graph(
        model_bytes, spec.feature_tensor, spec.feature_layout, spec.feature_shape, sides=spec.sides
    )


def _load_head(path: Path, spec: ExplainSpec) -> Head:
    try:
        with np.load(path) as data:
            weights = {key: np.asarray(data[key], dtype=np.float64) for key in data.files}
        check_layers(spec.layers, weights)
        bad = sorted(key for key, value in weights.items() if not np.isfinite(value).all())
        if bad:
            raise ValueError(f"NaN or infinite values in {', '.join(bad[:3])}")
    except Exception as exc:  # truncated zip (BadZipFile), missing keys, NaN: one reason line, never a traceback
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (OSError, ValueError)) else str(exc)
        raise CannotExplain(
            f"{path} is missing or unusable ({reason.splitlines()[0] if reason else type(exc).__name__}): "
            f"run `mura-ens export {path.parent}` to rewrite it"
        ) from None
    return Head(layers=spec.layers, weights=weights)
