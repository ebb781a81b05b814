"""The explain artifact of a run folder: what export writes next to ``model.onnx`` and how it is read back.

Two or three files (names in :mod:`mura_ens.run_folder`, format in docs/explain.md):

``explain.npz``
    The weights of the head (the layers between the feature map and the sigmoid), keys ``"<i>.<name>"``.
``explain.json``
    The description (:class:`ExplainSpec`), written last: the method, the feature layer, the head's layer
    list, the output names and the sha256 of the ``model.onnx`` it belongs to. A model whose head cannot be
    back-propagated gets only this file, with ``supported: false`` and the reason.
``explain.onnx.bin`` (only when ``model.onnx`` holds no tensor equal to the feature map)
    A separately converted ONNX model with two outputs: the probability (N, 1) and the feature map
    (N, h, w, C). Not named ``*.onnx``: scoring takes every ``*.onnx`` under ``--models`` for a model.
    Normally the explain graph is ``model.onnx`` itself plus one output, and ``explain.json`` names the tensor
    (``feature_tensor``, ``feature_layout``) so the loader rebuilds it (:mod:`mura_ens.explain.graph`).
    Format version 1 always wrote this file; such run folders still load.

Nothing here imports TensorFlow or onnxruntime: export writes with :func:`write_artifact`, scoring reads with
:func:`read_spec`.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..io import atomic_write_bytes, atomic_write_json, file_sha256
from ..run_folder import EXPLAIN_FILE, EXPLAIN_GRAPH_FILE, EXPLAIN_WEIGHTS_FILE, INT8_SUFFIX, MODEL_FILE
from .graph import LAYOUTS

#: The format version written; readers refuse a newer one. 2: the explain graph is rebuilt from model.onnx
#: (``feature_tensor``/``feature_layout``) unless ``graph_file`` names a separate one; 1: always ``graph_file``.
#: 3: the head may be a graph of spatial layers from an inner feature map, reading side inputs (``sides``);
#: ``target`` records the target-layer rule's choice.
EXPLAIN_VERSION = 3
#: ``method``: the head's kind: class activation map (pooling -> one dense unit: the dense kernel weighs the
#: channels) or ``gradcam`` (the logit's gradient is computed by the NumPy backward pass; scoring then makes
#: XGrad-CAM, HiResCAM or Grad-CAM maps from it, :data:`mura_ens.explain.explainer.MAP_METHODS`).
METHODS: tuple[str, ...] = ("cam", "gradcam")


class CannotExplain(Exception):
    """A model has no usable explain artifact; ``str(exc)`` is a one-line reason (often naming the fix)."""


@dataclass(frozen=True)
class ExplainSpec:
    """``explain.json`` as data. ``layers``: the head in forward order, each a dict with ``kind`` and ``name``
    (see :mod:`mura_ens.explain.head` for the kinds and their fields). ``feature_tensor``/``feature_layout``:
    the tensor of ``model.onnx`` holding the feature map and its layout (``nhwc``/``nchw``), when the explain
    graph is ``model.onnx`` plus that output; None when it is the separate graph ``explain.onnx.bin``."""

    method: str
    feature_layer: str
    feature_shape: tuple[int, int, int]
    layers: tuple[Mapping[str, Any], ...]
    input_name: str
    feature_output: str
    probability_output: str
    input_size: int
    model_sha256: str
    model_file: str = MODEL_FILE
    plugin: str = ""
    model_name: str = ""
    feature_layer_source: str = "rule"
    checks: Mapping[str, Any] = field(default_factory=dict)
    feature_tensor: str | None = None
    feature_layout: str | None = None
    sides: tuple[Mapping[str, Any], ...] = ()  # side inputs: tensor, layout, shape, output (ONNX names)
    target: Mapping[str, Any] = field(default_factory=dict)  # the rule's layer, its shape, a fallback's reason

    @property
    def graph_file(self) -> str | None:
        """The file holding the explain graph, or None when it is rebuilt from the model (the normal case)."""
        return None if self.feature_tensor is not None else EXPLAIN_GRAPH_FILE

    def to_json(self) -> dict[str, Any]:
        """The ``explain.json`` content of a supported model."""
        return {
            "version": EXPLAIN_VERSION,
            "supported": True,
            "reason": None,
            "method": self.method,
            "feature_layer": self.feature_layer,
            "feature_layer_source": self.feature_layer_source,
            "feature_shape": list(self.feature_shape),
            "layers": [dict(layer) for layer in self.layers],
            "output_activation": "sigmoid",
            "graph_file": self.graph_file,
            "feature_tensor": self.feature_tensor,
            "feature_layout": self.feature_layout,
            "sides": [dict(side) for side in self.sides],
            "target": dict(self.target),
            "weights_file": EXPLAIN_WEIGHTS_FILE,
            "input_name": self.input_name,
            "feature_output": self.feature_output,
            "probability_output": self.probability_output,
            "input_size": self.input_size,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "plugin": self.plugin,
            "model_name": self.model_name,
            "checks": dict(self.checks),
            "mura_ens_version": __version__,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExplainSpec:
        """Parse a supported ``explain.json``; ``KeyError``/``TypeError``/``ValueError`` when malformed."""
        shape = tuple(int(v) for v in data["feature_shape"])
        if len(shape) != 3:
            raise ValueError(f"feature_shape {list(shape)} is not [h, w, C]")
        method = str(data["method"])
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        tensor = data.get("feature_tensor")  # absent in version 1: the graph is always explain.onnx.bin
        layout = data.get("feature_layout")
        if tensor is not None and layout not in LAYOUTS:
            raise ValueError(f"unknown feature_layout {layout!r}")
        return cls(
            method=method,
            feature_layer=str(data["feature_layer"]),
            feature_shape=(shape[0], shape[1], shape[2]),
            layers=tuple(dict(layer) for layer in data["layers"]),
            input_name=str(data["input_name"]),
            feature_output=str(data["feature_output"]),
            probability_output=str(data["probability_output"]),
            input_size=int(data["input_size"]),
            model_sha256=str(data["model_sha256"]),
            model_file=str(data.get("model_file") or MODEL_FILE),
            plugin=str(data.get("plugin") or ""),
            model_name=str(data.get("model_name") or ""),
            feature_layer_source=str(data.get("feature_layer_source") or "rule"),
            checks=dict(data.get("checks") or {}),
            feature_tensor=None if tensor is None else str(tensor),
            feature_layout=None if tensor is None else str(layout),
            sides=tuple(_side(side) for side in data.get("sides") or ()),
            target=dict(data.get("target") or {}),
        )


def _side(side: Mapping[str, Any]) -> dict[str, Any]:
    """A side input of ``explain.json``, checked: ``tensor``, ``layout``, ``shape`` [h, w, C], ``output``."""
    if side["layout"] not in LAYOUTS or len(side["shape"]) != 3:
        raise ValueError(f"malformed side input {dict(side)!r}")
    return {
        "tensor": str(side["tensor"]),
        "layout": str(side["layout"]),
        "shape": [int(v) for v in side["shape"]],
        "output": str(side["output"]),
    }


def unsupported_json(reason: str, *, model_sha256: str, feature_layer: str | None = None) -> dict[str, Any]:
    """The ``explain.json`` content of a model that cannot be explained, saying why."""
    return {
        "version": EXPLAIN_VERSION,
        "supported": False,
        "reason": reason,
        "feature_layer": feature_layer,
        "model_file": MODEL_FILE,
        "model_sha256": model_sha256,
        "mura_ens_version": __version__,
    }


def remove_artifact(run_dir: str | Path) -> None:
    """Delete the explain files of ``run_dir`` (description first, so a reader never sees a half artifact)."""
    for name in (EXPLAIN_FILE, EXPLAIN_WEIGHTS_FILE, EXPLAIN_GRAPH_FILE):
        (Path(run_dir) / name).unlink(missing_ok=True)


def write_artifact(
    run_dir: str | Path, spec: ExplainSpec, weights: Mapping[str, np.ndarray], graph: bytes | None = None
) -> Path:
    """Write the graph (only a separately converted one: ``spec.feature_tensor`` None), the weights, then
    ``explain.json`` (atomically each), after removing any earlier artifact; return the ``explain.json`` path."""
    if (graph is None) != (spec.graph_file is None):
        raise ValueError("an explain graph file is written exactly when explain.json names no feature_tensor")
    run_dir = Path(run_dir)
    remove_artifact(run_dir)
    if graph is not None:
        atomic_write_bytes(run_dir / EXPLAIN_GRAPH_FILE, graph)
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {key: np.asarray(value, dtype=np.float32) for key, value in weights.items()}
    np.savez(buffer, **arrays)
    atomic_write_bytes(run_dir / EXPLAIN_WEIGHTS_FILE, buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()  # binds explain.npz to this description (read_spec)
    return atomic_write_json(run_dir / EXPLAIN_FILE, {**spec.to_json(), "weights_sha256": digest})


def write_unsupported(run_dir: str | Path, reason: str, *, feature_layer: str | None = None) -> Path:
    """Record in ``explain.json`` why ``run_dir``'s model cannot be explained (no graph, no weights)."""
    run_dir = Path(run_dir)
    remove_artifact(run_dir)
    sha = file_sha256(run_dir / MODEL_FILE) if (run_dir / MODEL_FILE).is_file() else ""
    return atomic_write_json(
        run_dir / EXPLAIN_FILE, unsupported_json(reason, model_sha256=sha, feature_layer=feature_layer)
    )


