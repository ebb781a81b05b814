"""Exact ONNX graph rewrites that make CNN exports run (and quantize) faster on CPU.

tf2onnx folds a BatchNormalization that follows a convolution into that
convolution, but one that follows a ``Concat`` or a pooling (every dense
layer and transition of DenseNet, ~100 of them) stays as a per-channel
``Mul`` (+ ``Add`` when the shift is not zero). In a QDQ-quantized model each
such pair runs in float between a DequantizeLinear and a QuantizeLinear;
measured on DenseNet201 they took about 38% of int8 inference time (FACTS.md),
and in fp32 they break onnxruntime's blocked (NCHWc) layout.

:func:`rewrite_for_inference` applies four rewrites, each computing the same
function up to float rounding:

- **affine -> depthwise conv**: ``Mul(x, s) [-> Add(., b)]`` with per-channel
  constants of shape ``(1, C, 1, 1)`` or ``(C, 1, 1)`` on a rank-4 ``x`` with
  ``C >= 8`` channels, whose producer is not a ``Conv`` (onnxruntime fuses
  those itself), becomes one 1x1 depthwise ``Conv(x, W=s, B=b, group=C)``;
- **pad into max-pool**: a ``Pad`` (constant zeros, spatial axes only) of a
  ``Relu`` output feeding only a ``MaxPool`` becomes the pool's own ``pads``:
  the input is non-negative, so zero padding and ``MaxPool``'s padding (which
  never wins) give the same maxima while every window still covers a real
  pixel (each pad smaller than the kernel);
- **pool before pointwise conv**: ``1x1 Conv -> AveragePool`` (no padding)
  becomes ``AveragePool -> 1x1 Conv``: both are linear on different axes and
  an average passes the bias through, and the convolution then runs on a
  quarter of the pixels (DenseNet's transitions, ~9% of its multiply-adds);
- **transpose hoisting**: the NHWC input normalisation (``Mul``/``Add`` by a
  per-channel constant on an axis of length 3) followed by the ``Transpose``
  to NCHW becomes ``Transpose`` then the same ops on NCHW, where
  onnxruntime broadcasts over whole planes instead of 3-element rows.

Measured on the 2-core AVX-512 machine (DenseNet201, 256 px, batch 16): fp32
14.2 -> 16.6 images/s, and the int8 model quantized after the rewrites 37.8
-> 45.8 images/s. Nothing here needs TensorFlow.
:func:`check_rewrite_parity` runs two graphs on the same images;
:func:`rewrite_model_file` refuses a rewrite that moves any output by more
than :data:`REWRITE_TOLERANCE`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .inference import cpu_session, run_model

#: Per-channel affines on fewer channels (an RGB image's normalisation) stay elementwise ops.
MIN_AFFINE_CHANNELS = 8
#: Largest probability difference a rewrite may cause (the ops are the same arithmetic in another order).
REWRITE_TOLERANCE = 1e-5


@dataclass
class RewriteSummary:
    """What :func:`rewrite_for_inference` changed: counts per rewrite, and the parity when checked."""

    affine_to_depthwise: int = 0
    pad_into_maxpool: int = 0
    pool_before_pointwise_conv: int = 0
    transpose_hoisted: int = 0
    max_abs_diff: float | None = None
    parity_images: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when at least one node was rewritten."""
        return bool(
            self.affine_to_depthwise
            or self.pad_into_maxpool
            or self.pool_before_pointwise_conv
            or self.transpose_hoisted
        )

    def as_dict(self) -> dict:
        """JSON-friendly form (model card)."""
        return {
            "affine_to_depthwise_conv": self.affine_to_depthwise,
            "pad_into_maxpool": self.pad_into_maxpool,
            "pool_before_pointwise_conv": self.pool_before_pointwise_conv,
            "transpose_hoisted": self.transpose_hoisted,
            "max_abs_diff": self.max_abs_diff,
            "parity_images": self.parity_images,
            "tolerance": REWRITE_TOLERANCE,
            "notes": list(self.notes),
        }


