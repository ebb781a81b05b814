"""mura_ens.onnx.wire reads an ONNX file's metadata, inputs and op types as onnx does, without importing it."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from mura_ens.onnx.wire import WireError, read_header
from mura_ens.scoring.models import load_model_spec


def _model(dims=("N", 32, 32, 3), elem=TensorProto.FLOAT, props=None) -> onnx.ModelProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "w"], ["m"]), helper.make_node("ReduceMean", ["m"], ["prob"], keepdims=0)],
        "g",
        [
            helper.make_tensor_value_info("image", elem, list(dims)),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N"])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, props or {"model_name": "x", "input_size": "32", "body_parts": "XR_HAND"})
    return model


def test_header_equals_what_onnx_reads(tiny_models):
    for path in tiny_models.values():
        data = path.read_bytes()
        header = read_header(data)
        model = onnx.load_model_from_string(data)
        assert header.props == {p.key: p.value for p in model.metadata_props}
        assert header.initializers == {t.name for t in model.graph.initializer}
        assert header.op_types == {n.op_type for n in model.graph.node}
        assert [i.name for i in header.inputs] == [i.name for i in model.graph.input]
        for mine, theirs in zip(header.inputs, model.graph.input):
            dims = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in theirs.type.tensor_type.shape.dim
            ]
            assert (mine.elem_type, mine.dims) == (theirs.type.tensor_type.elem_type, dims)


def test_spec_without_onnx_equals_spec_with_it(tmp_path, monkeypatch):
    from mura_ens.onnx import spec as M  # where load_model_spec lives (mura_ens.scoring.models re-exports it)

    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    fast = load_model_spec(path)
    monkeypatch.setattr(M, "_spec_without_onnx", lambda *_: None)  # the onnx path
    assert load_model_spec(path) == fast
    assert fast.metadata == {"model_name": "x", "input_size": "32", "body_parts": "XR_HAND"}
    assert (fast.input_name, fast.input_dtype, fast.input_size, fast.body_parts) == (
        "image",
        "float32",
        32,
        ("XR_HAND",),
    )


@pytest.mark.parametrize(
    "dims, elem, message",
    [
        (("N", 32, 32, 1), TensorProto.FLOAT, "RGB pixels"),
        ((4, 32, 32, 3), TensorProto.FLOAT, "fixed batch"),
        (("N", 32, 32, 3), TensorProto.INT64, "element type INT64"),
    ],
)
def test_irregular_models_keep_onnx_messages(tmp_path, dims, elem, message):
    from mura_ens.errors import ModelError

    path = tmp_path / "m.onnx"
    onnx.save(_model(dims=dims, elem=elem), str(path))
    with pytest.raises(ModelError, match=message):
        load_model_spec(path)


def test_malformed_bytes_raise_wire_error():
    data = _model().SerializeToString()
    for broken in (data[: len(data) // 2], b"\xff" * 64, b"not an onnx model at all\x07"):
        with pytest.raises(WireError):
            read_header(broken)


def test_scoring_a_small_model_does_not_import_onnx(tiny_models):
    path = next(iter(tiny_models.values()))
    probe = (
        "import sys; from mura_ens.scoring.models import load_model_spec; from mura_ens.scoring.sessions import "
        f"SessionConfig, get_session; get_session(load_model_spec({str(path)!r}), SessionConfig(intra_op_threads=1)); "
        "print('onnx' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
