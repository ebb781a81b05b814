"""ONNX export: re-export of a run folder, parity failure, dynamic batch, mixed precision, metadata."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from mura_ens.cli.main import main
from mura_ens.errors import UsageError
from mura_ens.registry import get_plugin
from mura_ens.run_folder import ModelMetadata
from mura_ens.training import export_run, train
from mura_ens.training.export import (
    ParityError,
    export_model,
    float32_model,
    load_parity_batch,
    read_onnx_metadata,
)
from mura_ens.training.tf_runtime import import_tensorflow

pytestmark = [pytest.mark.tf]

tf, keras = import_tensorflow()
TINY = {"cells": 2, "starting_filters": 4}


@pytest.fixture(scope="module")
def run_dir(synth_small, tmp_path_factory):
    """A finished custom_cnn run (32 px, one epoch on at most 16 images per fold)."""
    out = tmp_path_factory.mktemp("export_runs")
    (run,) = train(
        "custom_cnn",
        synth_small["root"],
        out,
        epochs=1,
        batch_size=8,
        max_images=16,
        image_size=32,
        params=TINY,
        progress=False,
        body_part="XR_WRIST",
    )
    return run


def tiny_model(size: int = 32):
    plugin = get_plugin("custom_cnn")
    return plugin.build({"image_size": size, "weights": None, **plugin.defaults, **TINY})


def test_run_metadata_and_dynamic_batch(run_dir):
    meta = read_onnx_metadata(run_dir / "model.onnx")
    assert meta["body_parts"] == "XR_WRIST" and meta["model_name"] == "custom_cnn-32-f4-c2-e1-bs8-mi16-wc-aug-XR_WRIST"
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [32, 32, 3] and isinstance(inp.shape[0], str)
    images, paths = load_parity_batch(run_dir)
    assert len(paths) == len(images) >= 1
    for n in (1, 5):
        batch = np.repeat(images[:1], n, axis=0)
        (out,) = session.run(None, {inp.name: batch})
        assert out.shape == (n, 1) and np.all((out >= 0) & (out <= 1))


def test_export_run_rewrites_model_and_card(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "model.onnx").unlink()
    card_before = json.loads((copy / "card.json").read_text())
    exported = export_run(copy)
    assert exported.path == copy / "model.onnx"
    assert read_onnx_metadata(copy / "model.onnx") == card_before["onnx_metadata"]
    assert exported.metadata.to_onnx_props() == card_before["onnx_metadata"]
    card = json.loads((copy / "card.json").read_text())
    assert 0 <= card["onnx_max_abs_diff"] <= 1e-4 and card["export"]["parity_paths"]
    # what was written is returned: the CLI prints it without re-reading the card
    assert exported.export == card["export"] and exported.onnx_max_abs_diff == card["onnx_max_abs_diff"]
    assert {k: v for k, v in card.items() if k not in ("export", "onnx_max_abs_diff")} == {
        k: v for k, v in card_before.items() if k not in ("export", "onnx_max_abs_diff")
    }
    # ONNX and Keras agree with the first export on the parity images
    images, _ = load_parity_batch(copy)
    first = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    second = ort.InferenceSession(str(copy / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        first.run(None, {first.get_inputs()[0].name: images})[0],
        second.run(None, {second.get_inputs()[0].name: images})[0],
        atol=1e-6,
    )
    # the CLI wrapper
    (copy / "model.onnx").unlink()
    assert main(["export", str(copy)]) == 0
    out = capsys.readouterr().out
    assert str(copy / "model.onnx") in out and "XR_WRIST" in out and (copy / "model.onnx").is_file()


def test_export_of_a_non_run_folder_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a mura-ens run folder" in err
    with pytest.raises(UsageError, match="is missing"):
        export_run(tmp_path / "nowhere")


def test_parity_failure_writes_nothing(tmp_path):
    model = tiny_model()
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    meta = ModelMetadata(plugin="custom_cnn", model_name="m", body_parts=(), input_size=32, resize_policy="stretch")
    with pytest.raises(ParityError, match=r"fails the parity check: max \|p_onnx - p_keras\|"):
        export_model(model, tmp_path / "m.onnx", metadata=meta, parity_images=images, tolerance=-1.0)
    assert not (tmp_path / "m.onnx").exists()
    info = export_model(model, tmp_path / "m.onnx", metadata=meta, parity_images=images)
    assert info["onnx_max_abs_diff"] <= 1e-4 and info["opset"] == 17 and (tmp_path / "m.onnx").is_file()
    assert read_onnx_metadata(tmp_path / "m.onnx")["body_parts"] == ""


def test_mixed_precision_model_exports_in_float32(tmp_path):
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = tiny_model()
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert mixed.get_layer("cell1_conv1").dtype_policy.name == "mixed_float16"
    plain = float32_model(mixed)
    assert all(layer.dtype_policy.name == "float32" for layer in plain.layers)
    for a, b in zip(mixed.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(plain.predict_on_batch(images), mixed.predict_on_batch(images), atol=2e-2)
    meta = ModelMetadata(
        plugin="custom_cnn", model_name="mixed", body_parts=("XR_HAND",), input_size=32, resize_policy="pad"
    )
    info = export_model(mixed, tmp_path / "mixed.onnx", metadata=meta, parity_images=images)
    assert info["onnx_max_abs_diff"] <= 1e-4
    assert read_onnx_metadata(tmp_path / "mixed.onnx")["resize_policy"] == "pad"