class _Graph:
    """Index of one ONNX graph: constants (decoded on demand), producers, consumers, inferred shapes."""

    def __init__(self, model):
        self.model = model
        self.graph = model.graph
        self._tensors = {t.name: t for t in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and len(node.output) == 1:
                for attr in node.attribute:
                    if attr.name == "value":
                        self._tensors[node.output[0]] = attr.t
        self._arrays: dict[str, np.ndarray] = {}
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in self.graph.output}
        self._shapes: dict[str, tuple] | None = None

    def is_constant(self, name: str) -> bool:
        return name in self._tensors

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (decoded once), or None for a computed one."""
        if name not in self._tensors:
            return None
        if name not in self._arrays:
            from onnx import numpy_helper

            self._arrays[name] = numpy_helper.to_array(self._tensors[name])
        return self._arrays[name]

    @property
    def shapes(self) -> dict[str, tuple]:
        """Static shapes from ONNX shape inference (None for unknown dims); {} when inference fails."""
        if self._shapes is None:
            import onnx

            try:
                inferred = onnx.shape_inference.infer_shapes(_skeleton(self.model), strict_mode=False)
            except Exception:
                inferred = self.model
            self._shapes = {}
            for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
                tensor = value.type.tensor_type
                if tensor.HasField("shape"):
                    self._shapes[value.name] = tuple(
                        d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
                    )
        return self._shapes

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None


def _skeleton(model):
    """A copy of ``model`` whose large float weights keep their shape but not their data.

    Shape inference only reads weight shapes; without the data it runs in
    milliseconds instead of a third of a second on DenseNet201.
    """
    import onnx
    from onnx import TensorProto

    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and len(tensor.dims) >= 2 and len(tensor.raw_data) > 4096:
            shell = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            graph.initializer.append(shell)
        else:
            graph.initializer.append(tensor)
    return skeleton


def _per_channel(value: np.ndarray | None, channels: int | None) -> np.ndarray | None:
    """The (C,) vector of a constant shaped (1, C, 1, 1) or (C, 1, 1), else None."""
    if value is None or channels is None or value.dtype != np.float32:
        return None
    shape = tuple(value.shape)
    if shape in ((1, channels, 1, 1), (channels, 1, 1)):
        return value.reshape(channels)
    return None


def _affine_operands(graph: _Graph, node, channels: int | None) -> tuple[str, np.ndarray] | None:
    """(tensor input, per-channel constant) of a Mul/Add with one constant operand, else None."""
    if len(node.input) != 2:
        return None
    a, b = node.input
    if graph.is_constant(b) and not graph.is_constant(a):
        vector = _per_channel(graph.constant(b), channels)
        return (a, vector) if vector is not None else None
    if graph.is_constant(a) and not graph.is_constant(b):
        vector = _per_channel(graph.constant(a), channels)
        return (b, vector) if vector is not None else None
    return None


def _rewrite_affines(graph: _Graph) -> int:
    """Per-channel Mul [+ Add] after a non-Conv producer -> 1x1 depthwise Conv. Returns the count."""
    from onnx import helper, numpy_helper

    replaced = 0
    new_nodes = []
    dropped: set[str] = set()  # first output of each Add merged into the Conv before it
    initializers = []
    for node in graph.graph.node:
        if node.output and node.output[0] in dropped:
            continue
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        data = next((i for i in node.input if not graph.is_constant(i)), None)
        shape = graph.shapes.get(data) if data else None
        channels = int(shape[1]) if shape is not None and len(shape) == 4 and shape[1] is not None else None
        operands = _affine_operands(graph, node, channels) if channels and channels >= MIN_AFFINE_CHANNELS else None
        producer = graph.producer.get(operands[0]) if operands else None
        if operands is None or channels is None or (producer is not None and producer.op_type == "Conv"):
            new_nodes.append(node)
            continue
        x, scale = operands
        bias = np.zeros_like(scale)
        output = node.output[0]
        follower = graph.only_consumer(output)
        if follower is not None and follower.op_type == "Add" and follower.domain in ("", "ai.onnx"):
            added = _affine_operands(graph, follower, channels)
            if added is not None and added[0] == output:
                bias = added[1].astype(np.float32)
                output = follower.output[0]
                dropped.add(output)
        base = f"{node.name or output}_dwconv"
        weight_name, bias_name = f"{base}_W", f"{base}_B"
        initializers.append(numpy_helper.from_array(scale.reshape(channels, 1, 1, 1).astype(np.float32), weight_name))
        initializers.append(numpy_helper.from_array(bias.astype(np.float32), bias_name))
        new_nodes.append(
            helper.make_node(
                "Conv", [x, weight_name, bias_name], [output], name=base, group=int(channels), kernel_shape=[1, 1]
            )
        )
        replaced += 1
    if replaced:
        del graph.graph.node[:]
        graph.graph.node.extend(new_nodes)
        graph.graph.initializer.extend(initializers)
    return replaced


def _pad_amounts(graph: _Graph, pad) -> list[int] | None:
    """Spatial pads [h_begin, w_begin, h_end, w_end] of a constant-zero NCHW Pad, else None."""
    attrs = {a.name: a for a in pad.attribute}
    mode = attrs["mode"].s.decode() if "mode" in attrs else "constant"
    if mode != "constant" or len(pad.input) < 2 or not graph.is_constant(pad.input[1]):
        return None
    if len(pad.input) >= 3 and pad.input[2]:
        value = graph.constant(pad.input[2])
        if value is None or np.any(value != 0):
            return None
    if len(pad.input) >= 4 and pad.input[3]:
        return None  # explicit axes: rare, not worth the bookkeeping
    constant = graph.constant(pad.input[1])
    if constant is None:
        return None
    pads = [int(v) for v in constant.reshape(-1)]
    if len(pads) != 8 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[4] or pads[5]:
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


def _fold_pads(graph: _Graph) -> int:
    """Zero Pad of a Relu output feeding only a MaxPool -> the MaxPool's own pads. Returns the count."""
    folded = 0
    removed = []
    for pad in list(graph.graph.node):
        if pad.op_type != "Pad":
            continue
        source = graph.producer.get(pad.input[0])
        pool = graph.only_consumer(pad.output[0])
        if source is None or source.op_type != "Relu" or pool is None or pool.op_type != "MaxPool":
            continue
        amounts = _pad_amounts(graph, pad)
        attrs = {a.name: a for a in pool.attribute}
        if amounts is None or "kernel_shape" not in attrs:
            continue
        kernel = list(attrs["kernel_shape"].ints)
        existing = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1, 1]
        if len(kernel) != 2 or auto_pad != "NOTSET" or any(existing) or dilations != [1, 1]:
            continue
        if len(pool.output) > 1 and pool.output[1]:
            continue  # the Indices output would change
        if any(p >= k for p, k in zip(amounts, kernel + kernel)):
            continue
        for i, name in enumerate(pool.input):
            if name == pad.output[0]:
                pool.input[i] = pad.input[0]
        for attr in list(pool.attribute):
            if attr.name == "pads":
                pool.attribute.remove(attr)
        from onnx import helper

        pool.attribute.append(helper.make_attribute("pads", amounts))
        removed.append(pad)
        folded += 1
    for pad in removed:
        graph.graph.node.remove(pad)
    return folded


