"""The explain artifact at export (imports Keras): feature map + head weights, so scoring draws heatmaps TF-free.

:func:`export_explain` finds the feature map and the head of a float32 Keras model (:func:`head_chain`),
makes the explain graph -- ``model.onnx`` itself with the feature map as a second output, found by value
(:mod:`mura_ens.explain.graph`); only when no tensor matches, a two-output copy of the model converted with
the same tf2onnx route as ``model.onnx`` -- checks it on the parity images and writes the artifact
(:mod:`mura_ens.explain.artifact`). The first kind is not written: ``explain.json`` names the tensor and the
loader rebuilds the graph from ``model.onnx``; only a converted graph is saved (``explain.onnx.bin``).

Feature layer: the plugin's ``feature_layer`` attribute when it names one, otherwise the input of the last
global pooling / flatten layer (the last 4-D tensor before pooling). The head -- every layer between the
feature map and the sigmoid -- must be a chain of layers the NumPy head can back-propagate
(:mod:`mura_ens.explain.head`); otherwise, or when a check fails, the run gets an ``explain.json`` saying
why (``supported: false``) and training/export go on.

Checks (on the run's parity images): the explain graph's probability equals ``model.onnx``'s, and the NumPy
head's forward pass from the graph's feature map gives that probability back (the weights are the model's).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..explain.artifact import ExplainSpec, write_artifact, write_unsupported
from ..explain.head import Head, supported_activation
from ..io import file_sha256
from ..run_folder import EXPLAIN_FILE, MODEL_FILE, read_onnx_props
from .tf_runtime import model_inputs

#: Largest probability difference accepted between the explain graph and model.onnx, and the NumPy head.
EXPLAIN_TOLERANCE = 1e-4

_REDUCTIONS = {"GlobalAveragePooling2D": "global_average_pooling", "GlobalMaxPooling2D": "global_max_pooling"}
_IDENTITIES = ("Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout", "Identity")


class Unexplainable(Exception):
    """The model cannot get an explain artifact; the message is the one-line reason kept in explain.json."""


@dataclass(frozen=True)
class HeadChain:
    """The feature map (a Keras tensor), the layer that makes it, and the head layers in forward order
    (without a final ``Activation('sigmoid')``; a final dense layer's sigmoid is dropped by :func:`layer_spec`).
    ``inputs``: each layer's sources (``"feature"``, ``"side:<j>"`` or an earlier layer's index; empty: a
    chain); ``sides``: the Keras tensors the layers read that do not depend on the feature map."""

    feature: Any
    feature_layer: str
    layers: tuple[Any, ...]
    source: str = "rule"  # "plugin"/"option" when named, "fallback" when the rule's target was out of reach
    inputs: tuple[tuple[Any, ...], ...] = ()
    sides: tuple[Any, ...] = ()
    target: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadSpec:
    """The head as the artifact stores it: ``explain.json`` entries, ``explain.npz`` weights, the method."""

    entries: tuple[dict[str, Any], ...]
    weights: dict[str, np.ndarray]
    method: str


def _producer(tensor: Any) -> tuple[Any, list[Any]]:
    """The operation that made ``tensor`` and that call's input tensors (Keras 3 functional graph)."""
    operation, node_index, _ = tensor._keras_history
    node = operation._inbound_nodes[node_index]
    return operation, list(node.input_tensors)


def head_chain(model: Any, feature_layer: str | None = None) -> HeadChain:
    """Walk back from the model's output to the feature map; :class:`Unexplainable` when there is no chain."""
    if len(model.outputs) != 1:
        raise Unexplainable(f"the model has {len(model.outputs)} outputs; one probability is expected")
    tensor = model.outputs[0]
    layers: list[Any] = []
    while True:
        layer, inputs = _producer(tensor)
        if feature_layer is not None and layer.name == feature_layer:
            break
        if not inputs:
            raise Unexplainable(
                f"feature layer {feature_layer!r} is not on the way to the output"
                if feature_layer
                else "no global pooling or flatten layer between a 4-D feature map and the output"
            )
        if len(inputs) != 1:
            raise Unexplainable(f"head layer {layer.name!r} ({type(layer).__name__}) has {len(inputs)} inputs")
        layers.insert(0, layer)
        tensor = inputs[0]
        if feature_layer is None and _kind(layer) in ("global_average_pooling", "global_max_pooling", "flatten"):
            if len(tensor.shape) == 4:
                break
    producer = _producer(tensor)[0].name
    if len(tensor.shape) != 4:
        raise Unexplainable(f"feature layer {producer!r} output has shape {tuple(tensor.shape)}, not (N, h, w, C)")
    if layers and type(layers[-1]).__name__ == "Activation" and _function(layers[-1]) == "sigmoid":
        layers.pop()
    if not layers:
        raise Unexplainable(f"no head layer between feature layer {producer!r} and the output")
    source = "plugin" if feature_layer is not None else "rule"
    return HeadChain(feature=tensor, feature_layer=producer, layers=tuple(layers), source=source)


