"""Heatmaps drawn with ONNX Runtime + NumPy equal Grad-CAM computed in Keras (GradientTape on the logit).

Every built-in plugin is checked. Here: a specialists run (one part, base custom_cnn, trained: the trainer's
export path) and feedforward_cnn (built) with 8x8 feature maps, resnet50 with an MLP head (built), and heads
made of every supported layer kind. In tests/test_plugins_build.py, next to the one-step training and export
it already does at 64 px (:func:`check_grad_cam_parity` is called there): custom_cnn, feedforward_cnn,
densenet201 and resnet50 without a head. The GAP -> dense head must give the exact CAM (<= 1e-5).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mura_ens.cli.main import main
from mura_ens.explain import CannotExplain, load_explainer
from mura_ens.onnx.inference import cpu_session, run_model
from mura_ens.registry import get_plugin
from mura_ens.run_folder import ModelMetadata
from mura_ens.training import train
from mura_ens.training.export import (
    export_model,
    load_best_model,
    load_parity_batch,
    plugin_feature_layer,
    write_explain,
)
from mura_ens.training.tf_runtime import import_tensorflow

pytestmark = [pytest.mark.tf]

tf, keras = import_tensorflow()
TINY = {"cells": 2, "starting_filters": 4}
#: Pearson correlation required between the Keras and the ONNX-side maps (issue 12).
MIN_PEARSON = 0.99
#: Exact CAM: the largest |difference| accepted for a global-average-pooling -> one dense unit head.
CAM_TOLERANCE = 1e-5


def keras_grad_cam(
    model, images: np.ndarray, feature_layer: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Grad-CAM in Keras: (linear maps sum_k alpha_k A_k, ReLU'd maps), alpha_k = spatial mean of d logit / d A_k,
    and the other methods' maps from the same gradient G: HiResCAM ReLU(sum_k G_k A_k) and XGrad-CAM
    (alpha_k = sum_ij A_k G_k / sum_ij A_k).

    The feature map is ``feature_layer``'s output, else the input of the model's last global pooling / flatten
    layer; the logit is the output layer's pre-activation (its sigmoid switched off for the tape).
    """
    if feature_layer:
        feature = model.get_layer(feature_layer).output
    else:
        reductions = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)
        feature = [layer for layer in model.layers if isinstance(layer, reductions)][-1].input
    output_layer = model.layers[-1]
    assert output_layer.activation is keras.activations.sigmoid
    output_layer.activation = keras.activations.linear
    try:
        twin = keras.Model(model.inputs, [feature, model.outputs[0]])
        with tf.GradientTape() as tape:
            features, logits = twin(tf.constant(images, tf.float32), training=False)
        gradients = tape.gradient(logits, features).numpy()
    finally:
        output_layer.activation = keras.activations.sigmoid
    alpha = gradients.astype(np.float64).mean(axis=(1, 2))
    a, g = features.numpy().astype(np.float64), gradients.astype(np.float64)
    linear = np.einsum("nhwc,nc->nhw", a, alpha)
    mass = a.sum(axis=(1, 2))
    x_alpha = np.divide((a * g).sum(axis=(1, 2)), mass, out=np.zeros_like(mass), where=mass != 0)
    others = {
        "hirescam": np.maximum((a * g).sum(axis=-1), 0.0),
        "xgradcam": np.maximum(np.einsum("nhwc,nc->nhw", a, x_alpha), 0.0),
    }
    return linear, np.maximum(linear, 0.0), others


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