def read_spec(model_path: str | Path) -> ExplainSpec:
    """The :class:`ExplainSpec` of the run folder holding ``model_path``, checked to belong to that model.

    Raises :class:`CannotExplain` with a one-line reason: no artifact (naming ``mura-ens export``), an
    unreadable or newer one, a model recorded as unsupported (its reason), or an artifact of another model.
    """
    model_path = Path(model_path)
    folder = model_path.parent
    path = folder / EXPLAIN_FILE
    if not path.is_file():
        raise CannotExplain(_missing_reason(model_path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise CannotExplain(f"{path} is unreadable ({exc}): run `mura-ens export {folder}` to rewrite it") from None
    version = data.get("version")
    if not isinstance(version, int) or version > EXPLAIN_VERSION:
        raise CannotExplain(f"{path} has format version {version!r}, newer than this mura-ens reads")
    if not data.get("supported", False):
        raise CannotExplain(str(data.get("reason") or "the model's head cannot be back-propagated"))
    try:
        spec = ExplainSpec.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CannotExplain(
            f"{path} is malformed ({type(exc).__name__}: {exc}): run `mura-ens export {folder}`"
        ) from None
    _check_link(model_path, spec)
    _check_digests(folder, data)
    return spec


def _check_digests(folder: Path, data: Mapping[str, Any]) -> None:
    """``explain.npz`` must be the file ``explain.json`` recorded (``weights_sha256``).

    Artifacts written before the digest was recorded have none; the forward check at load
    (:func:`check_forward`) binds their head (and a separate ``explain.onnx.bin``) to the model."""
    for key, name in (("weights_sha256", EXPLAIN_WEIGHTS_FILE),):
        expected = data.get(key)
        if not expected or not (folder / name).exists():  # a missing file is said by whoever loads it
            continue
        try:
            digest = file_sha256(folder / name)
        except OSError as exc:
            raise CannotExplain(
                f"cannot read {folder / name} ({exc.strerror or exc}): run `mura-ens export {folder}` to rewrite it"
            ) from None
        if digest != expected:
            raise CannotExplain(
                f"{name} is not the file {EXPLAIN_FILE} was written with (sha256 differs: swapped or damaged "
                f"since): run `mura-ens export {folder}` to rewrite it"
            )


#: Largest |p_head - p_model| the load-time forward check accepts (export checks 1e-4 on real images).
FORWARD_TOLERANCE = 1e-3


def probe_images(size: int) -> np.ndarray:
    """Two fixed images (a grey ramp and seeded noise), uint8 (2, size, size, 3): the load-time forward check's input."""
    ramp = np.linspace(0, 255, size * size * 3).reshape(size, size, 3)
    noise = np.random.default_rng(20231207).integers(0, 256, (size, size, 3))
    return np.stack([ramp, noise]).astype(np.uint8)


def check_forward(
    probabilities: np.ndarray, head_logits: np.ndarray, model_probabilities: np.ndarray | None, where: Path
) -> None:
    """Bind the head to its model: the NumPy head's sigmoid(logit) (and the explain graph's probability) must equal
    the model's own probability on :func:`probe_images`, within :data:`FORWARD_TOLERANCE`; NaN never passes.

    ``probabilities``: the explain graph's probability output; ``head_logits``: the head's logits of the graph's
    feature maps; ``model_probabilities``: ``model.onnx``'s own output when the graph is a separate file (None when
    the graph is ``model.onnx`` plus an output, whose probability is the model's by construction).
    Raises :class:`CannotExplain` naming the artifact and the fix.
    """
    graph = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    head = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(head_logits, dtype=np.float64).reshape(-1)))
    own = graph if model_probabilities is None else np.asarray(model_probabilities, dtype=np.float64).reshape(-1)
    with np.errstate(invalid="ignore"):
        worst = float(np.max(np.abs(np.concatenate([head - own, graph - own])), initial=0.0))
    if not np.isfinite(worst) or worst > FORWARD_TOLERANCE or not np.isfinite(head).all():
        shown = "NaN" if not np.isfinite(worst) or not np.isfinite(head).all() else f"{worst:.3g}"
        raise CannotExplain(
            f"the explain artifact in {where} does not reproduce its model's probability (max |diff| {shown} > "
            f"{FORWARD_TOLERANCE:g}: head weights of another model, or damaged): run `mura-ens export {where}`"
        )