#: The target-layer rule's smallest feature-map side: coarser maps cannot show where a finding is.
MIN_SIDE = 7


@dataclass(frozen=True)
class Target:
    """The layer the target rule names: ``layer`` (inside the nested model ``nested`` when not None) and its
    output's (h, w, C)."""

    layer: str
    shape: tuple[int, int, int]
    nested: str | None = None

    def describe(self) -> dict[str, Any]:
        """The ``target`` entry of ``explain.json``."""
        return {"rule_layer": self.layer, "rule_shape": list(self.shape), "nested_in": self.nested}


def _map_shape(layer: Any) -> tuple[int, int, int] | None:
    """(h, w, C) of a layer's one 4-D output, else None."""
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None
    if len(shape) != 4 or any(not isinstance(v, int) for v in shape[1:]):
        return None
    return int(shape[1]), int(shape[2]), int(shape[3])


def rule_target(model: Any, min_side: int = MIN_SIDE) -> Target | None:
    """The last convolutional feature map whose spatial side is >= ``min_side``: the last layer (in the model's
    topological order, after its first convolution) with a 4-D output of ``min(h, w) >= min_side``; a nested
    model (a backbone) whose output is smaller is searched inside. None when there is none."""
    layers = list(model.layers)
    first = next((i for i, layer in enumerate(layers) if _is_conv(layer)), None)
    if first is None:
        return None
    for layer in reversed(layers[first:]):
        shape = _map_shape(layer)
        if shape is not None and min(shape[:2]) >= min_side:
            return Target(layer.name, shape)
        if hasattr(layer, "layers"):
            inner = rule_target(layer, min_side)
            if inner is not None:
                return Target(inner.layer, inner.shape, nested=layer.name)
    return None


def _is_conv(layer: Any) -> bool:
    return "Conv" in type(layer).__name__ or hasattr(layer, "layers")


def head_graph(model: Any, feature_layer: str, source: str = "plugin") -> HeadChain:
    """The layers between ``feature_layer``'s output and the model's output: those that depend on it, in
    forward order, with each one's input sources; tensors they read that do not depend on it are side inputs.
    :class:`Unexplainable` when the layer is not on the way to the output."""
    try:
        target = model.get_layer(feature_layer)
    except ValueError:
        target = None
    if len(model.outputs) != 1:
        raise Unexplainable(f"the model has {len(model.outputs)} outputs; one probability is expected")
    depends: dict[int, bool] = {}

    def dependent(tensor: Any) -> bool:
        key = id(tensor)
        if key not in depends:
            layer, inputs = _producer(tensor)
            depends[key] = layer is target or any([dependent(t) for t in inputs])
        return depends[key]

    output = model.outputs[0]
    if target is None or not dependent(output):
        raise Unexplainable(f"feature layer {feature_layer!r} is not on the way to the output")
    layers: list[Any] = []
    inputs: list[tuple[Any, ...]] = []
    sides: list[Any] = []
    sources: dict[int, Any] = {}

    def visit(tensor: Any) -> Any:
        key = id(tensor)
        if key not in sources:
            layer, found = _producer(tensor)
            if layer is target:
                sources[key], feature[0] = "feature", tensor
            elif not dependent(tensor):
                sources[key] = f"side:{len(sides)}"
                sides.append(tensor)
            else:
                args = tuple(visit(t) for t in found)
                layers.append(layer)
                inputs.append(args)
                sources[key] = len(layers) - 1
        return sources[key]

    feature: list[Any] = [None]
    visit(output)
    return _finished_graph(feature[0], feature_layer, layers, inputs, sides, source)


