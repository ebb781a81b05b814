"""The TF-free heatmap core: load_explainer on an explain artifact made with onnx.helper, the NumPy head's
backward pass against finite differences, normalise, the explain graph rebuilt from model.onnx (and the
format-1 artifact with its own graph file), and every way an artifact can be missing or wrong."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_graphs import make_explain_run, probabilities

from mura_ens.explain import CannotExplain, grad_cam, hires_cam, load_explainer, normalise, xgrad_cam
from mura_ens.explain.artifact import ExplainSpec, write_artifact
from mura_ens.explain.head import Head
from mura_ens.onnx.inference import cpu_session


def pixels(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def explain_run(tmp_path_factory):
    return make_explain_run(tmp_path_factory.mktemp("explain") / "tiny_explain", input_size=32)


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory):
    """The same model with a format-1 artifact (explain.onnx.bin + explain.json version 1), as written before."""
    return make_explain_run(tmp_path_factory.mktemp("explain") / "tiny_explain", input_size=32, legacy=True)


def test_run_folder_has_no_graph_copy_and_the_rebuilt_graph_gives_the_same_maps(explain_run, legacy_run):
    """Export writes no explain.onnx.bin when the feature map is a tensor of model.onnx: the loader rebuilds the
    graph from model.onnx. Its maps equal those of model.onnx with the output added by hand, and those of the
    separate two-output graph the format-1 artifact holds."""
    folder = explain_run.parent
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "explain.json", "explain.npz", "model.onnx"]
    described = json.loads((folder / "explain.json").read_text())
    assert described["version"] == 3 and described["graph_file"] is None
    assert (described["feature_tensor"], described["feature_layout"], described["feature_shape"]) == (
        "r2",
        "nchw",
        [16, 16, 8],
    )
    explainer = load_explainer(explain_run)
    images = pixels(4, seed=9)
    result = explainer.heatmaps(images)
    by_hand = onnx.load(explain_run)
    by_hand.graph.node.append(helper.make_node("Transpose", ["r2"], ["nhwc"], perm=[0, 2, 3, 1]))
    by_hand.graph.output.append(helper.make_tensor_value_info("nhwc", onnx.TensorProto.FLOAT, None))
    features, probs = cpu_session(by_hand.SerializeToString()).run(["nhwc", "prob"], {"image": images.astype("f4")})
    np.testing.assert_array_equal(result.maps, grad_cam(features, explainer.channel_weights(features)))
    np.testing.assert_array_equal(result.probabilities, probs[:, 0].astype(np.float64))
    old = load_explainer(legacy_run)
    assert old.spec.feature_tensor is None and old.spec.graph_file == "explain.onnx.bin"
    legacy = old.heatmaps(images)
    np.testing.assert_array_equal(legacy.maps, result.maps)
    np.testing.assert_array_equal(legacy.probabilities, result.probabilities)


def test_artifact_writes_a_graph_file_only_for_a_converted_graph(explain_run, tmp_path):
    spec = load_explainer(explain_run).spec
    with pytest.raises(ValueError, match="exactly when"):
        write_artifact(tmp_path, spec, {}, b"graph")
    converted = ExplainSpec(**{**spec.__dict__, "feature_tensor": None, "feature_layout": None})
    with pytest.raises(ValueError, match="exactly when"):
        write_artifact(tmp_path, converted, {})


def test_cam_maps_add_up_to_the_models_logit(explain_run):
    """For GAP -> one dense unit with a positive kernel on ReLU features, the CAM (alpha = w / (h*w)) is never
    clipped, so its sum plus the bias is the logit: sigmoid of it must be model.onnx's probability."""
    explainer = load_explainer(explain_run)
    assert explainer.method == "cam" and explainer.input_size == 32
    images = pixels(5)
    result = explainer.heatmaps(images)
    assert result.maps.shape == (5, 16, 16) and result.maps.dtype == np.float32
    reference = probabilities(explain_run, images.astype(np.float32))
    np.testing.assert_allclose(result.probabilities, reference, rtol=0, atol=1e-6)
    with np.load(explain_run.parent / "explain.npz") as weights:
        bias = float(weights["1.bias"][0])
    logits = result.maps.astype(np.float64).sum(axis=(1, 2)) + bias
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), reference, rtol=0, atol=1e-5)
    assert (result.maps > 0).mean() > 0.5