def check_grad_cam_parity(
    model_path: Path, model, images: np.ndarray, *, feature_layer: str | None = None
) -> dict[str, float]:
    """Assert that ``load_explainer(model_path)`` gives Keras' Grad-CAM of ``model`` on ``images``, and its
    XGrad-CAM (the default) and HiResCAM maps Keras' ones; return figures.

    Pearson >= 0.99 on the linear maps pooled over the batch, per image where a map has more than one cell,
    and per image on the ReLU'd heatmaps wherever Keras' heatmap is not constant; and |difference| within
    1e-3 of the maps' scale s = max |map|, or, for a ``cam`` head (the exact CAM), within 1e-5 * max(1, s);
    XGrad-CAM and HiResCAM within 1e-3 of their scale on at least 99% of the cells (max-pool near-ties below).
    """
    explainer = load_explainer(model_path)
    result = explainer.heatmaps(images, method="gradcam")
    features, sides, _ = explainer.inputs(images)
    ours = np.einsum("nhwc,nc->nhw", features.astype(np.float64), explainer.channel_weights(features, sides))
    if feature_layer is None and explainer.spec.feature_layer_source == "rule":  # the rule's layer, maybe inner
        feature_layer = explainer.feature_layer
    linear, theirs, others = keras_grad_cam(model, images, feature_layer)
    other_diffs = {}
    for method, reference in others.items():
        diff = np.abs(explainer.heatmaps(images, method).maps - reference)
        other_diffs[f"{method}_max_abs_diff"] = float(np.max(diff))
        other_diffs[f"{method}_cells_off"] = int(np.sum(diff > 1e-3 * float(np.max(reference)) + 1e-7))
        # These maps use the gradient cell by cell. Max pooling sends a window's gradient to its first maximum;
        # where a window's two largest values are equal to float rounding, ORT's forward and Keras' can pick
        # different cells (seen: 2 of 640 cells, custom_cnn trained with TensorFlow on one thread). Such cells
        # may differ, at most 1% of them; every other cell must match.
        assert other_diffs[f"{method}_cells_off"] <= 0.01 * diff.size, (method, other_diffs)
    assert result.maps.shape == theirs.shape and ours.shape == linear.shape
    keras_prob = np.asarray(model(images, training=False), np.float64).reshape(-1)
    np.testing.assert_allclose(result.probabilities, keras_prob, rtol=0, atol=1e-4)
    figures = {"pooled_pearson": pearson(ours, linear), "max_abs_diff": float(np.max(np.abs(result.maps - theirs)))}
    figures.update(other_diffs)
    assert figures["pooled_pearson"] >= MIN_PEARSON, figures
    per_image = [pearson(a, b) for a, b in zip(ours, linear, strict=True) if a.size > 1 and np.std(b) > 0]
    shown = [pearson(a, b) for a, b in zip(result.maps, theirs, strict=True) if np.std(b) > 0]
    assert all(r >= MIN_PEARSON for r in per_image + shown), (per_image, shown)
    figures.update(min_pearson=min(per_image + shown, default=float("nan")), images_compared=len(shown))
    scale = float(np.max(np.abs(linear)))
    tolerance = CAM_TOLERANCE * max(1.0, scale) if explainer.method == "cam" else 1e-3 * scale + 1e-7
    assert figures["max_abs_diff"] <= tolerance, (figures, scale)
    return figures


def parity_images(run: Path, extra: int = 2, seed: int = 0) -> np.ndarray:
    """The run's saved real images plus ``extra`` noise images."""
    images, _ = load_parity_batch(run)
    noise = np.random.default_rng(seed).integers(0, 256, (extra, *images.shape[1:])).astype(np.float32)
    return np.concatenate([images, noise])


def tiny_train(plugin: str, data: str, out: Path, **kwargs) -> Path:
    (run,) = train(plugin, data, out, epochs=1, batch_size=8, max_images=16, image_size=32, progress=False, **kwargs)
    return run


@pytest.fixture(scope="module")
def specialist_run(synth_small, tmp_path_factory) -> Path:
    """A finished specialists run (XR_WRIST, base custom_cnn with two cells) at 32 px: 8x8 feature maps."""
    out = tmp_path_factory.mktemp("explain_runs")
    return tiny_train("specialists", synth_small["root"], out, params=TINY, body_part="XR_WRIST")


def test_specialist_heatmaps_are_the_exact_cam(specialist_run):
    card = json.loads((specialist_run / "card.json").read_text())
    assert card["plugin"] == "specialists" and card["body_parts"] == ["XR_WRIST"]
    section = card["export"]["explain"]
    assert section["written"] and section["method"] == "cam" and section["feature_layer"] == "cell2_pool"
    assert section["graph"] == "model.onnx + feature output" and section["probability_max_abs_diff"] <= 1e-6
    # That graph is rebuilt from model.onnx at load time: no copy of the model in the run folder.
    spec = json.loads((specialist_run / "explain.json").read_text())
    assert not (specialist_run / "explain.onnx.bin").exists() and spec["graph_file"] is None
    assert spec["feature_tensor"] and spec["feature_layout"] in ("nhwc", "nchw")
    model = load_best_model(specialist_run / "best.keras")
    images = parity_images(specialist_run)
    check_grad_cam_parity(specialist_run / "model.onnx", model, images)
    # Zhou et al.'s CAM from Keras' own feature map and dense kernel, divided by h*w: the same maps.
    features = keras.Model(model.inputs, model.get_layer("gap").input)(images, training=False).numpy()
    kernel = model.get_layer("abnormal").kernel.numpy()[:, 0]
    cam = np.maximum(np.einsum("nhwc,c->nhw", features, kernel), 0) / (features.shape[1] * features.shape[2])
    maps = load_explainer(specialist_run / "model.onnx").heatmaps(images).maps
    assert maps.shape == (len(images), 8, 8) and np.max(np.abs(maps - cam)) <= CAM_TOLERANCE
    assert np.count_nonzero(maps) > 0


