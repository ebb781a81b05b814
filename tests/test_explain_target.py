"""The target-layer rule (docs/explain.md): the last convolutional feature map whose side is >= 7 at the run's
input size, for every built-in plugin at 64, 128 and 256 px (built with weights none, never trained); and
Grad-CAM from such an inner map of custom_cnn / feedforward_cnn (through pooling, conv, batch norm, ReLU,
spatial dropout and feedforward_cnn's concatenations) equals Keras' GradientTape Grad-CAM of that layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_explain_parity import check_grad_cam_parity, export_with_explain

from mura_ens.explain import load_explainer
from mura_ens.registry import get_plugin
from mura_ens.training.explain_export import Target, rule_target
from mura_ens.training.tf_runtime import import_tensorflow

pytestmark = [pytest.mark.tf]

tf, keras = import_tensorflow()

#: plugin -> {size: (layer, nested model or None)}: every map is 8x8, the last one >= 7 at that size.
EXPECTED = {
    "custom_cnn": {64: ("cell4_relu1", None), 128: ("cell5_relu1", None), 256: ("cell6_relu1", None)},
    "feedforward_cnn": {64: ("block4_relu1", None), 128: ("block5_relu1", None), 256: ("block6_relu1", None)},
    "densenet201": {64: ("pool3_conv", "densenet201"), 128: ("pool4_conv", "densenet201"), 256: ("densenet201", None)},
    "resnet50": {64: ("conv3_block4_out", "resnet50"), 128: ("conv4_block6_out", "resnet50"), 256: ("resnet50", None)},
}


def built(plugin: str, size: int, **params):
    builder = get_plugin(plugin)
    keras.utils.set_random_seed(0)
    return builder.build({"image_size": size, **builder.defaults, "weights": None, **params})


@pytest.mark.parametrize(
    "plugin",
    ["custom_cnn", "feedforward_cnn", pytest.param("densenet201", marks=pytest.mark.slow), "resnet50"],
)
def test_rule_picks_the_last_map_of_side_7_or_more(plugin):
    for size, (layer, nested) in EXPECTED[plugin].items():
        target = rule_target(built(plugin, size))
        assert isinstance(target, Target) and (target.layer, target.nested) == (layer, nested), (size, target)
        assert target.shape[:2] == (8, 8), (size, target)
        keras.backend.clear_session()


def test_rule_finds_nothing_when_every_map_is_small():
    # 16 px, 2 cells: conv maps of 16 and 8 px, the last pooling's 4x4; no map reaches a side of 20
    assert rule_target(built("custom_cnn", 16, cells=2, starting_filters=2)).layer == "cell2_relu1"
    assert rule_target(built("custom_cnn", 16, cells=2, starting_filters=2), min_side=20) is None


@pytest.mark.parametrize(
    "plugin, params, layer",
    [
        ("custom_cnn", {"pooling": "avg", "spatial_dropout": 0.2}, "cell4_sdrop1"),
        ("feedforward_cnn", {}, "block4_relu1"),
    ],
)
def test_grad_cam_from_an_inner_map_is_keras_grad_cam(tmp_path, plugin, params, layer):
    """At 64 px the rule's map is 8x8 (the last map is 1x1): the NumPy backward pass goes through two more
    cells/blocks (and for feedforward_cnn a concatenation reading a side input computed by ONNX Runtime)."""
    model = built(plugin, 64, starting_filters=4, **params)
    # Non-trivial batch-norm statistics and a positive output kernel, so the maps are not all zero.
    rng = np.random.default_rng(1)
    for bn in (x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)):
        c = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 2, c), rng.normal(0, 0.3, c), rng.normal(0, 0.2, c), rng.uniform(0.1, 1, c)])
    images = rng.integers(0, 256, (6, 64, 64, 3)).astype(np.float32)
    section = export_with_explain(model, tmp_path, images)
    spec = json.loads((tmp_path / "explain.json").read_text())
    assert section["written"] and section["method"] == "gradcam", section
    assert (
        spec["feature_layer"] == layer
        and spec["feature_layer_source"] == "rule"
        and spec["feature_shape"][:2] == [8, 8]
    )
    assert spec["target"]["rule_layer"] == layer and not spec["target"].get("fallback")
    kinds = {entry["kind"] for entry in spec["layers"]}
    assert {"conv2d", "batch_normalization", "activation"} <= kinds, kinds
    if plugin == "feedforward_cnn":
        assert "concatenate" in kinds and len(spec["sides"]) == 1, spec["sides"]
    figures = check_grad_cam_parity(tmp_path / "model.onnx", model, images, feature_layer=layer)
    assert load_explainer(tmp_path / "model.onnx").heatmaps(images).maps.shape == (6, 8, 8), figures


def test_an_explicit_layer_is_used_as_given(tmp_path):
    """A named layer (the plugin's feature_layer / train --explain-layer) wins over the rule."""
    model = built("custom_cnn", 32, cells=2, starting_filters=2)
    images = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    section = export_with_explain(model, tmp_path, images, feature_layer="cell1_pool")
    assert section["written"] and section["feature_layer"] == "cell1_pool"
    assert json.loads((tmp_path / "explain.json").read_text())["feature_layer_source"] == "plugin"
    check_grad_cam_parity(tmp_path / "model.onnx", model, images, feature_layer="cell1_pool")


def test_rule_layer_inside_a_nested_backbone_falls_back_to_its_output(tmp_path):
    """Like densenet201/resnet50 at 64 px: the rule's 8x8 map is inside the nested model, which the NumPy
    backward pass cannot enter: heatmaps come from the nested model's 2x2 output, explain.json says why."""
    from keras import layers

    keras.utils.set_random_seed(0)
    inner_in = keras.Input((32, 32, 3))
    x = layers.Conv2D(4, 3, strides=4, padding="same", activation="relu", name="inner_conv")(inner_in)
    x = layers.Conv2D(6, 3, strides=4, padding="same", activation="relu", name="inner_last")(x)
    backbone = keras.Model(inner_in, x, name="backbone")
    inputs = keras.Input((32, 32, 3), name="image")
    pooled = layers.GlobalAveragePooling2D()(backbone(layers.Rescaling(1 / 255)(inputs)))
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid")(pooled))
    assert rule_target(model) == Target("inner_conv", (8, 8, 4), nested="backbone")
    images = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match="come from 'backbone', not the target rule's layer"):
        section = export_with_explain(model, tmp_path, images)
    spec = json.loads((tmp_path / "explain.json").read_text())
    assert section["written"] and spec["feature_layer"] == "backbone" and spec["feature_layer_source"] == "fallback"
    assert (
        spec["target"]["rule_layer"] == "inner_conv"
        and "inside the nested model 'backbone'" in spec["target"]["fallback"]
    )
    check_grad_cam_parity(tmp_path / "model.onnx", model, images)
