"""The model's head in NumPy: forward to the abnormal logit and its gradient with respect to the feature map.

The head is the layers between the feature map (N, h, w, C) and the final sigmoid, stored in
``explain.json`` (``layers``, forward order) and ``explain.npz`` (weights, keys ``"<i>.<name>"``). A layer
reads the previous one's output, or the sources its ``inputs`` entry lists (:func:`layer_inputs`): the
feature map, a side input (a tensor that does not depend on the feature map, which ONNX Runtime computes
with it), or an earlier layer's output -- a graph, e.g. feedforward_cnn's concatenations. Supported layer
kinds (anything else makes export record the model as not explainable, or fall back to the last map):

``global_average_pooling`` / ``global_max_pooling``
    Mean / max over h and w (rank 4 -> 2). The max's gradient is shared equally among tied maxima, as
    TensorFlow's ``reduce_max`` gradient does.
``flatten``
    Reshape to (N, -1).
``dense``
    ``x @ kernel + bias`` on the last axis, then ``activation``; the last dense layer of the head has its
    sigmoid removed (``activation: linear``): its output is the logit.
``batch_normalization``
    Inference mode on the last axis: ``(x - mean) / sqrt(var + epsilon) * gamma + beta``.
``activation``
    Element-wise ``function`` (:data:`ACTIVATIONS`), with ``negative_slope``/``max_value``/``threshold`` for
    ``relu`` (Keras' ``ReLU``/``LeakyReLU`` layers).
``dropout``
    Identity (inference).
``conv2d``, ``max_pooling``, ``average_pooling``, ``zero_padding``, ``concatenate``, ``add``
    Keras' ``Conv2D`` (with its ``activation``), ``MaxPooling2D``, ``AveragePooling2D``, ``ZeroPadding2D``,
    ``Concatenate`` (channel axis) and ``Add`` (:mod:`mura_ens.explain.spatial`).

Computation is in float64. Derivatives at kinks follow TensorFlow (ReLU's gradient at exactly 0 is 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import spatial

LAYER_KINDS: tuple[str, ...] = (
    "global_average_pooling",
    "global_max_pooling",
    "flatten",
    "dense",
    "batch_normalization",
    "activation",
    "dropout",
    "conv2d",
    "max_pooling",
    "average_pooling",
    "zero_padding",
    "concatenate",
    "add",
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gelu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import erf

    cdf = 0.5 * (1.0 + erf(x / np.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    return x * cdf, cdf + x * pdf


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _selu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    negative = _SELU_SCALE * _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))
    value = np.where(x > 0, _SELU_SCALE * x, negative)
    return value, np.where(x > 0, _SELU_SCALE, negative + _SELU_SCALE * _SELU_ALPHA)


def _elu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    negative = np.expm1(np.minimum(x, 0.0))
    return np.where(x > 0, x, negative), np.where(x > 0, 1.0, negative + 1.0)


def _silu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = _sigmoid(x)
    return x * s, s * (1.0 + x * (1.0 - s))


#: Element-wise functions: value and derivative at ``x``. ``relu`` is handled with its parameters.
ACTIVATIONS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "linear": lambda x: (x, np.ones_like(x)),
    "sigmoid": lambda x: (_sigmoid(x), _sigmoid(x) * (1.0 - _sigmoid(x))),
    "tanh": lambda x: (np.tanh(x), 1.0 - np.tanh(x) ** 2),
    "elu": _elu,
    "selu": _selu,
    "silu": _silu,
    "swish": _silu,
    "softplus": lambda x: (np.logaddexp(0.0, x), _sigmoid(x)),
    "gelu": _gelu,
}


def relu(
    x: np.ndarray, *, negative_slope: float = 0.0, max_value: float | None = None, threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Keras' ``ReLU`` (value, derivative): ``x`` on ``[threshold, max_value)``, ``max_value`` above,
    ``negative_slope * (x - threshold)`` below. The derivative at ``x == threshold`` is ``negative_slope``
    (TensorFlow's)."""
    top = np.inf if max_value is None else float(max_value)
    value = np.where(x >= top, top, np.where(x >= threshold, x, negative_slope * (x - threshold)))
    slope = np.where(x >= top, 0.0, np.where(x > threshold, 1.0, negative_slope))
    return value, slope