def _finished_graph(
    feature: Any, name: str, layers: list[Any], inputs: list[tuple[Any, ...]], sides: list[Any], source: str
) -> HeadChain:
    """The :class:`HeadChain` of :func:`head_graph`, a final ``Activation('sigmoid')`` left out."""
    if len(feature.shape) != 4:
        raise Unexplainable(f"feature layer {name!r} output has shape {tuple(feature.shape)}, not (N, h, w, C)")
    if layers and type(layers[-1]).__name__ == "Activation" and _function(layers[-1]) == "sigmoid":
        layers.pop()
        inputs.pop()
    if not layers:
        raise Unexplainable(f"no head layer between feature layer {name!r} and the output")
    for layer, args in zip(layers, inputs, strict=True):
        if len(args) != 1 and _kind(layer) not in ("concatenate", "add"):
            raise Unexplainable(f"head layer {layer.name!r} ({type(layer).__name__}) has {len(args)} inputs")
    return HeadChain(feature, name, tuple(layers), source, inputs=tuple(inputs), sides=tuple(sides))


def choose_head(model: Any, feature_layer: str | None, source: str) -> HeadChain:
    """The head to explain: from ``feature_layer`` when named (``source``: ``plugin`` or ``option``), else from
    the target rule's layer (:func:`rule_target`); when that layer cannot be reached (inside a nested model, a
    layer the NumPy backward pass lacks, ...), from the last map (:func:`head_chain`) with the reason kept in
    ``target["fallback"]``."""
    if feature_layer is not None:
        return head_graph(model, feature_layer, source)
    target = rule_target(model)
    if target is None:
        chain = head_chain(model)
        reason = f"no convolutional feature map has a side >= {MIN_SIDE} at this input size"
        return replace(chain, source="fallback", target={"rule_layer": None, "fallback": reason})
    try:
        if target.nested is not None:
            raise Unexplainable(
                f"the rule's layer {target.layer!r} ({target.shape[0]}x{target.shape[1]}) is inside the nested "
                f"model {target.nested!r}, which the NumPy backward pass cannot enter"
            )
        try:
            chain = head_graph(model, target.layer, "rule")
        except RecursionError:
            raise Unexplainable(f"too many layers between {target.layer!r} and the output") from None
        head_specs(chain)  # every layer must be one the NumPy head supports
        return replace(chain, target=target.describe())
    except Unexplainable as exc:
        chain = head_chain(model)
        return replace(chain, source="fallback", target={**target.describe(), "fallback": str(exc)})


def _kind(layer: Any) -> str | None:
    name = type(layer).__name__
    if name in _REDUCTIONS:
        return _REDUCTIONS[name]
    if name in _IDENTITIES:
        return "dropout"
    return {
        "Flatten": "flatten",
        "Dense": "dense",
        "Conv2D": "conv2d",
        "MaxPooling2D": "max_pooling",
        "AveragePooling2D": "average_pooling",
        "ZeroPadding2D": "zero_padding",
        "Concatenate": "concatenate",
        "Add": "add",
        "BatchNormalization": "batch_normalization",
        "Activation": "activation",
        "ReLU": "activation",
        "LeakyReLU": "activation",
    }.get(name)


def _function(layer: Any) -> str:
    activation = getattr(layer, "activation", None)
    return str(getattr(activation, "__name__", activation) or "linear")


