"""The ``feedforward_cnn`` plugin (blocks fed the two previous blocks' outputs) and ``custom_cnn``'s spatial dropout.

The layer-graph checks build small models (64 px, a few filters) and read
which layer produced each layer's input through public Keras attributes
(``layer.input`` / ``layer.output``). One run trains a step through the
project's ``train`` route, which exports with the parity check of
``mura_ens.training.export``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.tf]

from mura_ens.cli.main import main  # noqa: E402
from mura_ens.errors import PluginError  # noqa: E402
from mura_ens.registry import get_plugin  # noqa: E402
from mura_ens.training import train  # noqa: E402
from mura_ens.training.export import PARITY_TOLERANCE, read_onnx_metadata  # noqa: E402
from mura_ens.training.tf_runtime import import_tensorflow  # noqa: E402
from mura_ens.training.trainer import build_model  # noqa: E402

tf, keras = import_tensorflow()

SMALL = {"starting_filters": 4, "blocks": 4, "convs_per_block": 2}


def build(plugin: str, size: int = 64, **params):
    """``plugin``'s model at ``size`` px, random init, defaults updated with ``params``."""
    builder = get_plugin(plugin)
    return build_model(builder, {"image_size": size, "weights": None, **builder.defaults, **params})


def producers(model, layer) -> list[str]:
    """Names of the layers whose outputs ``layer`` takes as input, in input order."""
    by_output = {id(other.output): other.name for other in model.layers}
    inputs = layer.input if isinstance(layer.input, list | tuple) else [layer.input]
    return [by_output[id(tensor)] for tensor in inputs]


def block_output(k: int) -> str:
    """Name of block ``k``'s output layer in a ``SMALL`` model; "block 0" is the rescaled image."""
    if k == SMALL["blocks"]:
        return get_plugin("feedforward_cnn").last_block
    return "rescale" if k == 0 else f"block{k}_pool"


def test_defaults_and_listing():
    plugin = get_plugin("feedforward_cnn")
    assert plugin.defaults == {
        "starting_filters": 32,
        "blocks": 6,
        "convs_per_block": 1,
        "pooling": "max",
        "batch_norm": True,
        "bn_momentum": 0.9,
        "dropout": 0.25,
        "spatial_dropout": 0.0,
    }
    assert plugin.choices == {"pooling": ("max", "avg")}
    assert (plugin.default_input_size, plugin.default_weights) == (256, "none")


def test_each_block_input_concatenates_the_two_previous_blocks():
    model = build("feedforward_cnn", **SMALL, pooling="avg")
    assert producers(model, model.get_layer("block1_conv1")) == ["rescale"]
    for k in range(2, SMALL["blocks"] + 1):
        first_conv = model.get_layer(f"block{k}_conv1")
        (concat_name,) = producers(model, first_conv)
        concat = model.get_layer(concat_name)
        assert isinstance(concat, keras.layers.Concatenate), concat_name
        newer, skip = producers(model, concat)
        assert newer == block_output(k - 1)
        # the older block's output, pooled once to the newer one's side
        skip_layer = model.get_layer(skip)
        assert isinstance(skip_layer, keras.layers.AveragePooling2D)
        assert producers(model, skip_layer) == [block_output(k - 2)]
        side = 64 // 2 ** (k - 1)
        channels = model.get_layer(newer).output.shape[-1] + model.get_layer(block_output(k - 2)).output.shape[-1]
        assert tuple(concat.output.shape[1:]) == (side, side, channels)
    concats = [layer for layer in model.layers if isinstance(layer, keras.layers.Concatenate)]
    assert len(concats) == SMALL["blocks"] - 1
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [4, 4, 8, 8, 16, 16, 32, 32]
    # the last block's output ("features") is the map the head pools
    assert producers(model, model.get_layer("gap")) == [block_output(SMALL["blocks"])] == ["features"]
    assert model.layers[1].name == "rescale" and isinstance(model.layers[1], keras.layers.Rescaling)
    assert model.output.shape[1:] == (1,)


def test_spatial_dropout_follows_every_conv_activation():
    custom = {"cells": 3, "convs_per_cell": 2, "starting_filters": 4}
    for plugin, params, expected in (("custom_cnn", custom, 6), ("feedforward_cnn", SMALL, 8)):
        plain = build(plugin, 32, **params)
        assert not [layer for layer in plain.layers if isinstance(layer, keras.layers.SpatialDropout2D)], plugin
        model = build(plugin, 32, **params, spatial_dropout=0.1)
        drops = [layer for layer in model.layers if isinstance(layer, keras.layers.SpatialDropout2D)]
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert len(drops) == len(convs) == expected, plugin
        assert all(drop.rate == pytest.approx(0.1) for drop in drops)
        for drop in drops:
            (source,) = producers(model, drop)
            assert isinstance(model.get_layer(source), keras.layers.Activation), (plugin, drop.name)
        assert plain.count_params() == model.count_params()  # dropout adds no weights


@pytest.mark.parametrize("plugin", ["custom_cnn", "feedforward_cnn"])
@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("spatial_dropout", 1.0, "expected a rate in [0, 1)"),
        ("spatial_dropout", -0.5, "expected a rate in [0, 1)"),
        ("dropout", 1.5, "expected a rate in [0, 1)"),
        ("starting_filters", 0, "expected an integer >= 1"),
    ],
)
def test_bad_values_are_one_line_repeating_the_value(plugin, key, value, expected):
    with pytest.raises(PluginError) as info:
        build(plugin, 32, **{key: value})
    message = str(info.value)
    assert "\n" not in message
    assert f"bad value {value!r} for parameter {key!r} of plugin {plugin}: {expected}" in message


def test_bad_value_on_the_command_line_is_exit_2(capsys, synth_small, tmp_path):
    out = tmp_path / "runs"
    args = ["train", "--plugin", "feedforward_cnn", "--data", synth_small["root"], "--out", str(out)]
    code = main([*args, "--image-size", "32", "--param", "spatial_dropout=1.5", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "bad value 1.5 for parameter 'spatial_dropout' of plugin feedforward_cnn" in err
    assert not out.exists() or not any(out.iterdir())


def test_trains_one_step_and_exports_with_parity(synth_small, tmp_path):
    (run,) = train(
        "feedforward_cnn",
        synth_small["root"],
        tmp_path,
        epochs=1,
        batch_size=8,
        max_images=8,
        image_size=64,
        augment=False,
        progress=False,
        params={**SMALL, "spatial_dropout": 0.1},
    )
    card = json.loads((run / "card.json").read_text())
    assert card["training"]["epochs_run"] == 1 and card["data"]["folds"]["train"]["images"] <= 8
    assert 0 <= card["onnx_max_abs_diff"] <= PARITY_TOLERANCE <= 1e-4
    assert card["export"]["parity_images"] >= 1
    meta = read_onnx_metadata(run / "model.onnx")
    assert meta["plugin"] == "feedforward_cnn" and meta["input_size"] == "64"
    best = keras.models.load_model(run / "best.keras")
    assert sum(isinstance(layer, keras.layers.Concatenate) for layer in best.layers) == SMALL["blocks"] - 1
    assert np.isfinite(best.predict_on_batch(np.zeros((1, 64, 64, 3), np.float32))).all()
