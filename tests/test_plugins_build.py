"""Every built-in plugin builds at 64 px, trains one step, exports to ONNX with parity; preprocessing layers.

Backbones (DenseNet201, ResNet50) are built with ``weights=none``; their
exports peak at several GB of RSS (FACTS.md), so they run one after the other
in this module, at 64 px.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.tf]

from test_explain_parity import check_grad_cam_parity, parity_images  # noqa: E402

from mura_ens.errors import PluginError, UsageError  # noqa: E402
from mura_ens.registry import get_plugin  # noqa: E402
from mura_ens.training import train  # noqa: E402
from mura_ens.training.backbones import imagenet_normalization, parse_head  # noqa: E402
from mura_ens.training.export import load_best_model, read_onnx_metadata  # noqa: E402
from mura_ens.training.tf_runtime import import_tensorflow  # noqa: E402
from mura_ens.training.trainer import build_model  # noqa: E402

tf, keras = import_tensorflow()


def one_step(plugin: str, data, out: Path, **kwargs) -> Path:
    """Train ``plugin`` for exactly one step (8 images, batch 8, 1 epoch) at 64 px."""
    runs = train(
        plugin,
        data,
        out,
        epochs=1,
        batch_size=8,
        max_images=8,
        image_size=64,
        weights="none",
        augment=False,
        progress=False,
        **kwargs,
    )
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["custom_cnn", "feedforward_cnn", "densenet201", "resnet50"])
def test_builtin_trains_one_step_and_exports_with_parity(plugin, synth_small, tmp_path):
    run = one_step(plugin, synth_small["root"], tmp_path)
    for name in ("model.onnx", "card.json", "history.tsv", "evaluation.json", "curves.png", "best.keras"):
        assert (run / name).is_file(), name
    card = json.loads((run / "card.json").read_text())
    assert 0 <= card["onnx_max_abs_diff"] <= 1e-4
    assert card["export"]["parity_images"] >= 1
    assert card["training"]["epochs_run"] == 1
    assert card["data"]["folds"]["train"]["images"] <= 8
    meta = read_onnx_metadata(run / "model.onnx")
    assert meta["plugin"] == plugin and meta["model_name"] == run.name
    assert meta["body_parts"] == "" and meta["input_size"] == "64" and meta["resize_policy"] == "stretch"
    assert float(meta["threshold"]) == 0.5 and meta["mura_ens_version"]
    assert card["onnx_metadata"] == meta
    # Heatmaps (docs/explain.md): the run's explain artifact gives Keras' Grad-CAM (tests/test_explain_parity.py).
    # The target rule (>= 7x7): an inner map (Grad-CAM through the conv layers) for the plain CNNs; the
    # backbones' rule layer is inside the nested model, so they fall back to its output (CAM), said in the card.
    plain = plugin in ("custom_cnn", "feedforward_cnn")
    explain = card["export"]["explain"]
    assert explain["written"] and explain["method"] == ("gradcam" if plain else "cam"), card["export"]
    assert explain["feature_shape"][:2] == [8, 8] if plain else explain["target_fallback"], explain
    feature_layer = getattr(get_plugin(plugin), "feature_layer", None)
    model = load_best_model(run / "best.keras", plugin=plugin)
    check_grad_cam_parity(run / "model.onnx", model, parity_images(run), feature_layer=feature_layer)


@pytest.mark.parametrize(
    "mode, reference",
    [
        ("torch", keras.applications.densenet.preprocess_input),
        ("caffe", keras.applications.resnet50.preprocess_input),
    ],
)
def test_imagenet_normalization_equals_keras_preprocess_input(mode, reference):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(4, 8, 8, 3)).astype(np.float32)
    layer = imagenet_normalization(mode)
    ours = np.asarray(layer(images))
    theirs = np.asarray(reference(images.copy()))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)
    assert not layer.trainable_weights  # preprocessing never trains


def test_backbone_freezing_head_and_pooling():
    plugin = get_plugin("densenet201")
    config = {"image_size": 32, "weights": None, **plugin.defaults, "head": "16-8", "pooling": "max"}
    model = build_model(plugin, config)
    backbone = next(layer for layer in model.layers if layer.name == "densenet201")
    assert not any(layer.trainable for layer in backbone.layers[:606])
    assert all(layer.trainable for layer in backbone.layers[606:])
    names = [layer.name for layer in model.layers]
    assert "head1" in names and "head2" in names and model.get_layer("head2").units == 8
    assert type(model.get_layer("pool")).__name__ == "GlobalMaxPooling2D"
    assert model.output.shape[1:] == (1,)
    assert parse_head("") == [] and parse_head("512-512") == [512, 512]
    with pytest.raises(ValueError, match="'big'"):
        parse_head("big")


def test_custom_cnn_layers_follow_the_params():
    plugin = get_plugin("custom_cnn")
    config = {
        "image_size": 64,
        "weights": None,
        **plugin.defaults,
        "cells": 3,
        "convs_per_cell": 2,
        "starting_filters": 4,
        "pooling": "avg",
    }
    model = build_model(plugin, config)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [4, 4, 8, 8, 16, 16]
    assert all(not c.use_bias for c in convs)  # batch norm follows each conv
    order = [type(layer).__name__ for layer in model.layers]
    first_conv = order.index("Conv2D")
    assert order[first_conv : first_conv + 3] == ["Conv2D", "BatchNormalization", "Activation"]
    assert order.count("AveragePooling2D") == 3 and "Dropout" in order
    assert order[1] == "Rescaling"


def test_custom_cnn_loads_weights_from_a_path(tmp_path):
    plugin = get_plugin("custom_cnn")
    config = {"image_size": 32, "weights": None, **plugin.defaults, "cells": 2, "starting_filters": 4}
    first = build_model(plugin, config)
    path = tmp_path / "w.weights.h5"
    first.save_weights(path)
    keras.utils.set_random_seed(123)
    second = build_model(plugin, {**config, "weights": str(path)})
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(PluginError, match="custom_cnn has no ImageNet weights"):
        build_model(plugin, {**config, "weights": "imagenet"})


def test_imagenet_download_failure_becomes_one_line(monkeypatch):
    import keras.src.applications.densenet as densenet_module

    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] Temporary failure"
        )

    monkeypatch.setattr(densenet_module.file_utils, "get_file", offline)
    plugin = get_plugin("densenet201")
    with pytest.raises(UsageError) as info:
        build_model(plugin, {"image_size": 32, "weights": "imagenet", **plugin.defaults})
    message = str(info.value)
    assert "\n" not in message and "--weights none" in message and "--weights PATH" in message


@pytest.mark.slow
def test_weights_imagenet_offline_cli_exit_2(synth_small, tmp_path):
    """A real download attempt through an unreachable proxy: fails fast, one line, exit 2, no run folder."""
    env = dict(os.environ)
    env.update(
        HTTPS_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        NO_PROXY="",
        no_proxy="",
        KERAS_HOME=str(tmp_path / "keras_home"),
    )
    out = tmp_path / "runs"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "mura-ens"),
            "train",
            "--plugin",
            "resnet50",
            "--data",
            synth_small["root"],
            "--out",
            str(out),
            "--weights",
            "imagenet",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mura-ens: error:") and "--weights none" in lines[0] and "--weights PATH" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert result.stdout == ""
