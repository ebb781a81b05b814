"""Read what scoring needs from an ONNX file without importing the ``onnx`` package.

``import onnx`` costs ~0.65 s of CPU (most of it ``ml_dtypes``), more than the rest of a
one-study ``mura-ens score`` start-up. The scorer only needs a model's ``metadata_props``,
its graph inputs, the names of its initializers and the op types of its nodes:
:func:`read_header` walks the protobuf wire format for exactly those fields and skips
everything else (weights included) without copying it.

It is strict: anything that is not well-formed protobuf (a bad wire type, a length past
the end, a truncated varint) or not shaped like an ONNX model raises :class:`WireError`,
and callers then fall back to ``onnx`` itself, which gives the user its usual message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Field numbers of onnx.proto (ModelProto, GraphProto, NodeProto, ValueInfoProto, TypeProto, ...).
_MODEL_GRAPH, _MODEL_PROPS = 7, 14
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT = 1, 5, 11
_NODE_OP_TYPE = 4
_TENSOR_NAME = 8
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_ELEM_TYPE, _TENSOR_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2


class WireError(ValueError):
    """The bytes are not a well-formed ONNX model as far as :func:`read_header` reads them."""


@dataclass
class GraphInput:
    """One graph input: name, element type (``onnx.TensorProto`` code, 0 = not a tensor), dims (int, str or None)."""

    name: str
    elem_type: int = 0
    dims: list[int | str | None] = field(default_factory=list)
    is_tensor: bool = False


@dataclass
class ModelHeader:
    """What :func:`read_header` found in a model file."""

    props: dict[str, str]
    has_graph: bool
    inputs: list[GraphInput]
    initializers: set[str]
    op_types: set[str]
    #: Nodes of the main graph (not of subgraphs).
    node_count: int = 0


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview, pos: int, end: int):
    """Yield ``(field number, wire type, value or (start, stop))`` of one message between ``pos`` and ``end``."""
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if kind == 0:
            value, pos = _varint(data, pos, end)
            yield number, kind, value
        elif kind == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise WireError("length past the end")
            yield number, kind, (pos, pos + length)
            pos += length
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
            if pos > end:
                raise WireError("fixed field past the end")
        else:
            raise WireError(f"wire type {kind}")
    if pos != end:
        raise WireError("message overruns its length")


def _text(data: memoryview, span: tuple[int, int]) -> str:
    try:
        return bytes(data[span[0] : span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("a string is not UTF-8") from None


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _dims(data: memoryview, span: tuple[int, int]) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for number, kind, value in _fields(data, *span):
        if number == _SHAPE_DIM and kind == 2:
            dim: int | str | None = None
            for n, k, v in _fields(data, *value):
                if n == _DIM_VALUE and k == 0:
                    dim = _signed(v)
                elif n == _DIM_PARAM and k == 2 and dim is None:
                    dim = _text(data, v) or None
            dims.append(dim)
    return dims


def _graph_input(data: memoryview, span: tuple[int, int]) -> GraphInput:
    item = GraphInput(name="")
    for number, kind, value in _fields(data, *span):
        if number == _VALUE_NAME and kind == 2:
            item.name = _text(data, value)
        elif number == _VALUE_TYPE and kind == 2:
            for n, k, v in _fields(data, *value):
                if n == _TYPE_TENSOR and k == 2:
                    item.is_tensor = True
                    for tn, tk, tv in _fields(data, *v):
                        if tn == _TENSOR_ELEM_TYPE and tk == 0:
                            item.elem_type = tv
                        elif tn == _TENSOR_SHAPE and tk == 2:
                            item.dims = _dims(data, tv)
    return item


def _name_of(data: memoryview, span: tuple[int, int], number_wanted: int) -> str:
    for number, kind, value in _fields(data, *span):
        if number == number_wanted and kind == 2:
            return _text(data, value)
    return ""


def read_header(data: bytes) -> ModelHeader:
    """The metadata, graph inputs, initializer names, op types and node count of the serialized ONNX model ``data``.

    Raises :class:`WireError` when ``data`` is not well-formed protobuf as read here.
    """
    view = memoryview(data)
    header = ModelHeader(props={}, has_graph=False, inputs=[], initializers=set(), op_types=set())
    for number, kind, value in _fields(view, 0, len(view)):
        if number == _MODEL_PROPS and kind == 2:
            key = val = ""
            for n, k, v in _fields(view, *value):
                if n == 1 and k == 2:
                    key = _text(view, v)
                elif n == 2 and k == 2:
                    val = _text(view, v)
            header.props[key] = val
        elif number == _MODEL_GRAPH and kind == 2:
            header.has_graph = True
            for n, k, v in _fields(view, *value):
                if k != 2:
                    continue
                if n == _GRAPH_NODE:
                    header.op_types.add(_name_of(view, v, _NODE_OP_TYPE))
                    header.node_count += 1
                elif n == _GRAPH_INITIALIZER:
                    header.initializers.add(_name_of(view, v, _TENSOR_NAME))
                elif n == _GRAPH_INPUT:
                    header.inputs.append(_graph_input(view, v))
    return header