def activation(x: np.ndarray, layer: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Value and derivative of a layer's element-wise ``function`` (``activation`` for dense layers)."""
    name = str(layer.get("function", layer.get("activation", "linear")))
    if name in ("relu", "relu6", "leaky_relu"):
        return relu(
            x,
            negative_slope=float(layer.get("negative_slope", 0.2 if name == "leaky_relu" else 0.0) or 0.0),
            max_value=6.0 if name == "relu6" else layer.get("max_value"),
            threshold=float(layer.get("threshold", 0.0) or 0.0),
        )
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported")
    return ACTIVATIONS[name](x)


def supported_activation(name: str) -> bool:
    """Whether the NumPy head can back-propagate the element-wise function ``name``."""
    return name in ACTIVATIONS or name in ("relu", "relu6", "leaky_relu")


#: Where a layer's input comes from (``inputs`` in its entry): the feature map, a side input, or a layer's output.
FEATURE = "feature"
SIDE = "side:"


def layer_inputs(index: int, layer: Mapping[str, Any]) -> list[Any]:
    """The sources of layer ``index``'s inputs: its ``inputs`` entry, else the previous layer (the feature map
    for the first): ``"feature"``, ``"side:<j>"`` (the j-th side input) or an earlier layer's index."""
    inputs = layer.get("inputs")
    if inputs is None:
        return [FEATURE if index == 0 else index - 1]
    return list(inputs)


@dataclass(frozen=True)
class Head:
    """The layers between the feature map and the logit (forward order) and their float64 weights; see the
    module docstring. ``sides``: the side inputs (tensors the layers read that do not depend on the feature
    map), in the order of ``side:<j>``."""

    layers: tuple[Mapping[str, Any], ...]
    weights: Mapping[str, np.ndarray]

    def weight(self, index: int, name: str) -> np.ndarray:
        """Weight ``name`` of layer ``index`` (float64)."""
        return self.weights[f"{index}.{name}"]

    def logits(self, features: np.ndarray, sides: Sequence[np.ndarray] = ()) -> np.ndarray:
        """The abnormal logit (N,) of feature maps (N, h, w, C) (and the side inputs, when the head reads any)."""
        outputs, _ = self._run(features, sides)
        return outputs[-1].reshape(len(outputs[-1]), -1)[:, 0]

    def gradients(self, features: np.ndarray, sides: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The logits (N,) and d logit / d features (N, h, w, C), by the chain rule backwards through the head."""
        outputs, backward = self._run(features, sides)
        logits = outputs[-1].reshape(len(outputs[-1]), -1)
        if logits.shape[1] != 1:
            raise ValueError(f"the head ends in {logits.shape[1]} units; one abnormal logit is expected")
        grads: dict[Any, np.ndarray] = {len(self.layers) - 1: np.ones_like(outputs[-1])}
        for index in reversed(range(len(self.layers))):
            if index not in grads:  # an output the logit does not depend on
                continue
            back = backward[index](grads.pop(index))
            parts = back if isinstance(back, list) else [back]
            for source, part in zip(layer_inputs(index, self.layers[index]), parts, strict=True):
                if source == FEATURE or isinstance(source, int):
                    grads[source] = grads[source] + part if source in grads else part
        feature = np.asarray(features, dtype=np.float64)
        return logits[:, 0], grads.get(FEATURE, np.zeros_like(feature))

    def _run(self, features: np.ndarray, sides: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[Any]]:
        """Every layer's output and backward function, in forward order."""
        feature = np.asarray(features, dtype=np.float64)
        side = [np.asarray(s, dtype=np.float64) for s in sides]
        outputs: list[np.ndarray] = []
        backward: list[Any] = []
        for index, layer in enumerate(self.layers):
            inputs = [self._source(source, feature, side, outputs) for source in layer_inputs(index, layer)]
            value, back = self._forward(index, layer, inputs)
            outputs.append(value)
            backward.append(back)
        return outputs, backward

    @staticmethod
    def _source(source: Any, feature: np.ndarray, sides: Sequence[np.ndarray], outputs: Sequence[np.ndarray]):
        if source == FEATURE:
            return feature
        if isinstance(source, str) and source.startswith(SIDE):
            return sides[int(source[len(SIDE) :])]
        return outputs[int(source)]

    def _forward(self, index: int, layer: Mapping[str, Any], inputs: list[np.ndarray]) -> tuple[np.ndarray, Any]:
        """One layer: its output and the function mapping the output's gradient to the input's (a list of
        gradients, one per input, for ``concatenate``/``add``)."""
        kind = layer["kind"]
        if kind in ("concatenate", "add"):
            return (spatial.concatenate if kind == "concatenate" else spatial.add)(inputs)
        x = inputs[0]
        if kind == "dense":
            kernel, bias = self.weight(index, "kernel"), self.weight(index, "bias")
            value, slope = activation(x @ kernel + bias, layer)
            return value, lambda g: (g * slope) @ kernel.T
        if kind == "conv2d":
            z, back = spatial.conv2d(
                x,
                self.weight(index, "kernel"),
                self.weight(index, "bias"),
                strides=layer["strides"],
                padding=layer["padding"],
            )
            value, slope = activation(z, layer)
            return value, lambda g: back(g * slope)
        if kind in ("max_pooling", "average_pooling"):
            return spatial.pooling(
                x,
                kind=kind.split("_")[0],
                pool_size=layer["pool_size"],
                strides=layer["strides"],
                padding=layer["padding"],
            )
        if kind == "zero_padding":
            return spatial.zero_padding(x, layer["padding"])
        if kind == "batch_normalization":
            scale = self.weight(index, "gamma") / np.sqrt(self.weight(index, "variance") + float(layer["epsilon"]))
            shift = self.weight(index, "beta") - self.weight(index, "mean") * scale
            return x * scale + shift, lambda g: g * scale
        if kind == "activation":
            value, slope = activation(x, layer)
            return value, lambda g: g * slope
        if kind == "dropout":
            return x, lambda g: g
        return _reduction(kind, x)


def _reduction(kind: str, x: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    shape = x.shape
    if kind == "flatten":
        return x.reshape(len(x), -1), lambda g: g.reshape(shape)
    if x.ndim != 4:
        raise ValueError(f"{kind} needs (N, h, w, C) input, got shape {shape}")
    if kind == "global_average_pooling":
        area = shape[1] * shape[2]
        return x.mean(axis=(1, 2)), lambda g: np.broadcast_to(g[:, None, None, :] / area, shape).copy()
    if kind == "global_max_pooling":
        top = x.max(axis=(1, 2))
        ties = (x == top[:, None, None, :]).astype(np.float64)
        share = ties / ties.sum(axis=(1, 2), keepdims=True)
        return top, lambda g: share * g[:, None, None, :]
    raise ValueError(f"head layer kind {kind!r} is not supported")


def check_layers(layers: Sequence[Mapping[str, Any]], weights: Mapping[str, np.ndarray]) -> None:
    """``ValueError`` naming the first layer that is unknown or lacks a weight."""
    needs = {
        "dense": ("kernel", "bias"),
        "conv2d": ("kernel", "bias"),
        "batch_normalization": ("gamma", "beta", "mean", "variance"),
    }
    for index, layer in enumerate(layers):
        kind = layer.get("kind")
        if kind not in LAYER_KINDS:
            raise ValueError(f"head layer {layer.get('name')!r} has unknown kind {kind!r}")
        missing = [name for name in needs.get(str(kind), ()) if f"{index}.{name}" not in weights]
        if missing:
            raise ValueError(f"head layer {layer.get('name')!r} lacks weight(s) {', '.join(missing)}")
        function = layer.get("function", layer.get("activation"))
        if kind in ("dense", "conv2d", "activation") and not supported_activation(str(function or "linear")):
            raise ValueError(f"head layer {layer.get('name')!r}: activation {function!r} is not supported")
