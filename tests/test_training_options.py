"""TrainOptions: checked once when made, one-line errors that repeat the bad value (no TensorFlow)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from mura_ens.cli.main import main
from mura_ens.errors import PluginError, UsageError
from mura_ens.training.options import RunConfig, TrainOptions

CARD_CONFIG_KEYS = [
    "epochs",
    "patience",
    "batch_size",
    "image_size",
    "lr",
    "weights",
    "class_weights",
    "augment",
    "max_images",
    "seed",
    "val_fraction",
    "resize_policy",
    "threshold",
    "strategy",
    "cache",
    "init_from",
]


def test_defaults_and_normalised_values(tmp_path):
    options = TrainOptions()
    assert (options.epochs, options.patience, options.batch_size, options.lr) == (100, 10, 32, None)
    assert options.run_config(image_size=64, weights=None).lr == 1e-3  # lr None: the default (or a warm start's)
    assert options.image_size is None and options.weights is None and dict(options.params) == {}
    options = TrainOptions(strategy="Mirrored", params=["cells=3", "pooling=avg"], cache=tmp_path, weights=tmp_path)
    assert options.strategy == "mirrored"
    assert dict(options.params) == {"cells": "3", "pooling": "avg"}
    assert options.cache == str(tmp_path) and options.weights == str(tmp_path)
    assert TrainOptions(params={"cells": 3}).params == {"cells": 3}
    with pytest.raises(TypeError):
        options.params["cells"] = "4"  # read-only, like the rest of the object
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.epochs = 3


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"body_part": "XR_KNEE"}, "unknown body part 'XR_KNEE'; expected one of XR_ELBOW, "),
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"epochs": 2.5}, "epochs must be a whole number >= 1, got 2.5"),
        ({"patience": -1}, "patience must be >= 0, got -1"),
        ({"batch_size": 0}, "batch-size must be >= 1, got 0"),
        ({"image_size": 8}, "image-size must be >= 16, got 8"),
        ({"lr": 0.0}, "lr must be a positive number, got 0.0"),
        ({"lr": float("nan")}, "lr must be a positive number, got nan"),
        ({"max_images": 0}, "max-images must be >= 1, got 0"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"val_fraction": 1.0}, "val-fraction must be between 0 and 1 (exclusive), got 1.0"),
        ({"augment": "yes"}, "augment must be true or false, got 'yes'"),
        ({"xla": 1}, "xla must be true, false or None, got 1"),
        ({"resize_policy": "crop"}, "unknown resize policy 'crop'; expected one of stretch, pad"),
        ({"strategy": "horovod"}, "unknown strategy 'horovod'; expected one of auto, one, mirrored, multiworker"),
        ({"params": "cells=3"}, "params must be a dict or a list of 'key=value' strings, got the string 'cells=3'"),
    ],
)
def test_bad_values_raise_one_line_repeating_the_value(changes, message):
    with pytest.raises(UsageError) as info:
        TrainOptions(**changes)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    with pytest.raises(UsageError):  # replace() checks again
        dataclasses.replace(TrainOptions(), **changes)


def test_bad_param_item_is_a_plugin_error():
    with pytest.raises(PluginError, match=r"--param expects key=value, got 'cells'"):
        TrainOptions(params=["cells"])


def test_run_config_is_the_card_config():
    config = TrainOptions(epochs=3, seed=2, cache=Path("/c")).run_config(image_size=64, weights=None)
    assert isinstance(config, RunConfig)
    values = config.as_dict()
    assert list(values) == CARD_CONFIG_KEYS
    assert values["image_size"] == 64 and values["weights"] is None and values["threshold"] == 0.5
    assert values["epochs"] == 3 and values["seed"] == 2 and values["cache"] == "/c" and values["strategy"] == "auto"


def test_train_takes_options_or_keyword_overrides(tmp_path):
    from mura_ens.training import train

    with pytest.raises(TypeError, match="epoch"):
        train("custom_cnn", tmp_path, tmp_path, epoch=3)
    with pytest.raises(UsageError, match="epochs must be >= 1, got 0"):
        train("custom_cnn", tmp_path, tmp_path, TrainOptions(epochs=3), epochs=0)


def test_cli_bad_option_is_one_line_exit_2(tmp_path, capsys):
    code = main(
        ["train", "--plugin", "custom_cnn", "--data", str(tmp_path), "--out", str(tmp_path), "--val-fraction", "1.5"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err == "mura-ens: error: val-fraction must be between 0 and 1 (exclusive), got 1.5\n"


def test_options_import_no_tensorflow():
    code = (
        "import sys; from mura_ens.training.options import TrainOptions; TrainOptions(epochs=2); "
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_onnx_metadata_props_keep_their_order():
    """The props every exported model carries: the standard keys in order, base_plugin last when set."""
    from mura_ens import __version__
    from mura_ens.training.trainer import RunPlan, _onnx_props

    config = TrainOptions(resize_policy="pad").run_config(image_size=64, weights=None)
    family = RunPlan("s-XR_HAND", "specialists", None, "custom_cnn", "custom_cnn", ("XR_HAND",))
    props = _onnx_props(family, "s-XR_HAND-2", config)
    assert props == {
        "plugin": "specialists",
        "model_name": "s-XR_HAND-2",
        "body_parts": "XR_HAND",
        "input_size": "64",
        "resize_policy": "pad",
        "threshold": "0.5",
        "mura_ens_version": __version__,
        "base_plugin": "custom_cnn",
    }
    assert list(props)[-1] == "base_plugin"
    generalist = RunPlan("cnn", "custom_cnn", None, "custom_cnn", None, ())
    assert "base_plugin" not in _onnx_props(generalist, "cnn", config)
    assert _onnx_props(generalist, "cnn", config)["body_parts"] == ""
