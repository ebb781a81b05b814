"""Model discovery, metadata, validation, providers and sessions (tiny ONNX models, no TensorFlow)."""

from __future__ import annotations

import pickle

import pytest
from scoring_fixtures import TINY, expected_prob, make_tree, tiny

from mura_ens.errors import ModelError, UsageError
from mura_ens.scoring import models as M
from mura_ens.scoring import sessions as S
from mura_ens.scoring.runner import ImageTask, RunnerConfig, plan_batches, score_batch


def test_discovery_is_recursive_sorted_and_reads_metadata(tiny_models):
    specs = M.load_models(tiny_models["gen_a"].parents[1])
    assert [s.name for s in specs] == ["gen_a", "gen_b", "spec_elbow_wrist", "spec_hand"]
    by_name = {s.name: s for s in specs}
    assert by_name["gen_a"].is_generalist and by_name["gen_a"].input_size == 32
    assert by_name["spec_elbow_wrist"].body_parts == ("XR_ELBOW", "XR_WRIST")
    assert by_name["spec_hand"].serves("XR_HAND") and not by_name["spec_hand"].serves("XR_WRIST")
    assert not by_name["spec_hand"].serves("")  # unknown part: generalists only
    assert by_name["gen_b"].serves("")
    assert by_name["gen_b"].input_key == (48, "stretch")
    assert by_name["gen_a"].plugin == "tiny_linear" and by_name["gen_a"].input_dtype == "float32"
    assert len(by_name["gen_a"].sha256) == 64


def test_model_without_metadata_falls_back_to_stem_and_static_size(tiny_models):
    spec = M.load_model_spec(tiny_models["nometa"])
    assert spec.name == "plain_model"
    assert spec.input_size == 32 and spec.input_dtype == "uint8" and spec.is_generalist
    assert spec.threshold == 0.5 and spec.resize_policy == "stretch"


def test_run_folder_name_when_metadata_has_no_model_name(tmp_path):
    path = tiny.make_tiny_model(tmp_path / "my-run" / "model.onnx", a=1, b=0, extra_metadata={"model_name": ""})
    assert M.load_model_spec(path).name == "my-run"
    assert M.default_model_name(tmp_path / "r2" / "model.int8.onnx") == "r2"
    assert M.default_model_name(tmp_path / "x" / "resnet.onnx") == "resnet"


def test_wrong_input_layout_is_a_one_line_model_error_naming_file_and_shape(tiny_models):
    with pytest.raises(ModelError) as err:
        M.load_model_spec(tiny_models["nchw"])
    text = str(err.value)
    assert "nchw.onnx" in text and "(N, 3, H, W)" in text and "(N, H, W, 3)" in text
    assert "\n" not in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(extra_metadata={"body_parts": "XR_KNEE"}), "XR_KNEE"),
        (dict(extra_metadata={"input_size": "big"}), "'big'"),
        (dict(extra_metadata={"threshold": "1.5"}), "1.5"),
        (dict(extra_metadata={"resize_policy": "crop"}), "'crop'"),
        (dict(static_size=True, input_size=32, extra_metadata={"input_size": "64"}), "64"),
        (dict(metadata=False), "no fixed size"),
    ],
)
def test_bad_metadata_is_refused_with_the_bad_value(tmp_path, kwargs, message):
    path = tiny.make_tiny_model(tmp_path / "m.onnx", a=1, b=0, **kwargs)
    with pytest.raises(ModelError, match=message):
        M.load_model_spec(path)


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"\x00\x01 this is not protobuf \xff" * 10)
    with pytest.raises(ModelError, match="junk.onnx"):
        M.load_model_spec(bad)


def test_duplicate_names_get_suffixes(tmp_path):
    a = tiny.make_tiny_model(tmp_path / "a.onnx", a=1, b=0, model_name="same")
    b = tiny.make_tiny_model(tmp_path / "b.onnx", a=2, b=0, model_name="same")
    c = tiny.make_tiny_model(tmp_path / "c.onnx", a=3, b=0, model_name="same")
    assert [s.name for s in M.load_models(model_files=[a, b, c])] == ["same", "same-2", "same-3"]
    # the same file twice is one model
    assert len(M.load_models(tmp_path, model_files=[a])) == 3


