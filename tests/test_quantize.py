"""int8 export (mura_ens.onnx.quantize) and the graph rewrite before it (mura_ens.onnx.rewrite). No TensorFlow.

The models are small convolutional graphs written with ``onnx.helper`` in the
shape tf2onnx gives a Keras CNN: NHWC input, per-channel normalisation, a
Transpose to NCHW, Conv+Relu, a Concat followed by a BatchNorm left as
Mul+Add (as in every DenseNet layer), a zero Pad before a MaxPool, global
average pooling and a sigmoid head.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import METADATA, SIZE, images, make_cnn, op_counts, probabilities, raw_outputs

from mura_ens.errors import ModelError, UsageError
from mura_ens.onnx.quantize import (
    INT8_FILE,
    QUANTIZATION,
    QuantizedRun,
    calibration_sample,
    int8_agreement,
    quantize_model,
    quantize_run,
    run_folds,
)
from mura_ens.onnx.rewrite import REWRITE_TOLERANCE, check_rewrite_parity, rewrite_for_inference, rewrite_model_file


def test_rewrite_turns_bn_into_depthwise_conv_and_folds_the_pad(tmp_path):
    model = onnx.load(str(make_cnn(tmp_path / "m.onnx")))
    rewritten, summary = rewrite_for_inference(model)
    assert (summary.affine_to_depthwise, summary.pad_into_maxpool, summary.transpose_hoisted) == (1, 1, 2)
    before, after = op_counts(model), op_counts(rewritten)
    assert after["Conv"] == before["Conv"] + 1 and "Pad" not in after
    assert after["Mul"] == before["Mul"] - 1 and after["Add"] == before["Add"] - 1  # the input Mul/Add stay
    # the NHWC input normalisation now runs after the transpose, on NCHW planes
    assert [n.op_type for n in rewritten.graph.node[:3]] == ["Transpose", "Mul", "Add"]
    scale = next(numpy_helper.to_array(t) for t in rewritten.graph.initializer if t.name.startswith("norm_scale"))
    assert scale.shape == (1, 3, 1, 1)
    dwconv = next(n for n in rewritten.graph.node if n.op_type == "Conv" and n.name.endswith("_dwconv"))
    assert helper.get_attribute_value(next(a for a in dwconv.attribute if a.name == "group")) == 16
    pool = next(n for n in rewritten.graph.node if n.op_type == "MaxPool")
    assert helper.get_attribute_value(next(a for a in pool.attribute if a.name == "pads")) == [1, 1, 1, 1]
    assert op_counts(model) == before  # the input model is untouched
    assert check_rewrite_parity(model, rewritten, images(6)) <= REWRITE_TOLERANCE


def test_rewrite_leaves_what_is_not_provably_equal(tmp_path):
    # Zero padding of a possibly negative tensor is not MaxPool padding; BN after a Conv is ORT's to fuse.
    model = onnx.load(str(make_cnn(tmp_path / "m.onnx", pad_source="Conv", bn_after_conv=True)))
    rewritten, summary = rewrite_for_inference(model)
    assert (summary.affine_to_depthwise, summary.pad_into_maxpool, summary.pool_before_pointwise_conv) == (0, 0, 0)
    assert op_counts(rewritten) == op_counts(model)
    assert check_rewrite_parity(model, rewritten, images(3)) <= REWRITE_TOLERANCE


def test_rewrite_model_file_checks_parity(tmp_path, monkeypatch):
    source = make_cnn(tmp_path / "m.onnx")
    summary = rewrite_model_file(source, tmp_path / "rw.onnx", parity_images=images(4))
    assert summary.max_abs_diff is not None and summary.max_abs_diff <= REWRITE_TOLERANCE
    assert {p.key: p.value for p in onnx.load(str(tmp_path / "rw.onnx")).metadata_props} == METADATA

    import mura_ens.onnx.rewrite as rw

    monkeypatch.setattr(rw, "check_rewrite_parity", lambda *a, **k: 0.5)
    with pytest.raises(ModelError, match="0.5"):
        rewrite_model_file(source, tmp_path / "bad.onnx", parity_images=images(4))
    assert not (tmp_path / "bad.onnx").exists()


# --------------------------------------------------------------------------- quantize_model


def test_quantize_model_writes_qdq_int8_close_to_fp32(tmp_path):
    source = make_cnn(tmp_path / "model.onnx")
    calibration = images(24, seed=2).astype(np.uint8)
    result = quantize_model(source, tmp_path / INT8_FILE, calibration)
    assert result.calibration_images == 24 and result.graph_rewrite["applied"]
    model = onnx.load(str(result.path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == {**METADATA, "quantization": QUANTIZATION, "calibration_images": "24"}
    ops = op_counts(model)
    assert ops.get("QuantizeLinear", 0) >= 3 and ops.get("DequantizeLinear", 0) >= 6
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if numpy_helper.to_array(t).dtype == np.int8]
    assert any(w.ndim == 4 for w in weights)  # conv weights stored as int8
    test = images(16, seed=3)
    diff = np.abs(probabilities(source, test) - probabilities(result.path, test))
    assert diff.max() < 0.05  # int8 rounding, not a different function


def test_quantize_model_needs_images(tmp_path):
    with pytest.raises(ModelError, match="no calibration images"):
        quantize_model(make_cnn(tmp_path / "model.onnx"), tmp_path / INT8_FILE, np.zeros((0, SIZE, SIZE, 3), np.uint8))


# --------------------------------------------------------------------------- run folders


def test_run_folds_rederive_the_training_split(run_dir, synth_small):
    card = json.loads((run_dir / "card.json").read_text())
    rows = run_folds(card)
    assert set(rows["fold"]) == {"train", "val", "test"}
    train = rows.loc[rows["fold"] == "train"]
    assert not train["path"].str.contains("/valid/").any()
    assert rows.loc[rows["fold"] == "test", "path"].str.contains("/valid/").all()
    # patients never on both sides of train/val, as assign_folds guarantees
    assert not set(train["patient"]) & set(rows.loc[rows["fold"] == "val", "patient"])

    paths = train["path"].tolist()
    sample, used = calibration_sample(paths, 10, image_size=SIZE, resize_policy="stretch", seed=0)
    assert sample.shape == (10, SIZE, SIZE, 3) and sample.dtype == np.uint8 and set(used) <= set(paths)
    again, used_again = calibration_sample(paths, 10, image_size=SIZE, resize_policy="stretch", seed=0)
    assert used_again == used and np.array_equal(again, sample)


def test_run_folds_use_the_trainers_row_selection(run_dir, synth_small):
    from mura_ens.training.data import load_training_data, model_rows

    card = json.loads((run_dir / "card.json").read_text())
    card["body_parts"] = ["XR_WRIST"]
    card["config"]["max_images"] = 6
    rows = run_folds(card)
    data = load_training_data(synth_small["root"], val_fraction=0.25, seed=5)
    expected = model_rows(data.frame, ("XR_WRIST",), 6, seed=5)
    pd.testing.assert_frame_equal(rows, expected)
    assert set(rows["body_part"]) == {"XR_WRIST"}
    assert rows.groupby("fold").size().max() <= 6 < len(data.frame.loc[data.frame["body_part"] == "XR_WRIST"])
    card["config"]["max_images"] = "many"
    with pytest.raises(UsageError, match="card.json has an unreadable"):
        run_folds(card)


def test_run_folds_refuses_other_data(run_dir):
    card = json.loads((run_dir / "card.json").read_text())
    card["data"]["manifest_sha256"] = "0" * 64
    with pytest.raises(UsageError, match="not the ones this model was trained on"):
        run_folds(card)
    card["data"]["source"] = "<DataFrame>"
    with pytest.raises(UsageError, match="data=PATH"):
        run_folds(card)


def test_quantize_run_writes_int8_and_records_agreement(run_dir, synth_small, tmp_path):
    result = quantize_run(run_dir, calibration_images=12, seed=0)
    path = result.path
    assert isinstance(result, QuantizedRun) and path == run_dir / INT8_FILE and path.is_file()
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["quantization"] == QUANTIZATION and meta["calibration_images"] == "12"
    assert all(meta[k] == v for k, v in METADATA.items())

    card = json.loads((run_dir / "card.json").read_text())
    assert card["model_name"] == "tiny_cnn"  # the rest of the card is kept
    section = card["int8"]
    assert section == result.section and result.agreement == section["agreement"]  # what was written is returned
    assert section["quantization"] == QUANTIZATION and section["calibration"]["images"] == 12
    assert section["calibration"]["fold"] == "train" and section["graph_rewrite"]["applied"]
    agreement = section["agreement"]
    assert agreement["fold"] == "test"
    n_valid = synth_small["totals"]["valid"]["images"]
    # every loadable valid image is scored; the truncated one is counted as not loaded
    assert agreement["n_images"] + agreement["n_images_not_loaded"] == n_valid
    assert agreement["n_images_not_loaded"] == 1
    for level in ("study", "image"):
        for precision in ("fp32", "int8"):
            assert set(agreement[level][precision]) >= {"n", "auc", "kappa", "accuracy"}
    if agreement["study"]["fp32"]["auc"] is not None:
        assert agreement["study_auc_diff"] == pytest.approx(
            agreement["study"]["int8"]["auc"] - agreement["study"]["fp32"]["auc"]
        )
    assert 0 <= agreement["image_mean_abs_prob_diff"] <= agreement["image_max_abs_prob_diff"] < 0.05
    assert agreement["fp32_images_per_s"] > 0 and agreement["int8_images_per_s"] > 0

    # the agreement matches an independent recomputation on the same rows
    rows = run_folds(card)
    again = int8_agreement(run_dir / "model.onnx", path, rows.loc[rows["fold"] == "test"], image_size=SIZE)
    assert again["image_max_abs_prob_diff"] == pytest.approx(agreement["image_max_abs_prob_diff"])

    # mura-ens score --precision int8 picks model.int8.onnx and names the column after the model
    from mura_ens.cli.main import main

    out = tmp_path / "scored"
    code = main(
        [
            "score",
            synth_small["root"],
            "--models",
            str(run_dir),
            "--precision",
            "int8",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    scored = pd.read_csv(out / "images.csv")
    ok = scored.loc[scored["status"] == "ok"]
    assert len(ok) > 0 and ok["prob__tiny_cnn"].between(0, 1).all()
    report = json.loads((out / "metrics.json").read_text())
    assert "tiny_cnn" in report["models"]


def test_quantize_run_bad_folders(tmp_path, run_dir):
    with pytest.raises(UsageError, match="not a mura-ens run folder"):
        quantize_run(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="calibration-images"):
        quantize_run(run_dir, calibration_images=0)
    (run_dir / "model.onnx").unlink()
    with pytest.raises(UsageError, match="model.onnx is missing"):
        quantize_run(run_dir)


def test_quantize_never_imports_tensorflow(run_dir):
    code = (
        "import sys\n"
        "from mura_ens.onnx.quantize import quantize_run\n"
        f"quantize_run({str(run_dir)!r}, calibration_images=4, evaluate=False)\n"
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run_dir / INT8_FILE).is_file()


def test_average_pool_moves_before_a_pointwise_conv():
    rng = np.random.default_rng(4)
    f = np.float32
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (16, 8, 1, 1)).astype(f), "w1x1"),
        numpy_helper.from_array(rng.normal(0, 0.5, 16).astype(f), "b1x1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 16, 3, 3)).astype(f), "w3x3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1x1", "b1x1"], ["c1"], kernel_shape=[1, 1]),
        helper.make_node("AveragePool", ["c1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),  # swapped
        helper.make_node("Conv", ["p1", "w3x3"], ["c2"], kernel_shape=[3, 3]),
        helper.make_node("AveragePool", ["c2"], ["p2"], kernel_shape=[2, 2], strides=[1, 1]),  # 3x3 conv: kept
        helper.make_node("Conv", ["p2", "w1x1"], ["c3"], kernel_shape=[1, 1]),
        helper.make_node("AveragePool", ["c3"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1]),  # padded: kept
    ]
    graph = helper.make_graph(
        nodes,
        "pools",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, None, None])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rewritten, summary = rewrite_for_inference(model)
    assert summary.pool_before_pointwise_conv == 1
    assert [n.op_type for n in rewritten.graph.node] == [
        "AveragePool",
        "Conv",
        "Conv",
        "AveragePool",
        "Conv",
        "AveragePool",
    ]
    x = rng.normal(0, 1, (2, 8, 16, 16)).astype(f)
    before, after = raw_outputs(model, x), raw_outputs(rewritten, x)
    assert before.shape == after.shape and np.abs(before - after).max() < 1e-4 * np.abs(before).max()


def test_scoring_sessions_run_the_rewritten_graph(tmp_path):
    from mura_ens.scoring.models import load_model_spec
    from mura_ens.scoring.sessions import SessionConfig, get_session, model_source

    path = make_cnn(tmp_path / "m.onnx")
    assert isinstance(model_source(str(path)), bytes)  # rewritten in memory, the file untouched
    assert model_source(str(path), rewrite=False) == str(path)
    plain = make_cnn(tmp_path / "plain.onnx", pad_source="Conv", bn_after_conv=True)
    onnx_model = onnx.load(str(plain))
    # without the NHWC input normalisation nothing is left to rewrite: the path itself is used
    del onnx_model.graph.node[:2]
    onnx_model.graph.node[0].input[0] = "image"
    onnx.save(onnx_model, str(plain))
    assert model_source(str(plain)) == str(plain)
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    assert model_source(str(tmp_path / "broken.onnx")) == str(tmp_path / "broken.onnx")

    spec = load_model_spec(path)
    x = images(5)
    outputs = []
    for rewrite in (True, False):
        session = get_session(spec, SessionConfig(intra_op_threads=1, rewrite=rewrite))
        outputs.append(session.run(None, {spec.input_name: x})[0])
    assert np.abs(outputs[0] - outputs[1]).max() <= REWRITE_TOLERANCE
