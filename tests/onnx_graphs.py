"""Small convolutional ONNX graphs shaped like tf2onnx's Keras CNNs (no TensorFlow), and a run folder around one.

Used by tests/test_quantize.py and tests/test_export_cli.py (through conftest's ``run_dir`` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mura_ens.onnx.inference import cpu_session, run_model

SIZE = 32
METADATA = {
    "plugin": "tiny_cnn",
    "model_name": "tiny_cnn",
    "body_parts": "",
    "input_size": str(SIZE),
    "resize_policy": "stretch",
    "threshold": "0.5",
    "mura_ens_version": "0.1.0",
}


def make_cnn(path: Path, *, seed: int = 0, pad_source: str = "Relu", bn_after_conv: bool = False) -> Path:
    """Write the small tf2onnx-shaped CNN described in the module docstring and return its path.

    ``pad_source="Conv"`` pads a (possibly negative) conv output instead of a Relu output;
    ``bn_after_conv`` puts the Mul+Add after a Conv (which ONNX Runtime fuses itself).
    """
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = {
        "norm_scale": np.full(3, 1 / 64, f),
        "norm_shift": np.full(3, -2.0, f),
        "w1": rng.normal(0, 0.4, (8, 3, 3, 3)).astype(f),
        "b1": rng.normal(0, 0.1, 8).astype(f),
        "w2": rng.normal(0, 0.3, (8, 8, 3, 3)).astype(f),
        "b2": rng.normal(0, 0.1, 8).astype(f),
        "bn_scale": rng.uniform(0.5, 1.5, (1, 16, 1, 1)).astype(f),
        "bn_shift": rng.normal(0, 0.2, (1, 16, 1, 1)).astype(f),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "w_head": rng.normal(0, 0.5, (16, 1)).astype(f),
        "b_head": np.array([-0.5], f),
    }
    nodes = [
        helper.make_node("Mul", ["image", "norm_scale"], ["normed0"]),
        helper.make_node("Add", ["normed0", "norm_shift"], ["normed"]),
        helper.make_node("Transpose", ["normed"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["r1", "c2"], ["cat"], axis=1),
    ]
    if bn_after_conv:  # a Conv's own BatchNorm: left to onnxruntime's Conv+Mul/Add fusion
        inits["w3"] = rng.normal(0, 0.3, (16, 16, 1, 1)).astype(f)
        nodes.append(helper.make_node("Conv", ["cat", "w3"], ["bn_in"], kernel_shape=[1, 1]))
    else:
        nodes.append(helper.make_node("Identity", ["cat"], ["bn_in"]))
    nodes += [
        helper.make_node("Mul", ["bn_in", "bn_scale"], ["bn_mul"], name="block_bn/mul"),
        helper.make_node("Add", ["bn_mul", "bn_shift"], ["bn"], name="block_bn/add"),
        helper.make_node("Relu", ["bn"], ["r2"]),
    ]
    pad_input = "r2" if pad_source == "Relu" else "bn"
    nodes += [
        helper.make_node("Pad", [pad_input, "pads"], ["padded"], mode="constant"),
        helper.make_node("MaxPool", ["padded"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["pooled"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w_head"], ["logit0"]),
        helper.make_node("Add", ["logit0", "b_head"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, METADATA)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.float32)


def probabilities(model: str | Path, x: np.ndarray) -> np.ndarray:
    """One probability per image of the model file at ``model``."""
    return run_model(cpu_session(str(model)), x)


def raw_outputs(model, x: np.ndarray) -> np.ndarray:
    """The first output of a ModelProto of any shape (not a probability model)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# --------------------------------------------------------------------------- graph rewrite


def make_run_dir(tmp_path: Path, synth_small: dict) -> Path:
    """A run folder as ``mura-ens train`` leaves it (model.onnx + card.json) for the synth_small data."""
    from mura_ens.training.data import load_training_data

    run = tmp_path / "tiny_cnn"
    make_cnn(run / "model.onnx")
    data = load_training_data(synth_small["root"], val_fraction=0.25, seed=5)
    card = {
        "model_name": "tiny_cnn",
        "plugin": "tiny_cnn",
        "body_parts": [],
        "input_size": SIZE,
        "onnx_metadata": METADATA,
        "config": {"seed": 5, "val_fraction": 0.25, "max_images": None, "image_size": SIZE},
        "data": {
            "source": synth_small["root"],
            "manifest_sha256": data.manifest_sha256,
            "split_seed": 5,
            "val_fraction": 0.25,
        },
    }
    (run / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return run