def test_precision_picks_the_int8_twin(tmp_path):
    run = tmp_path / "runs" / "r1"
    fp32 = tiny.make_tiny_model(run / "model.onnx", a=1, b=0)
    int8 = tiny.make_tiny_model(run / "model.int8.onnx", a=1, b=0, extra_metadata={"quantization": "int8"})
    lone = tiny.make_tiny_model(tmp_path / "runs" / "r2" / "model.int8.onnx", a=1, b=0)
    assert M.discover_model_files(tmp_path / "runs") == [fp32, lone]
    assert M.discover_model_files(tmp_path / "runs", precision="int8") == [int8, lone]
    tiny.make_tiny_model(tmp_path / "runs" / "r3" / "model.onnx", a=1, b=0)
    with pytest.raises(UsageError, match="r3"):
        M.discover_model_files(tmp_path / "runs", precision="int8")
    with pytest.raises(UsageError, match="'fp16'"):
        M.discover_model_files(tmp_path / "runs", precision="fp16")


def test_no_models_and_missing_paths_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no ONNX models found"):
        M.discover_model_files(tmp_path)
    with pytest.raises(UsageError, match="not found"):
        M.discover_model_files(tmp_path / "nope")
    with pytest.raises(UsageError, match="missing.onnx"):
        M.discover_model_files(model_files=[tmp_path / "missing.onnx"])


def test_providers_are_explicit_and_validated():
    assert S.resolve_providers(None)[-1] == "CPUExecutionProvider"
    assert "AzureExecutionProvider" not in S.resolve_providers(None)
    assert S.resolve_providers("cpu") == ("CPUExecutionProvider",)
    assert S.resolve_providers(["CPUExecutionProvider"]) == ("CPUExecutionProvider",)
    with pytest.raises(UsageError) as err:
        S.resolve_providers(["Bogus"])
    assert "'Bogus'" in str(err.value) and "CPUExecutionProvider" in str(err.value)
    with pytest.raises(UsageError, match="Azure"):
        S.resolve_providers("AzureExecutionProvider")


def test_session_options_and_cache(tiny_models):
    spec = M.load_model_spec(tiny_models["gen_a"])
    config = S.SessionConfig(providers=("CPUExecutionProvider",), intra_op_threads=1)
    so = S.session_options(config)
    import onnxruntime as ort

    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.intra_op_num_threads == 1 and so.enable_cpu_mem_arena
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    first = S.get_session(spec, config)
    assert S.get_session(spec, config) is first
    assert first.get_providers() == ["CPUExecutionProvider"]
    assert 1 <= S.default_intra_op_threads(2) <= S.usable_cpus()


def test_the_unit_of_work_is_picklable_and_scores_whole_studies(tmp_path, tiny_models):
    root = make_tree(tmp_path, [("XR_HAND", 1, 3), ("XR_WRIST", 0, 2), ("XR_SHOULDER", 1, 1)])
    paths = sorted(str(p) for p in root.rglob("*.png"))
    tasks = [
        ImageTask(index=i, path=p, study=p.split("/")[-3], body_part=p.split("/")[-4]) for i, p in enumerate(paths)
    ]
    config = RunnerConfig(models=tuple(M.load_models(tiny_models["gen_a"].parents[1])), batch_size=2)
    # what a process pool or Dask would ship: arguments pickled, session built on first use there
    tasks2, config2 = pickle.loads(pickle.dumps((tasks, config)))
    rows = score_batch(tasks2, config2)
    assert [r["index"] for r in rows] == list(range(len(paths)))
    for row, task in zip(rows, tasks):
        assert row["status"] == "ok"
        assert row["prob__gen_a"] == pytest.approx(expected_prob(task.path, TINY["gen_a"]), abs=1e-6)
        assert ("prob__spec_hand" in row) == (task.body_part == "XR_HAND")
    # batches hold whole studies, at most batch_size images unless one study is larger
    batches = plan_batches(tasks, 2)
    assert [[t.body_part for t in b] for b in batches] == [["XR_HAND"] * 3, ["XR_SHOULDER"], ["XR_WRIST"] * 2]
    assert plan_batches(tasks, 6) == [tasks]
    assert plan_batches(tasks, 4) == [tasks[:4], tasks[4:]]