def layer_spec(index: int, layer: Any, *, last: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The ``explain.json`` entry and the ``explain.npz`` weights of head layer ``index``; :class:`Unexplainable`
    naming the layer when the NumPy head cannot back-propagate it."""
    kind = _kind(layer)
    entry: dict[str, Any] = {"kind": kind, "name": layer.name, "class": type(layer).__name__}
    cannot = Unexplainable(f"head layer {layer.name!r} ({type(layer).__name__}) cannot be back-propagated")
    if kind is None or getattr(layer, "data_format", "channels_last") != "channels_last":
        raise cannot
    if getattr(layer, "keepdims", False):
        raise cannot
    weights: dict[str, np.ndarray] = {}
    if kind == "dense":
        function = _function(layer)
        if last and function != "sigmoid":
            raise Unexplainable(f"the output layer {layer.name!r} has activation {function!r}, not a sigmoid")
        kernel = np.asarray(layer.kernel)
        bias = np.asarray(layer.bias) if layer.use_bias else np.zeros(kernel.shape[1], np.float32)
        entry.update(activation="linear" if last else function, units=int(kernel.shape[1]))
        weights = {f"{index}.kernel": kernel, f"{index}.bias": bias}
    elif kind in _SPATIAL:
        spatial, weights = _spatial_spec(index, layer, kind, cannot)
        entry.update(spatial)
    elif kind == "batch_normalization":
        weights = _batch_norm_weights(index, layer, cannot)
        entry["epsilon"] = float(layer.epsilon)
    elif kind == "activation":
        entry.update(_activation_entry(layer))
    if last and kind != "dense":
        raise Unexplainable(f"the output is not a sigmoid dense unit (last head layer {layer.name!r})")
    if not supported_activation(str(entry.get("function", entry.get("activation", "linear")))):
        raise cannot
    return entry, weights


_SPATIAL = ("conv2d", "max_pooling", "average_pooling", "zero_padding", "concatenate")


def _spatial_spec(index: int, layer: Any, kind: str, cannot: Exception) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Entry fields and weights of a convolution, pooling, padding or concatenation layer."""
    if kind == "concatenate":
        if layer.axis not in (-1, 3):
            raise cannot
        return {}, {}
    if kind == "zero_padding":
        return {"padding": [[int(v) for v in pair] for pair in layer.padding]}, {}
    entry: dict[str, Any] = {"strides": [int(v) for v in layer.strides], "padding": str(layer.padding)}
    if kind != "conv2d":
        entry["pool_size"] = [int(v) for v in layer.pool_size]
        return entry, {}
    if tuple(layer.dilation_rate) != (1, 1) or getattr(layer, "groups", 1) != 1:
        raise cannot
    kernel = np.asarray(layer.kernel)
    bias = np.asarray(layer.bias) if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
    entry.update(activation=_function(layer), filters=int(kernel.shape[-1]))
    return entry, {f"{index}.kernel": kernel, f"{index}.bias": bias}


def _batch_norm_weights(index: int, layer: Any, cannot: Exception) -> dict[str, np.ndarray]:
    axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
    if axis not in (-1, len(layer.input.shape) - 1):
        raise cannot
    mean = np.asarray(layer.moving_mean)
    return {
        f"{index}.gamma": np.asarray(layer.gamma) if layer.scale else np.ones_like(mean),
        f"{index}.beta": np.asarray(layer.beta) if layer.center else np.zeros_like(mean),
        f"{index}.mean": mean,
        f"{index}.variance": np.asarray(layer.moving_variance),
    }


def _activation_entry(layer: Any) -> dict[str, Any]:
    name = type(layer).__name__
    if name == "ReLU":
        max_value = layer.max_value
        return {
            "function": "relu",
            "max_value": None if max_value is None else float(max_value),
            "negative_slope": float(layer.negative_slope),
            "threshold": float(layer.threshold),
        }
    if name == "LeakyReLU":
        return {"function": "relu", "negative_slope": float(layer.negative_slope)}
    return {"function": _function(layer)}


def head_specs(chain: HeadChain) -> HeadSpec:
    """Entries, weights and method (``cam`` for global average pooling -> one dense unit) of the head."""
    entries: list[dict[str, Any]] = []
    weights: dict[str, np.ndarray] = {}
    for index, layer in enumerate(chain.layers):
        entry, arrays = layer_spec(index, layer, last=index == len(chain.layers) - 1)
        if chain.inputs:
            entry["inputs"] = list(chain.inputs[index])
        entries.append(entry)
        weights.update(arrays)
    core = [e["kind"] for e in entries if e["kind"] != "dropout"]
    single_unit = entries[-1].get("units") == 1
    method = "cam" if core == ["global_average_pooling", "dense"] and single_unit else "gradcam"
    return HeadSpec(entries=tuple(entries), weights=weights, method=method)


def export_explain(
    model: Any,
    run_dir: str | Path,
    images: np.ndarray,
    *,
    convert: Callable[..., Any],
    feature_layer: str | None = None,
    feature_layer_source: str = "plugin",
) -> dict[str, Any]:
    """Write the explain artifact of ``model`` (float32 Keras) next to ``run_dir/model.onnx``; return the card's
    ``explain`` section. ``convert(keras_model, image_size=S)`` is the ONNX conversion used for model.onnx.
    ``feature_layer``: the layer named by the plugin or ``train --explain-layer`` (``feature_layer_source``
    ``plugin``/``option``); None: the target rule's (:func:`choose_head`).

    Never raises for a model that cannot be explained: ``explain.json`` then says why (``written: false``).
    A rule's target that cannot be reached falls back to the last map, said in one warning line.
    """
    run_dir = Path(run_dir)
    start = time.perf_counter()
    try:
        chain = choose_head(model, feature_layer, feature_layer_source)
        try:
            section = _convert_and_write(model, run_dir, images, chain, head_specs(chain), convert)
        except Unexplainable as exc:
            if chain.source != "rule":
                raise
            fallback = replace(head_chain(model), source="fallback", target={**chain.target, "fallback": str(exc)})
            section = _convert_and_write(model, run_dir, images, fallback, head_specs(fallback), convert)
    except Unexplainable as exc:
        write_unsupported(run_dir, str(exc), feature_layer=feature_layer)
        section = {"written": False, "reason": str(exc)}
    except Exception as exc:  # a conversion failure must not lose the trained run
        reason = f"explain export failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        write_unsupported(run_dir, reason, feature_layer=feature_layer)
        section = {"written": False, "reason": reason}
    if section.get("target_fallback"):
        warnings.warn(
            f"heatmaps of {run_dir.name} come from {section['feature_layer']!r}, not the target rule's layer: "
            f"{section['target_fallback']}",
            stacklevel=2,
        )
    section["file"] = EXPLAIN_FILE
    section["seconds"] = round(time.perf_counter() - start, 3)
    return section


def _keras_values(model: Any, tensors: list[Any], images: np.ndarray) -> list[np.ndarray]:
    """The values of Keras tensors of ``model`` on ``images`` (an eager call: predict_on_batch would trace a
    new tf.function, ~10 s for DenseNet201)."""
    import keras

    part = keras.Model(model.inputs, list(tensors))
    values = part(model_inputs(part, images), training=False)
    values = values if isinstance(values, (list, tuple)) else [values]
    return [np.asarray(v, dtype=np.float32) for v in values]


def _explain_graph(model: Any, chain: HeadChain, images: np.ndarray, model_bytes: bytes, convert: Callable[..., Any]):
    """model.onnx with the feature map (and the head's side inputs) as extra outputs, found by value
    (:func:`~mura_ens.explain.graph.find_tensors`); when no tensor of it matches the Keras feature map, a
    two-output copy of the model converted like model.onnx (not for a head with side inputs). Returns the
    graph and the side inputs' ``explain.json`` entries."""
    import keras
    import onnx

    from ..explain.graph import FROM_MODEL, ExplainGraph, find_tensors, side_output_name, with_feature_output

    values = _keras_values(model, [chain.feature, *chain.sides], images)
    found = find_tensors(model_bytes, values, images)
    if found is not None:  # the graph the loader rebuilds (rebuild_explain_graph), so the one checked here
        proto = onnx.load_model_from_string(model_bytes)
        (tensor, layout, diff), *others = found
        h, w, c = (int(v) for v in values[0].shape[1:])
        output = with_feature_output(proto, tensor, layout, (h, w, c))
        sides = []
        for index, ((name, side_layout, _), value) in enumerate(zip(others, values[1:], strict=True)):
            shape = (int(value.shape[1]), int(value.shape[2]), int(value.shape[3]))
            out = with_feature_output(proto, name, side_layout, shape, side_output_name(index))
            sides.append({"tensor": name, "layout": side_layout, "shape": list(shape), "output": out})
        prob = proto.graph.output[0].name
        return ExplainGraph(proto, output, prob, FROM_MODEL, diff, tensor, layout), sides
    if chain.sides:
        raise Unexplainable("model.onnx holds no tensor equal to the feature map or a side input of the head")
    two_outputs = keras.Model(model.inputs, [model.outputs[0], chain.feature], name=f"{model.name}_explain")
    proto = convert(two_outputs, image_size=int(images.shape[1]))
    ranks = {o.name: len(o.type.tensor_type.shape.dim) for o in proto.graph.output}
    feature_out = next(name for name, rank in ranks.items() if rank == 4)
    prob_out = next(name for name, rank in ranks.items() if rank != 4)
    return ExplainGraph(proto=proto, feature_output=feature_out, probability_output=prob_out, source="converted"), []


def _check(
    head: HeadSpec, features: np.ndarray, sides: list[np.ndarray], probs: np.ndarray, reference: np.ndarray
) -> dict[str, Any]:
    """The explain graph's and the NumPy head's probabilities against model.onnx's; :class:`Unexplainable` when off."""
    weights = {k: np.asarray(v, np.float64) for k, v in head.weights.items()}
    logits = Head(layers=head.entries, weights=weights).logits(features, sides)
    checks = {
        "images": int(len(reference)),
        "probability_max_abs_diff": float(np.max(np.abs(np.asarray(probs, np.float64).reshape(-1) - reference))),
        "head_max_abs_diff": float(np.max(np.abs(1.0 / (1.0 + np.exp(-logits)) - reference))),
        "tolerance": EXPLAIN_TOLERANCE,
    }
    worst = max(checks["probability_max_abs_diff"], checks["head_max_abs_diff"])
    if not np.isfinite(worst) or worst > EXPLAIN_TOLERANCE:
        raise Unexplainable(
            f"explain check failed: max |p - p_model.onnx| = {worst:.3g} > {EXPLAIN_TOLERANCE:g} "
            f"(graph {checks['probability_max_abs_diff']:.3g}, NumPy head {checks['head_max_abs_diff']:.3g})"
        )
    return checks


def _convert_and_write(
    model: Any, run_dir: Path, images: np.ndarray, chain: HeadChain, head: HeadSpec, convert: Callable[..., Any]
) -> dict[str, Any]:
    from ..onnx.inference import cpu_session, run_model

    model_bytes = (run_dir / MODEL_FILE).read_bytes()
    explain, sides = _explain_graph(model, chain, images, model_bytes, convert)
    rebuilt = explain.feature_tensor is not None  # byte for byte what load_explainer rebuilds: left as it is
    if not rebuilt:
        explain.proto.doc_string = (
            "mura-ens explain graph: (N, S, S, 3) 0-255 RGB -> probability (N, 1) and feature map (N, h, w, C)"
        )
    graph = explain.proto.SerializeToString()
    session = cpu_session(graph)
    input_name = session.get_inputs()[0].name
    names = [explain.feature_output, *(side["output"] for side in sides), explain.probability_output]
    features, *side_values, probs = session.run(names, {input_name: images})
    reference = run_model(cpu_session(model_bytes), images, max(1, len(images)), name="model.onnx")
    checks = {**_check(head, features, side_values, probs, reference), "graph": explain.source}
    if explain.match_max_abs_diff is not None:
        checks["feature_match_max_abs_diff"] = explain.match_max_abs_diff
    spec = _spec(run_dir, model_bytes, chain, head, explain, sides, features, input_name, images, checks)
    write_artifact(run_dir, spec, head.weights, None if rebuilt else graph)
    section = {"written": True, "method": head.method, "feature_layer": chain.feature_layer, **checks}
    section.update(feature_shape=list(spec.feature_shape), feature_layer_source=chain.source)
    if chain.target.get("fallback"):
        section["target_fallback"] = chain.target["fallback"]
    return section


def _spec(run_dir, model_bytes, chain, head, explain, sides, features, input_name, images, checks) -> ExplainSpec:
    import onnx

    props = read_onnx_props(onnx.load_model_from_string(model_bytes))
    _, h, w, c = (int(d) for d in features.shape)
    return ExplainSpec(
        method=head.method,
        feature_layer=chain.feature_layer,
        feature_shape=(h, w, c),
        layers=head.entries,
        input_name=input_name,
        feature_output=explain.feature_output,
        probability_output=explain.probability_output,
        input_size=int(images.shape[1]),
        model_sha256=file_sha256(run_dir / MODEL_FILE),
        plugin=props.get("plugin", ""),
        model_name=props.get("model_name", ""),
        feature_layer_source=chain.source,
        checks=checks,
        feature_tensor=explain.feature_tensor,
        feature_layout=explain.layout,
        sides=tuple(sides),
        target=dict(chain.target),
    )