def _int_list(node, name: str, default: list[int]) -> list[int]:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints)
    return default


def _string(node, name: str, default: str) -> str:
    for attr in node.attribute:
        if attr.name == name:
            return attr.s.decode()
    return default


def _pools_before_pointwise_convs(graph: _Graph) -> int:
    """1x1 Conv -> AveragePool (no padding) becomes AveragePool -> 1x1 Conv. Returns the count.

    Both are linear and act on different axes (channels vs. space), so they
    commute; an average (weights summing to one) also passes the bias
    through. Pooling first runs the convolution on a quarter of the pixels
    (DenseNet's transition layers: about 9% of its multiply-adds).
    """
    from onnx import NodeProto

    nodes = graph.graph.node
    position = {node.output[0]: i for i, node in enumerate(nodes) if node.output}
    swapped = 0
    for j, pool in enumerate(nodes):
        if pool.op_type != "AveragePool" or pool.domain not in ("", "ai.onnx") or len(pool.output) != 1:
            continue
        conv = graph.producer.get(pool.input[0])
        if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
            continue
        users = graph.consumers.get(conv.output[0], [])
        if len(users) != 1 or conv.output[0] in graph.graph_outputs:
            continue
        weight = graph._tensors.get(conv.input[1]) if len(conv.input) > 1 else None
        if weight is None or len(weight.dims) != 4 or tuple(weight.dims[2:]) != (1, 1):
            continue
        if _int_list(conv, "strides", [1, 1]) != [1, 1] or any(_int_list(conv, "pads", [0, 0, 0, 0])):
            continue
        if _string(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            continue
        if any(_int_list(pool, "pads", [0, 0, 0, 0])) or _string(pool, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            continue
        i = position[conv.output[0]]
        new_pool, new_conv = NodeProto(), NodeProto()
        new_pool.CopyFrom(pool)
        new_conv.CopyFrom(conv)
        pooled = f"{pool.output[0]}_pooled_first"
        new_pool.input[0], new_pool.output[0] = conv.input[0], pooled
        new_conv.input[0], new_conv.output[0] = pooled, pool.output[0]
        # The pool takes the conv's place (its input exists there) and the conv the pool's (i < j).
        nodes[i].CopyFrom(new_pool)
        nodes[j].CopyFrom(new_conv)
        swapped += 1
    return swapped


_ELEMENTWISE = ("Mul", "Add", "Sub", "Div")


def _hoist_transposes(graph: _Graph) -> int:
    """Elementwise op with a constant -> Transpose becomes Transpose -> the op with the constant transposed.

    tf2onnx normalises the NHWC input image per channel and then transposes
    it to NCHW; a per-channel constant broadcast over the innermost axis of
    length 3 is onnxruntime's slowest broadcasting case (a few elements per
    inner loop), while after the transpose the same constant spans whole
    planes. Repeats until the transpose reaches a non-elementwise producer.
    """
    from onnx import NodeProto, numpy_helper

    nodes = graph.graph.node
    position = {out: i for i, node in enumerate(nodes) for out in node.output}
    hoisted = 0
    for j in range(len(nodes)):
        transpose = nodes[j]
        if transpose.op_type != "Transpose" or transpose.domain not in ("", "ai.onnx"):
            continue
        perm = _int_list(transpose, "perm", [])
        while True:
            op = graph.producer.get(transpose.input[0])
            if op is None or op.op_type not in _ELEMENTWISE or op.domain not in ("", "ai.onnx") or len(op.input) != 2:
                break
            if graph.only_consumer(op.output[0]) is None:
                break
            slot = [k for k, name in enumerate(op.input) if graph.is_constant(name)]
            if len(slot) != 1:
                break
            constant = graph.constant(op.input[slot[0]])
            if constant is None or constant.dtype != np.float32 or constant.ndim > len(perm) or not perm:
                break
            full = constant.reshape((1,) * (len(perm) - constant.ndim) + constant.shape)
            moved_constant = np.ascontiguousarray(np.transpose(full, perm))
            i = position[op.output[0]]
            new_transpose, new_op = NodeProto(), NodeProto()
            new_transpose.CopyFrom(transpose)
            new_op.CopyFrom(op)
            data = op.input[1 - slot[0]]
            moved = f"{transpose.output[0]}_early"
            constant_name = f"{op.input[slot[0]]}_transposed_{hoisted}"
            graph.graph.initializer.append(numpy_helper.from_array(moved_constant, constant_name))
            new_transpose.input[0], new_transpose.output[0] = data, moved
            new_op.input[1 - slot[0]], new_op.input[slot[0]] = moved, constant_name
            new_op.output[0] = transpose.output[0]
            nodes[i].CopyFrom(new_transpose)  # i < j: the transpose takes the op's place
            nodes[j].CopyFrom(new_op)
            graph = _Graph(graph.model)  # producers changed; graphs this size re-index in microseconds
            position = {out: k for k, node in enumerate(nodes) for out in node.output}
            transpose = nodes[i]
            j = i
            hoisted += 1
    return hoisted


def rewrite_for_inference(model, *, inplace: bool = False, check: bool = True) -> tuple[Any, RewriteSummary]:
    """The rewritten model (an ``onnx.ModelProto``) and what changed.

    See the module docstring for the two rewrites. ``model`` is copied first
    unless ``inplace``. Initializers left unused are removed; with ``check``
    the result must pass ``onnx.checker``.
    """
    import onnx

    if inplace:
        result = model
    else:
        result = onnx.ModelProto()
        result.CopyFrom(model)
    summary = RewriteSummary()
    summary.affine_to_depthwise = _rewrite_affines(_Graph(result))
    summary.pad_into_maxpool = _fold_pads(_Graph(result))
    summary.pool_before_pointwise_conv = _pools_before_pointwise_convs(_Graph(result))
    summary.transpose_hoisted = _hoist_transposes(_Graph(result))
    if summary.changed:
        _drop_unused_initializers(result)
        if check:
            onnx.checker.check_model(result)
    return result, summary


def _drop_unused_initializers(model) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def _session(model):
    """A quiet CPU session for a ModelProto, serialized bytes or a path."""
    if isinstance(model, (str, os.PathLike)):
        return cpu_session(str(model))
    return cpu_session(model if isinstance(model, bytes) else model.SerializeToString())


def check_rewrite_parity(original, rewritten, images: np.ndarray, *, batch_size: int = 16) -> float:
    """Largest absolute difference between the probabilities of two models on ``images``.

    Each model is a ModelProto, serialized bytes or a path; both run on the CPU with
    :func:`~mura_ens.onnx.inference.run_model` in batches of ``batch_size``.
    """
    if not len(images):
        return 0.0
    before = run_model(_session(original), images, batch_size, name="model before the rewrite")
    after = run_model(_session(rewritten), images, batch_size, name="rewritten model")
    return float(np.max(np.abs(before - after)))


def rewrite_model_file(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    parity_images: np.ndarray,
    tolerance: float = REWRITE_TOLERANCE,
) -> RewriteSummary:
    """Rewrite the model at ``source`` into ``destination`` after a parity check on ``parity_images``.

    Raises :class:`~mura_ens.errors.ModelError` (and writes nothing) when
    any output moves by more than ``tolerance``. Metadata are kept.
    """
    import onnx

    from ..io import atomic_write_bytes

    original = onnx.load(str(source))
    rewritten, summary = rewrite_for_inference(original)
    data = rewritten.SerializeToString()
    summary.parity_images = int(len(parity_images))
    summary.max_abs_diff = check_rewrite_parity(str(source), data, parity_images) if len(parity_images) else None
    if summary.max_abs_diff is not None and not summary.max_abs_diff <= tolerance:
        raise ModelError(
            f"{source}: graph rewrite changes outputs by {summary.max_abs_diff:.3g} > {tolerance:g}; not written"
        )
    atomic_write_bytes(Path(destination), data)
    return summary
