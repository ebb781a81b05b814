"""The run-folder and ONNX-metadata contract (mura_ens.run_folder): no TensorFlow, no onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import onnx
import pytest
from onnx import TensorProto, helper

from mura_ens import __version__
from mura_ens import run_folder as rf
from mura_ens.errors import UsageError

WRIST_PAD = rf.ModelMetadata(
    plugin="specialists",
    model_name="run-XR_WRIST",
    body_parts=("XR_WRIST",),
    input_size=64,
    resize_policy="pad",
    threshold=0.4,
    extra={"base_plugin": "custom_cnn"},
)


def test_metadata_props_keep_their_order_and_round_trip():
    props = WRIST_PAD.to_onnx_props()
    assert list(props.items()) == [
        ("plugin", "specialists"),
        ("model_name", "run-XR_WRIST"),
        ("body_parts", "XR_WRIST"),
        ("input_size", "64"),
        ("resize_policy", "pad"),
        ("threshold", "0.4"),
        ("mura_ens_version", __version__),
        ("base_plugin", "custom_cnn"),
    ]
    assert rf.ModelMetadata.from_onnx_props(props, default_name="ignored") == WRIST_PAD


def test_the_trainers_metadata_is_the_same_contract():
    from mura_ens.training.options import RunConfig, TrainOptions
    from mura_ens.training.trainer import RunPlan, _onnx_props

    plan = RunPlan(
        name="run-XR_WRIST",
        plugin="specialists",
        builder=None,
        builder_name="custom_cnn",
        base="custom_cnn",
        body_parts=("XR_WRIST",),
    )
    config: RunConfig = TrainOptions(resize_policy="pad").run_config(image_size=64, weights=None)
    made = _onnx_props(plan, "run-XR_WRIST", replace(config, threshold=0.4))
    assert made == WRIST_PAD.to_onnx_props()
    assert list(made) == list(WRIST_PAD.to_onnx_props())  # the same order: base_plugin last


def test_missing_props_fall_back():
    meta = rf.ModelMetadata.from_onnx_props({}, default_name="plain", static_size=32)
    assert (meta.model_name, meta.input_size, meta.resize_policy, meta.threshold) == ("plain", 32, "stretch", 0.5)
    assert meta.body_parts == () and meta.plugin == "" and meta.extra == {}


@pytest.mark.parametrize(
    "props, static_size, message",
    [
        ({"input_size": "big"}, None, "metadata input_size 'big' is not an integer"),
        ({"input_size": "64"}, 32, "metadata input_size 64 disagrees"),
        ({}, None, "the input has no fixed size and metadata has no input_size"),
        ({"input_size": "-3"}, None, "input_size -3 must be positive"),
        ({"resize_policy": "crop"}, 32, "metadata resize_policy 'crop' is not one of stretch, pad"),
        ({"body_parts": "XR_WRIST,XR_KNEE"}, 32, "metadata body_parts has unknown part(s) XR_KNEE"),
        ({"threshold": "high"}, 32, "metadata threshold 'high' is not a number"),
        ({"threshold": "1.5"}, 32, "metadata threshold 1.5 is outside [0, 1]"),
    ],
)
def test_unusable_props_name_the_prop_and_value(props, static_size, message):
    with pytest.raises(rf.MetadataError) as err:
        rf.ModelMetadata.from_onnx_props(props, default_name="m", static_size=static_size)
    assert str(err.value).startswith(message)  # the caller prefixes the file


def test_size_errors_name_the_input_shape_when_given():
    with pytest.raises(rf.MetadataError, match=r"^metadata input_size 64 disagrees with input shape \(N, 32, 32, 3\)$"):
        rf.ModelMetadata.from_onnx_props(
            {"input_size": "64"}, default_name="m", static_size=32, input_shape="(N, 32, 32, 3)"
        )
    with pytest.raises(rf.MetadataError, match=r"^input shape \(N, H, W, 3\) has no fixed size"):
        rf.ModelMetadata.from_onnx_props({}, default_name="m", input_shape="(N, H, W, 3)")


def test_props_on_a_model_proto():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {"stale": "x"})
    rf.write_onnx_props(model, WRIST_PAD)
    assert rf.read_onnx_props(model) == WRIST_PAD.to_onnx_props()
    rf.write_onnx_props(model, {"input_size": 32, "plugin": "p"})  # plain mappings: values as strings
    assert rf.read_onnx_props(onnx.load_from_string(model.SerializeToString())) == {"input_size": "32", "plugin": "p"}


def test_default_model_name(tmp_path):
    assert rf.default_model_name(tmp_path / "run-1" / rf.MODEL_FILE) == "run-1"
    assert rf.default_model_name(tmp_path / "run-1" / rf.INT8_FILE) == "run-1"
    assert rf.default_model_name(tmp_path / "x" / "resnet.int8.onnx") == "resnet.int8"
    assert rf.default_model_name(tmp_path / "x" / "resnet.onnx") == "resnet"


def test_card_read_update_and_required_files(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UsageError, match=f"not a mura-ens run folder: {run} is missing"):
        rf.require_run_files(run, rf.CARD_FILE)
    run.mkdir()
    with pytest.raises(UsageError, match="card.json is missing"):
        rf.require_run_files(run, rf.CARD_FILE, rf.MODEL_FILE)
    with pytest.raises(UsageError, match="not a mura-ens run folder"):
        rf.read_card(run)
    rf.write_card(run, {"model_name": "run", "export": {"a": 1}, "notes": []})
    assert rf.require_run_files(run, rf.CARD_FILE) == run
    card = rf.update_card(run, {"export": {"a": 2}, "int8": {"b": 3}})
    on_disk = json.loads((run / rf.CARD_FILE).read_text())
    assert card == on_disk == rf.read_card(run)
    assert list(on_disk) == ["model_name", "export", "notes", "int8"]  # updated keys keep their place
    (run / rf.CARD_FILE).write_text("[1, 2]")
    with pytest.raises(UsageError, match="a JSON object"):
        rf.read_card(run)
    (run / rf.CARD_FILE).write_text("{broken")
    with pytest.raises(UsageError, match="not a readable model card"):
        rf.read_card(run)


def test_card_metadata(tmp_path):
    card = {"onnx_metadata": {**WRIST_PAD.to_onnx_props(), "model_name": ""}}
    assert rf.card_metadata(card, run_dir=tmp_path / "r7").model_name == "r7"
    for bad in ({}, {"onnx_metadata": {"input_size": "x"}}, {"onnx_metadata": ["not", "a", "dict"]}):
        with pytest.raises(UsageError, match=r"card\.json is not a mura-ens model card"):
            rf.card_metadata(bad, run_dir=tmp_path)


def test_fold_recipe_from_card():
    card = {
        "body_parts": ["XR_HAND"],
        "config": {"seed": 3, "val_fraction": 0.3, "max_images": 50},
        "data": {"source": "/data", "manifest_sha256": "ab", "split_seed": 9, "val_fraction": 0.25},
    }
    assert rf.FoldRecipe.from_card(card) == rf.FoldRecipe(
        source="/data",
        manifest_sha256="ab",
        split_seed=9,
        val_fraction=0.25,
        body_parts=("XR_HAND",),
        max_images=50,
        seed=3,
    )
    # an older card without split details: the config's seed and fraction; no cap
    old = rf.FoldRecipe.from_card({"config": {"seed": 4, "val_fraction": 0.1}})
    assert (old.split_seed, old.val_fraction, old.seed, old.max_images, old.body_parts) == (4, 0.1, 4, None, ())
    with pytest.raises(UsageError, match="unreadable split seed"):
        rf.FoldRecipe.from_card({"data": {"split_seed": "x"}})


def test_resize_policies_have_one_definition():
    from mura_ens.data import images

    assert images.RESIZE_POLICIES is rf.RESIZE_POLICIES


def test_run_folder_imports_neither_tensorflow_nor_onnxruntime():
    code = (
        "import sys, mura_ens.run_folder\n"
        "bad = [m for m in ('tensorflow', 'keras', 'onnxruntime', 'onnx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