def test_old_run_gets_its_artifact_from_mura_ens_export(specialist_run, tmp_path, capsys):
    old = tmp_path / "old_run"
    shutil.copytree(specialist_run, old)
    before = load_explainer(old / "model.onnx").heatmaps(parity_images(old)).maps
    for name in ("explain.json", "explain.npz"):
        (old / name).unlink()
    with pytest.raises(CannotExplain, match=f"no explain.json next to model.onnx: run `mura-ens export {old}`"):
        load_explainer(old / "model.onnx")
    assert main(["export", str(old)]) == 0
    assert "heatmaps cam from cell2_pool" in capsys.readouterr().out
    after = load_explainer(old / "model.onnx").heatmaps(parity_images(old)).maps
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    assert json.loads((old / "card.json").read_text())["export"]["explain"]["written"] is True


def test_feedforward_cnn_heatmaps_from_its_last_block_at_32_px(tmp_path):
    plugin = get_plugin("feedforward_cnn")
    keras.utils.set_random_seed(0)
    model = plugin.build({"image_size": 32, "weights": None, **plugin.defaults, "blocks": 2, "starting_filters": 4})
    images = np.random.default_rng(5).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    section = export_with_explain(model, tmp_path, images, feature_layer=plugin_feature_layer(plugin))
    spec = json.loads((tmp_path / "explain.json").read_text())
    assert section["written"] and spec["feature_layer"] == "features" and spec["feature_layer_source"] == "rule"
    assert spec["feature_shape"][:2] == [8, 8] and spec["method"] == "cam"
    check_grad_cam_parity(tmp_path / "model.onnx", model, images, feature_layer="features")


def export_with_explain(model, folder: Path, images: np.ndarray, *, feature_layer: str | None = None) -> dict:
    """What export does: model.onnx (parity-checked), then the explain artifact."""
    size = int(images.shape[1])
    meta = ModelMetadata(plugin="test", model_name=folder.name, body_parts=(), input_size=size)
    export_model(model, folder / "model.onnx", metadata=meta, parity_images=images)
    return write_explain(model, folder, images, feature_layer=feature_layer)


