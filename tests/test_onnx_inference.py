"""mura_ens.onnx.inference: the one loop that feeds images to an ONNX Runtime session (tiny models, no TensorFlow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper
from scoring_fixtures import tiny

from mura_ens.errors import ModelError
from mura_ens.onnx.inference import cpu_session, run_model


def expected(images: np.ndarray, a: float, b: float) -> np.ndarray:
    means = images.reshape(len(images), -1).astype(np.float64).mean(axis=1)
    return np.array([1 / (1 + math.exp(-(a * m / 255 + b))) for m in means])


def test_run_model_batches_and_returns_one_probability_per_image(tmp_path):
    path = tiny.make_tiny_model(tmp_path / "m.onnx", a=3.0, b=-1.0)
    session = cpu_session(str(path))
    assert session.get_providers() == ["CPUExecutionProvider"]
    images = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3)).astype(np.uint8)
    whole = run_model(session, images, 16)
    assert whole.shape == (7,) and whole.dtype == np.float64
    np.testing.assert_allclose(whole, expected(images, 3.0, -1.0), atol=1e-6)
    np.testing.assert_allclose(run_model(session, images, 3), whole, atol=1e-7)  # 3 + 3 + 1
    assert run_model(session, images[:0], 4).shape == (0,)


def test_run_model_feeds_uint8_and_a_named_input(tmp_path):
    path = tiny.make_tiny_model(tmp_path / "u8.onnx", a=1.0, b=0.0, input_dtype="uint8")
    images = np.full((2, 4, 4, 3), 255, np.uint8)
    probs = run_model(cpu_session(path.read_bytes()), images, 2, input_name="image", dtype=np.uint8)
    np.testing.assert_allclose(probs, [1 / (1 + math.exp(-1.0))] * 2, atol=1e-6)


def test_an_output_that_is_not_one_probability_per_image_is_a_model_error():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["same"])],
        "identity",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2, 2, 3])],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, ["N", 2, 2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = cpu_session(model.SerializeToString())
    with pytest.raises(ModelError, match=r"identity-net: output shape \(1, 2, 2, 3\); expected \(N, 1\)"):
        run_model(session, np.zeros((1, 2, 2, 3), np.float32), name="identity-net")