def test_uint8_and_float_pixels_give_the_same_maps(explain_run):
    explainer = load_explainer(explain_run)
    images = pixels(3, seed=4)
    a, b = explainer.heatmaps(images), explainer.heatmaps(images.astype(np.float32))
    np.testing.assert_array_equal(a.maps, b.maps)
    many = explainer.heatmaps(np.repeat(images, 7, axis=0))  # more than one ONNX Runtime batch
    np.testing.assert_allclose(many.maps[::7], a.maps, rtol=0, atol=1e-6)
    assert explainer.heatmaps(images[:0]).maps.shape == (0, 16, 16)


def test_gradcam_of_a_cam_head_is_the_cam(explain_run):
    """The NumPy backward pass through GAP -> dense gives d logit / d A = w / (h*w) at every cell."""
    explainer = load_explainer(explain_run)
    features, _ = explainer.features(pixels(2))
    logits, grads = explainer.head.gradients(features)
    kernel = explainer.head.weight(1, "kernel")[:, 0]
    np.testing.assert_allclose(grads, np.broadcast_to(kernel / 256, grads.shape), rtol=1e-12)
    np.testing.assert_allclose(explainer.channel_weights(features), grads.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(logits, explainer.head.logits(features), rtol=1e-12)


def _mlp_head(rng, pooling: str) -> Head:
    layers = [
        {"kind": pooling, "name": "pool"},
        {"kind": "batch_normalization", "name": "bn", "epsilon": 1e-3},
        {"kind": "dense", "name": "h1", "activation": "relu", "units": 6},
        {"kind": "dropout", "name": "drop"},
        {"kind": "activation", "name": "act", "function": "tanh"},
        {"kind": "dense", "name": "h2", "activation": "elu", "units": 5},
        {"kind": "activation", "name": "leaky", "function": "relu", "negative_slope": 0.1},
        {"kind": "dense", "name": "h3", "activation": "silu", "units": 4},
        {"kind": "dense", "name": "abnormal", "activation": "linear", "units": 1},
    ]
    channels = 3 * 3 * 4 if pooling == "flatten" else 4
    weights = {
        "1.gamma": rng.uniform(0.5, 1.5, channels),
        "1.beta": rng.normal(0, 0.2, channels),
        "1.mean": rng.normal(0, 0.2, channels),
        "1.variance": rng.uniform(0.5, 2.0, channels),
        "2.kernel": rng.normal(0, 1, (channels, 6)),
        "2.bias": rng.normal(0, 0.3, 6),
        "5.kernel": rng.normal(0, 1, (6, 5)),
        "5.bias": rng.normal(0, 0.3, 5),
        "7.kernel": rng.normal(0, 1, (5, 4)),
        "7.bias": rng.normal(0, 0.3, 4),
        "8.kernel": rng.normal(0, 1, (4, 1)),
        "8.bias": rng.normal(0, 0.3, 1),
    }
    return Head(layers=tuple(layers), weights=weights)


@pytest.mark.parametrize("pooling", ["global_average_pooling", "global_max_pooling", "flatten"])
def test_numpy_backward_pass_matches_finite_differences(pooling):
    rng = np.random.default_rng(3)
    head = _mlp_head(rng, pooling)
    features = rng.normal(0, 1, (2, 3, 3, 4))
    logits, grads = head.gradients(features)
    assert grads.shape == features.shape
    step = 1e-6
    numeric = np.zeros_like(features)
    for index in np.ndindex(features.shape[1:]):
        for n in range(len(features)):
            up, down = features.copy(), features.copy()
            up[(n, *index)] += step
            down[(n, *index)] -= step
            numeric[(n, *index)] = (head.logits(up)[n] - head.logits(down)[n]) / (2 * step)
    np.testing.assert_allclose(grads, numeric, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(logits, head.logits(features), rtol=1e-12)
    if pooling == "global_max_pooling":
        assert np.count_nonzero(grads[0, :, :, 0]) == 1  # only the maximum gets the gradient


def _spatial_head(rng, padding: str, pooling: str) -> Head:
    """feature (N, 7, 6, 3) -> conv 3x3 stride 2 (relu) -> pooling 2x2 -> zero padding -> concat with a side
    input and with a 1x1 conv of itself -> add -> GAP -> dense: every spatial kind, as a graph."""
    layers = [
        {"kind": "conv2d", "name": "c1", "strides": [2, 2], "padding": padding, "activation": "relu", "filters": 4},
        {"kind": pooling, "name": "p1", "pool_size": [2, 2], "strides": [1, 1], "padding": padding},
        {"kind": "zero_padding", "name": "zp", "padding": [[1, 0], [0, 1]]},
        {
            "kind": "conv2d",
            "name": "c2",
            "strides": [1, 1],
            "padding": "same",
            "activation": "linear",
            "filters": 2,
            "inputs": [2],
        },
        {"kind": "concatenate", "name": "cat", "inputs": [2, "side:0"]},
        {"kind": "concatenate", "name": "cat2", "inputs": [3, 3, 3]},
        {"kind": "add", "name": "sum", "inputs": [4, 5]},
        {"kind": "global_average_pooling", "name": "gap"},
        {"kind": "dense", "name": "abnormal", "activation": "linear", "units": 1},
    ]
    weights = {
        "0.kernel": rng.normal(0, 0.5, (3, 3, 3, 4)),
        "0.bias": rng.normal(0.1, 0.2, 4),
        "3.kernel": rng.normal(0, 0.5, (1, 1, 4, 2)),
        "3.bias": rng.normal(0, 0.2, 2),
        "8.kernel": rng.normal(0, 1, (6, 1)),
        "8.bias": rng.normal(0, 0.3, 1),
    }
    return Head(layers=tuple(layers), weights=weights)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("pooling", ["max_pooling", "average_pooling"])
def test_spatial_backward_pass_matches_finite_differences(padding, pooling):
    """Grad-CAM from an inner map: conv, pooling, padding, concatenation (with a side input) and addition."""
    rng = np.random.default_rng(5)
    head = _spatial_head(rng, padding, pooling)
    features = rng.normal(0, 1, (2, 7, 6, 3))
    shape = Head(layers=head.layers[:3], weights=head.weights)._run(features, [])[0][2].shape
    side = rng.normal(0, 1, (*shape[:3], 2))  # shaped like the padded map, 2 channels
    logits, grads = head.gradients(features, [side])
    assert grads.shape == features.shape and np.count_nonzero(grads) > 0
    step = 1e-6
    numeric = np.zeros_like(features)
    for index in np.ndindex(features.shape):
        up, down = features.copy(), features.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (head.logits(up, [side])[index[0]] - head.logits(down, [side])[index[0]]) / (2 * step)
    np.testing.assert_allclose(grads, numeric, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(logits, head.logits(features, [side]), rtol=1e-12)


def test_spatial_layers_follow_tensorflow_padding_and_ties():
    from mura_ens.explain import spatial

    assert spatial.same_padding(7, 3, 2) == (4, 1, 1) and spatial.same_padding(6, 2, 2) == (3, 0, 0)
    assert spatial.same_padding(5, 2, 2) == (3, 0, 1)  # the smaller half first
    x = np.zeros((1, 2, 2, 1))
    value, back = spatial.pooling(x, kind="max", pool_size=[2, 2], strides=[2, 2], padding="valid")
    assert value.shape == (1, 1, 1, 1) and back(np.ones((1, 1, 1, 1)))[0, :, :, 0].tolist() == [[1, 0], [0, 0]]
    x = np.arange(9.0).reshape(1, 3, 3, 1)  # "same" average pooling counts only the cells inside the image
    value, _ = spatial.pooling(x, kind="average", pool_size=[2, 2], strides=[2, 2], padding="same")
    assert value[0, :, :, 0].tolist() == [[2.0, 3.5], [6.5, 8.0]]


def test_normalise_for_display():
    heat = np.array([[0.0, 1.0], [3.0, 4.0]], np.float32)
    np.testing.assert_allclose(normalise(heat), heat / 4)
    assert normalise(np.zeros((2, 2))).max() == 0 and normalise(np.full((2, 2), np.nan)).max() == 0
    stack = normalise(np.stack([heat, 10 * heat, np.zeros_like(heat)]))
    np.testing.assert_allclose(stack[:2], np.stack([heat / 4, heat / 4]), rtol=1e-6)
    assert stack.dtype == np.float32 and stack[2].max() == 0 and normalise(-heat).max() == 0


def test_old_run_without_artifact_names_the_fix(run_dir):
    """A run exported before heatmaps existed (conftest's run_dir: model.onnx + card.json) keeps scoring, but
    cannot explain, and the reason says what adds the artifact."""
    with pytest.raises(CannotExplain) as info:
        load_explainer(run_dir / "model.onnx")
    message = str(info.value)
    assert "\n" not in message and "explain.json" in message and "mura-ens export" in message
    (run_dir / "best.keras").write_bytes(b"")  # a run export can re-export: the command names the folder
    with pytest.raises(CannotExplain, match=f"run `mura-ens export {run_dir}` to add it"):
        load_explainer(run_dir / "model.onnx")
    assert len(probabilities(run_dir / "model.onnx", pixels(2).astype(np.float32))) == 2


def _copy(explain_run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(explain_run.parent, folder)
    return folder


def test_artifact_of_another_model_is_refused(explain_run, tmp_path):
    folder = _copy(explain_run, tmp_path)
    other = make_explain_run(tmp_path / "other", input_size=16)
    shutil.copy(other, folder / "model.onnx")  # model replaced after export
    with pytest.raises(CannotExplain, match="belongs to another model.onnx .*mura-ens export"):
        load_explainer(folder / "model.onnx")


def test_int8_model_uses_its_fp32_twins_artifact(explain_run, legacy_run, tmp_path):
    folder = _copy(explain_run, tmp_path)
    shutil.copy(folder / "model.onnx", folder / "model.int8.onnx")
    assert load_explainer(folder / "model.int8.onnx").method == "cam"
    (folder / "model.onnx").unlink()  # the explain graph is the fp32 twin's: it must be there
    with pytest.raises(CannotExplain, match="fp32 twin model.onnx, which is missing: run `mura-ens export"):
        load_explainer(folder / "model.int8.onnx")
    folder = _copy(legacy_run, tmp_path / "legacy")
    shutil.copy(folder / "model.onnx", folder / "model.int8.onnx")
    (folder / "model.onnx").unlink()  # format 1 without a twin: the int8 model's name and plugin must match
    assert load_explainer(folder / "model.int8.onnx").input_size == 32
    spec = json.loads((folder / "explain.json").read_text())
    (folder / "explain.json").write_text(json.dumps({**spec, "model_name": "someone-else"}))
    with pytest.raises(CannotExplain, match="belongs to model 'someone-else'"):
        load_explainer(folder / "model.int8.onnx")


@pytest.mark.parametrize(
    "damage, expected",
    [
        ({"supported": False, "reason": "head layer 'ln' (LayerNormalization) cannot be back-propagated"}, "'ln'"),
        ({"version": 99}, "newer than this mura-ens reads"),
        ({"method": "magic"}, "malformed .*unknown method"),
        ({"feature_layout": "nwhc"}, "malformed .*unknown feature_layout"),
        ({"feature_tensor": "gone"}, r"cannot load .*model.onnx \(ValueError: the graph computes no tensor 'gone'"),
        ("not json", "unreadable"),
        ("graph", "cannot load .*explain.onnx.bin"),
        ("weights", "explain.npz is missing or unusable"),
    ],
)
def test_damaged_artifact_is_one_reason_line(explain_run, legacy_run, tmp_path, damage, expected):
    folder = _copy(legacy_run if damage == "graph" else explain_run, tmp_path)
    spec_path = folder / "explain.json"
    if damage == "not json":
        spec_path.write_text("{")
    elif damage == "graph":  # format 1: the graph is a file of its own
        (folder / "explain.onnx.bin").write_bytes(b"junk")
    elif damage == "weights":
        (folder / "explain.npz").unlink()
    else:
        spec_path.write_text(json.dumps({**json.loads(spec_path.read_text()), **damage}))
    with pytest.raises(CannotExplain, match=expected) as info:
        load_explainer(folder / "model.onnx")
    assert "\n" not in str(info.value)


def test_explain_graph_is_not_taken_for_a_model(legacy_run):
    """Scoring takes every *.onnx under --models: an explain graph file must not be one of them."""
    from mura_ens.scoring.models import find_model_files

    found = find_model_files(legacy_run.parent)
    assert [p.name for p in found.files] == ["model.onnx"]
    session = cpu_session(str(legacy_run.parent / "explain.onnx.bin"))
    assert [o.name for o in session.get_outputs()] == ["prob", "features"]


def test_hires_cam_keeps_each_cells_own_gradient():
    """Two cells, one channel each way: Grad-CAM averages the gradient (+1 and -1 -> 0, an empty map), HiResCAM
    keeps the cell whose own gradient is positive."""
    features = np.array([[[[2.0], [3.0]]]])  # (1, 1, 2, 1)
    gradients = np.array([[[[1.0], [-1.0]]]])
    np.testing.assert_array_equal(hires_cam(features, gradients), [[[2.0, 0.0]]])
    np.testing.assert_array_equal(grad_cam(features, gradients.mean(axis=(1, 2))), [[[0.0, 0.0]]])


def test_xgrad_cam_weights_the_gradient_by_the_channels_activation():
    """Channel 0 is active only where its gradient is +1 (cell a), so XGrad-CAM's alpha is +1 where Grad-CAM's
    mean of +1 and -1 is 0; a silent channel (all zeros) gets alpha 0 instead of a division by zero."""
    features = np.array([[[[4.0, 0.0], [0.0, 0.0]]]])  # (1, 1, 2, 2): channel 0 active in cell a only
    gradients = np.array([[[[1.0, 5.0], [-1.0, 5.0]]]])
    np.testing.assert_array_equal(xgrad_cam(features, gradients), [[[4.0, 0.0]]])
    np.testing.assert_array_equal(grad_cam(features, gradients.mean(axis=(1, 2))), [[[0.0, 0.0]]])


def test_every_method_of_a_cam_head_is_its_cam_and_methods_are_checked(explain_run):
    explainer = load_explainer(explain_run)
    assert explainer.map_method == "xgradcam" and explainer.map_name == "CAM"
    images = pixels(3, seed=2)
    features, _ = explainer.features(images)
    gradients = explainer.head.gradients(features)[1]
    cam = explainer.heatmaps(images, method="gradcam").maps
    for method, combine in (("xgradcam", xgrad_cam), ("hirescam", hires_cam)):
        np.testing.assert_allclose(combine(features, gradients), cam, atol=1e-6)
        np.testing.assert_array_equal(explainer.heatmaps(images, method).maps, cam)
    with pytest.raises(ValueError, match="'gradcam\\+\\+'.*xgradcam, hirescam, gradcam"):
        explainer.heatmaps(images, method="gradcam++")
    with pytest.raises(ValueError, match="xgradcam, hirescam, gradcam"):
        load_explainer(explain_run, map_method="saliency")