def zoo_model(size: int = 32, *, head_layer=None):
    """conv -> conv -> global max pooling -> BN -> Dense(relu) -> Dropout -> Dense(tanh) -> LeakyReLU -> sigmoid;
    ``head_layer`` (e.g. LayerNormalization) replaces the batch norm."""
    from keras import layers

    keras.utils.set_random_seed(4)
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(12, 3, padding="same", activation="relu", name="last_conv")(x)
    x = layers.GlobalMaxPooling2D()(x)
    x = head_layer(x) if head_layer is not None else layers.BatchNormalization()(x)
    x = layers.Dense(16, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(8, activation="tanh")(x)
    x = layers.LeakyReLU(negative_slope=0.1)(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    if head_layer is None:  # batch-norm statistics other than the identity
        bn = next(layer for layer in model.layers if isinstance(layer, layers.BatchNormalization))
        rng = np.random.default_rng(1)
        bn.set_weights(
            [rng.uniform(0.5, 2, 12), rng.normal(0, 0.3, 12), rng.uniform(0, 0.5, 12), rng.uniform(0.1, 1, 12)]
        )
    return model


def test_mlp_head_with_max_pooling_and_batch_norm_is_grad_cam(tmp_path):
    model = zoo_model()
    images = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    section = export_with_explain(model, tmp_path, images)
    assert section["written"] and section["method"] == "gradcam", section
    kinds = [layer["kind"] for layer in json.loads((tmp_path / "explain.json").read_text())["layers"]]
    assert kinds == [
        "global_max_pooling",
        "batch_normalization",
        "dense",
        "dropout",
        "dense",
        "activation",
        "dense",
    ]
    figures = check_grad_cam_parity(tmp_path / "model.onnx", model, images)
    assert figures["images_compared"] >= 3, figures


def test_graph_converted_when_model_onnx_holds_no_feature_map(tmp_path, monkeypatch):
    """The fallback: no tensor of model.onnx matches the feature map, so a two-output copy is converted and kept
    as explain.onnx.bin; it gives the same heatmaps."""
    import mura_ens.explain.graph

    model = zoo_model()
    images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    monkeypatch.setattr(mura_ens.explain.graph, "find_tensors", lambda *args: None)
    section = export_with_explain(model, tmp_path, images)
    assert section["written"] and section["graph"] == "converted", section
    spec = json.loads((tmp_path / "explain.json").read_text())
    assert spec["graph_file"] == "explain.onnx.bin" and spec["feature_tensor"] is None
    assert (tmp_path / "explain.onnx.bin").is_file()
    check_grad_cam_parity(tmp_path / "model.onnx", model, images)


def test_unsupported_head_layer_is_recorded_not_fatal(tmp_path):
    model = zoo_model(head_layer=keras.layers.LayerNormalization(name="ln"))
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    section = export_with_explain(model, tmp_path, images)
    assert section == {**section, "written": False, "file": "explain.json"}
    assert section["reason"] == "head layer 'ln' (LayerNormalization) cannot be back-propagated"
    assert not (tmp_path / "explain.onnx.bin").exists() and not (tmp_path / "explain.npz").exists()
    with pytest.raises(CannotExplain, match=r"^head layer 'ln' \(LayerNormalization\) cannot be back-propagated$"):
        load_explainer(tmp_path / "model.onnx")
    assert len(run_model(cpu_session(str(tmp_path / "model.onnx")), images)) == 3  # the model itself is fine


def test_plugin_feature_layer_off_the_output_path_is_recorded(tmp_path):
    model = zoo_model()
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    section = export_with_explain(model, tmp_path, images, feature_layer="no_such_layer")
    assert section["written"] is False and "'no_such_layer' is not on the way to the output" in section["reason"]
    named = export_with_explain(model, tmp_path, images, feature_layer="last_conv")
    assert named["written"] and named["feature_layer"] == "last_conv"
    check_grad_cam_parity(tmp_path / "model.onnx", model, images, feature_layer="last_conv")


@pytest.mark.slow
def test_resnet50_with_mlp_head_is_grad_cam(tmp_path):
    """ResNet50 with a 16-8 head (weights none) at 64 px: Grad-CAM through the NumPy head."""
    plugin = get_plugin("resnet50")
    keras.utils.set_random_seed(0)
    model = plugin.build({"image_size": 64, "weights": None, **plugin.defaults, "head": "16-8"})
    images = np.random.default_rng(3).integers(0, 256, (6, 64, 64, 3)).astype(np.float32)
    section = export_with_explain(model, tmp_path, images)
    assert section["written"] and section["method"] == "gradcam" and section["feature_layer"] == "resnet50"
    check_grad_cam_parity(tmp_path / "model.onnx", model, images)


def test_explain_layer_of_the_card_is_used_by_mura_ens_export(specialist_run, tmp_path, capsys):
    """`train --explain-layer NAME` is kept in card.json config; `mura-ens export RUN_DIR` draws from it again."""
    from mura_ens.errors import UsageError
    from mura_ens.training import TrainOptions

    assert (
        TrainOptions(explain_layer="cell1_pool").run_config(image_size=32, weights=None).explain_layer == "cell1_pool"
    )
    assert "explain_layer" not in TrainOptions().run_config(image_size=32, weights=None).as_dict()  # old identity
    with pytest.raises(UsageError, match="explain-layer must be a layer name"):
        TrainOptions(explain_layer="")
    run = tmp_path / "run"
    shutil.copytree(specialist_run, run)
    card = json.loads((run / "card.json").read_text())
    card["config"]["explain_layer"] = "cell1_pool"
    (run / "card.json").write_text(json.dumps(card))
    assert main(["export", str(run)]) == 0
    assert "heatmaps gradcam from cell1_pool" in capsys.readouterr().out
    spec = json.loads((run / "explain.json").read_text())
    assert spec["feature_layer"] == "cell1_pool" and spec["feature_layer_source"] == "option"
    check_grad_cam_parity(
        run / "model.onnx", load_best_model(run / "best.keras"), parity_images(run), feature_layer="cell1_pool"
    )