def _missing_reason(model_path: Path) -> str:
    from ..run_folder import BEST_FILE, CARD_FILE

    folder = model_path.parent
    if (folder / CARD_FILE).is_file() and (folder / BEST_FILE).is_file():
        return f"no {EXPLAIN_FILE} next to {model_path.name}: run `mura-ens export {folder}` to add it"
    return (
        f"no {EXPLAIN_FILE} next to {model_path.name} (heatmaps need a mura-ens run folder: "
        "`mura-ens export RUN_DIR` adds it to a run that has best.keras and card.json)"
    )


def fp32_model(model_path: str | Path) -> Path:
    """The fp32 model an artifact is made from: ``model_path`` itself, or the fp32 twin ``X.onnx`` of an int8
    ``X.int8.onnx`` (which need not exist)."""
    model_path = Path(model_path)
    if model_path.name.endswith(INT8_SUFFIX):
        return model_path.with_name(model_path.name[: -len(INT8_SUFFIX)] + ".onnx")
    return model_path


def _check_link(model_path: Path, spec: ExplainSpec) -> None:
    """The artifact must belong to ``model_path``: same sha256 as the fp32 model it was made from.

    An int8 model (``X.int8.onnx``) is explained with its fp32 twin's artifact: the twin's sha256 is checked
    when the twin is there, else the int8 model's own ``model_name``/``plugin`` props must match the artifact's.
    """
    fp32 = fp32_model(model_path)
    if fp32 != model_path and not fp32.is_file():
        _check_props(model_path, spec)
        return
    try:
        sha = file_sha256(fp32)
    except OSError as exc:
        raise CannotExplain(f"cannot read {fp32} ({exc.strerror or exc})") from None
    if sha != spec.model_sha256:
        raise CannotExplain(
            f"{EXPLAIN_FILE} belongs to another {fp32.name} (sha256 differs; re-exported or replaced since): "
            f"run `mura-ens export {model_path.parent}` to renew it"
        )


def _check_props(model_path: Path, spec: ExplainSpec) -> None:
    import onnx

    from ..run_folder import read_onnx_props

    try:
        props = read_onnx_props(onnx.load_model_from_string(model_path.read_bytes()))
    except Exception as exc:  # any unreadable file is one reason line
        raise CannotExplain(f"cannot read {model_path} ({type(exc).__name__})") from None
    mine = (props.get("model_name", ""), props.get("plugin", ""))
    if mine != (spec.model_name, spec.plugin):
        raise CannotExplain(
            f"{EXPLAIN_FILE} belongs to model {spec.model_name!r} ({spec.plugin}), not to {model_path.name} "
            f"({mine[0]!r}, {mine[1]})"
        )
