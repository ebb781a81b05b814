"""The explain graph made from ``model.onnx`` itself: the same graph with the feature map as a second output.

Export knows the feature map's values (Keras computes them on the parity images) but not the name tf2onnx gave
that tensor. :func:`add_feature_output` finds it by shape and value: every float tensor of shape
(N, h, w, C) or (N, C, h, w) in the graph is a candidate, the candidates are computed by ONNX Runtime on the
images, and the one closest to the Keras values (within :data:`MATCH_TOLERANCE`, relative to their scale)
becomes an output, transposed to (N, h, w, C) when the graph holds it channels-first. The probability output
stays first, so the explain graph computes exactly what ``model.onnx`` does. ONNX and ONNX Runtime only.

Export keeps only the tensor's name, layout and shape (in ``explain.json``, not a second copy of the model):
:func:`with_feature_output` is the one edit that makes the explain graph, run by :func:`add_feature_output` at
export and by :func:`rebuild_explain_graph` when scoring loads the run's ``model.onnx``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Largest difference accepted between the Keras feature map and an ONNX tensor, relative to max(1, max |A|).
MATCH_TOLERANCE = 1e-3
#: The name of the added (N, h, w, C) output when the graph holds the feature map channels-first.
FEATURE_OUTPUT = "explain_features"
#: How the graph holds the feature map: (N, h, w, C) or (N, C, h, w).
LAYOUTS: tuple[str, ...] = ("nhwc", "nchw")
#: ``ExplainGraph.source`` of model.onnx plus the feature output (else ``"converted"``: a separate conversion).
FROM_MODEL = "model.onnx + feature output"


@dataclass(frozen=True)
class ExplainGraph:
    """A two-output ONNX model: ``probability_output`` (first, as in model.onnx) and ``feature_output``."""

    proto: Any
    feature_output: str
    probability_output: str
    source: str  # FROM_MODEL or "converted" (a separate conversion)
    match_max_abs_diff: float | None = None
    feature_tensor: str | None = None  # FROM_MODEL: the tensor of model.onnx holding the feature map
    layout: str | None = None  # FROM_MODEL: its layout, one of LAYOUTS


def _candidates(proto: Any, shape: tuple[int, int, int]) -> list[tuple[Any, tuple[str, ...]]]:
    """Value infos of float tensors shaped (N, h, w, C) (``"nhwc"``) or (N, C, h, w) (``"nchw"``), with the
    layouts their shape allows (both when h == w == C)."""
    import onnx

    h, w, c = shape
    inferred = onnx.shape_inference.infer_shapes(proto)
    found = []
    for info in inferred.graph.value_info:
        kind = info.type.tensor_type
        if kind.elem_type != onnx.TensorProto.FLOAT or len(kind.shape.dim) != 4:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim[1:])
        layouts = tuple(layout for layout, expected in (("nhwc", (h, w, c)), ("nchw", (c, h, w))) if dims == expected)
        if layouts:
            found.append((info, layouts))
    return found


def find_tensors(
    model_bytes: bytes, arrays: list[np.ndarray], images: np.ndarray
) -> list[tuple[str, str, float]] | None:
    """For each of ``arrays`` (N, h, w, C: Keras values on ``images``), the tensor of ``model.onnx`` holding the
    same values: ``(name, layout, max |difference|)``; None when one of them has no match."""
    import onnx

    from ..onnx.inference import cpu_session

    proto = onnx.load_model_from_string(model_bytes)
    wanted = [_candidates(proto, tuple(int(d) for d in a.shape[1:])) for a in arrays]  # type: ignore[arg-type]
    infos = {info.name: info for found in wanted for info, _ in found}
    if not all(wanted):
        return None
    probe = onnx.load_model_from_string(model_bytes)
    probe.graph.output.extend(infos.values())
    session = cpu_session(probe.SerializeToString())
    values = dict(zip(infos, session.run(list(infos), {session.get_inputs()[0].name: images}), strict=True))
    matches: list[tuple[str, str, float]] = []
    for array, found in zip(arrays, wanted, strict=True):
        scale = max(1.0, float(np.max(np.abs(array))))
        best: tuple[float, str, str] | None = None
        for info, layouts in found:
            for layout in layouts:
                value = np.asarray(values[info.name])
                nhwc = value.transpose(0, 2, 3, 1) if layout == "nchw" else value
                diff = float(np.max(np.abs(nhwc - array))) if nhwc.shape == array.shape else np.inf
                if np.isfinite(diff) and diff <= MATCH_TOLERANCE * scale and (best is None or diff < best[0]):
                    best = (diff, info.name, layout)
        if best is None:
            return None
        matches.append((best[1], best[2], best[0]))
    return matches


def add_feature_output(model_bytes: bytes, features: np.ndarray, images: np.ndarray) -> ExplainGraph | None:
    """``model.onnx`` (bytes) with the tensor equal to ``features`` (N, h, w, C, the Keras feature map of
    ``images``) added as an (N, h, w, C) output; None when no tensor of the graph matches."""
    import onnx

    found = find_tensors(model_bytes, [features], images)
    if found is None:
        return None
    ((tensor, layout, diff),) = found
    proto = onnx.load_model_from_string(model_bytes)
    h, w, c = (int(d) for d in features.shape[1:])
    name = with_feature_output(proto, tensor, layout, (h, w, c))
    return ExplainGraph(
        proto=proto,
        feature_output=name,
        probability_output=proto.graph.output[0].name,
        source=FROM_MODEL,
        match_max_abs_diff=diff,
        feature_tensor=tensor,
        layout=layout,
    )


def with_feature_output(
    proto: Any, tensor: str, layout: str, shape: tuple[int, int, int], transposed: str = FEATURE_OUTPUT
) -> str:
    """Add ``tensor`` of ``proto`` (held in ``layout``, feature map (h, w, C) = ``shape``) as its last output,
    (N, h, w, C), transposed (as output ``transposed``) when the graph holds it channels-first; return the
    output's name. ``ValueError`` when the graph makes no such tensor or ``layout`` is unknown."""
    import onnx
    from onnx import helper

    if layout not in LAYOUTS:
        raise ValueError(f"unknown feature layout {layout!r}")
    if not any(tensor in node.output for node in proto.graph.node):
        raise ValueError(f"the graph computes no tensor {tensor!r}")
    h, w, c = shape
    name = tensor
    if layout == "nchw":
        proto.graph.node.append(helper.make_node("Transpose", [tensor], [transposed], perm=[0, 2, 3, 1]))
        name = transposed
    proto.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", h, w, c]))
    return name


def side_output_name(index: int) -> str:
    """The name of side input ``index``'s added output when the graph holds it channels-first."""
    return f"explain_side_{index}"


def rebuild_explain_graph(
    model_bytes: bytes,
    tensor: str,
    layout: str,
    shape: tuple[int, int, int],
    sides: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    """The explain graph (serialized) of ``model_bytes`` (the run's fp32 ``model.onnx``), as export made it from
    the tensor, layout and shape ``explain.json`` records, and the side inputs (``tensor``, ``layout``,
    ``shape`` each), added as outputs after the feature map."""
    import onnx

    proto = onnx.load_model_from_string(model_bytes)
    with_feature_output(proto, tensor, layout, shape)
    for index, side in enumerate(sides):
        h, w, c = (int(v) for v in side["shape"])
        with_feature_output(proto, str(side["tensor"]), str(side["layout"]), (h, w, c), side_output_name(index))
    return proto.SerializeToString()
