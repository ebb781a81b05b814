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


# --------------------------------------------------------------------------- explain artifact (no TensorFlow)


def make_explain_run(folder: Path, *, input_size: int = 32, legacy: bool = False) -> Path:
    """A finished run folder with a tiny conv -> GAP -> dense -> sigmoid ``model.onnx`` and its explain artifact
    (``explain.npz``, ``explain.json``, method ``cam``), as export writes them, made with onnx.helper only: the
    feature map found in model.onnx by value (:func:`~mura_ens.explain.graph.add_feature_output`, as export does:
    tensor ``r2``, channels-first), so no ``explain.onnx.bin``. ``legacy``: the format-1 artifact instead, a
    separate two-output ``explain.onnx.bin`` (output ``features``) and an ``explain.json`` of version 1.
    The feature map is (N, input_size/2, input_size/2, 8); the dense kernel is positive, so the maps are not
    all zero. Returns the ``model.onnx`` path.
    """
    from mura_ens.explain.artifact import ExplainSpec, write_artifact
    from mura_ens.explain.graph import add_feature_output
    from mura_ens.io import file_sha256

    if input_size % 2:
        raise ValueError("input_size must be even")
    rng = np.random.default_rng(7)
    f = np.float32
    half = input_size // 2
    inits = {
        "scale": np.full(3, 1 / 255, f),
        "w1": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(f),
        "b1": rng.normal(0, 0.1, 4).astype(f),
        "w2": rng.normal(0, 0.5, (8, 4, 3, 3)).astype(f),
        "b2": rng.normal(0.05, 0.1, 8).astype(f),
        "kernel": rng.uniform(0.2, 1.5, (8, 1)).astype(f),
        "bias": np.array([-0.4], f),
    }
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Transpose", ["r2"], ["features"], perm=[0, 2, 3, 1]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "kernel"], ["logit0"]),
        helper.make_node("Add", ["logit0", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", input_size, input_size, 3])
    prob = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", half, half, 8])
    metadata = {**METADATA, "plugin": "tiny_explain", "model_name": folder.name, "input_size": str(input_size)}

    def serialized(outputs: list) -> bytes:
        kept = nodes if features in outputs else [n for n in nodes if n.output[0] != "features"]
        graph = helper.make_graph(
            kept,
            "tiny_explain",
            [image],
            outputs,
            initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        helper.set_model_props(model, metadata)
        onnx.checker.check_model(model)
        return model.SerializeToString()

    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "model.onnx"
    model_path.write_bytes(serialized([prob]))
    two_outputs = serialized([prob, features])
    found = None
    if not legacy:  # export's route: the Keras feature map (here: the two-output graph's) found in model.onnx
        probe = np.random.default_rng(1).integers(0, 256, (2, input_size, input_size, 3)).astype(np.float32)
        session = cpu_session(two_outputs)
        found = add_feature_output(model_path.read_bytes(), session.run(["features"], {"image": probe})[0], probe)
        assert found is not None and (found.feature_tensor, found.layout) == ("r2", "nchw"), found
    card = {"model_name": folder.name, "plugin": "tiny_explain", "body_parts": [], "input_size": input_size}
    (folder / "card.json").write_text(json.dumps({**card, "onnx_metadata": metadata}), encoding="utf-8")
    spec = ExplainSpec(
        method="cam",
        feature_layer="relu2",
        feature_shape=(half, half, 8),
        layers=(
            {"kind": "global_average_pooling", "name": "gap"},
            {"kind": "dense", "name": "abnormal", "activation": "linear", "units": 1},
        ),
        input_name="image",
        feature_output="features" if found is None else found.feature_output,
        probability_output="prob",
        input_size=input_size,
        model_sha256=file_sha256(model_path),
        plugin="tiny_explain",
        model_name=folder.name,
        checks={"graph": "converted" if found is None else found.source},
        feature_tensor=None if found is None else found.feature_tensor,
        feature_layout=None if found is None else found.layout,
    )
    weights = {"1.kernel": inits["kernel"], "1.bias": inits["bias"]}
    write_artifact(folder, spec, weights, two_outputs if found is None else None)
    if legacy:  # format 1: no feature_tensor / feature_layout keys, the graph always in explain.onnx.bin
        described = json.loads((folder / "explain.json").read_text(encoding="utf-8"))
        for key in ("feature_tensor", "feature_layout"):
            del described[key]
        (folder / "explain.json").write_text(json.dumps({**described, "version": 1}), encoding="utf-8")
    return model_path
