"""Model discovery, metadata, validation, providers and sessions (tiny ONNX models, no TensorFlow)."""

from __future__ import annotations

import pickle
import shutil
import warnings

import onnx
import pytest
from scoring_fixtures import TINY, expected_prob, make_tree, tiny

from mura_ens import run_folder as RF
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
    with pytest.raises(ModelError, match=message) as err:
        M.load_model_spec(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"\x00\x01 this is not protobuf \xff" * 10)
    with pytest.raises(ModelError, match="junk.onnx"):
        M.load_model_spec(bad)


def test_two_different_models_of_one_name_are_refused_naming_both(tmp_path):
    a = tiny.make_tiny_model(tmp_path / "a.onnx", a=1, b=0, model_name="same")
    b = tiny.make_tiny_model(tmp_path / "b.onnx", a=2, b=0, model_name="same")
    with pytest.raises(ModelError) as err:
        M.load_models(model_files=[a, b])
    text = str(err.value)
    assert "'same'" in text and str(a.resolve()) in text and str(b.resolve()) in text
    assert "prob__same" in text and "\n" not in text
    # the same file reached twice (folder + --model) is one model, and nothing to warn about
    b.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.name for s in M.load_models(tmp_path, model_files=[a])] == ["same"]


def test_copies_of_one_model_are_used_once_with_a_warning_naming_both(tmp_path, tiny_models):
    first = tmp_path / "models" / "backup" / "gen_a"
    second = tmp_path / "models" / "runs" / "gen_a"
    shutil.copytree(tiny_models["gen_a"].parent, first)
    shutil.copytree(tiny_models["gen_a"].parent, second)
    shutil.copytree(tiny_models["gen_b"].parent, tmp_path / "models" / "runs" / "gen_b")
    with pytest.warns(M.DuplicateModelWarning) as caught:
        specs = M.load_models(tmp_path / "models")
    assert [s.name for s in specs] == ["gen_a", "gen_b"]
    assert specs[0].path == str((first / "model.onnx").resolve())  # the first in discovery order is kept
    duplicates = [w for w in caught if issubclass(w.category, M.DuplicateModelWarning)]
    assert len(duplicates) == 1
    text = str(duplicates[0].message)
    assert str((first / "model.onnx").resolve()) in text and str((second / "model.onnx").resolve()) in text
    assert "'gen_a'" in text and "\n" not in text


@pytest.mark.timeout(60)
def test_symlinked_run_folders_are_followed_once_and_a_loop_ends(tmp_path, tiny_models):
    store = tmp_path / "store"
    shutil.copytree(tiny_models["gen_a"].parent, store / "gen_a")
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "gen_a").symlink_to(store / "gen_a", target_is_directory=True)
    (models / "sub" / "same_run_again").symlink_to(store / "gen_a", target_is_directory=True)
    (models / "sub" / "loop").symlink_to(models, target_is_directory=True)  # models/sub/loop/sub/loop/...
    (models / "dangling.onnx").symlink_to(tmp_path / "nowhere.onnx")
    shutil.copytree(tiny_models["gen_b"].parent, models / "real" / "gen_b")
    (models / "alias").symlink_to(models / "real" / "gen_b", target_is_directory=True)  # keeps its own path
    files = M.discover_model_files(models)
    assert files == [models / "gen_a" / "model.onnx", models / "real" / "gen_b" / "model.onnx"]
    assert [s.name for s in M.load_models(models)] == ["gen_a", "gen_b"]


def test_unfinished_runs_are_skipped_with_a_warning_saying_how_many_and_where(tmp_path, tiny_models):
    runs = tmp_path / "runs"
    finished, killed, killed_early = runs / "finished", runs / "killed", runs / "killed_early"
    for folder, source in ((finished, "gen_a"), (killed, "gen_b"), (killed_early, "spec_hand")):
        shutil.copytree(tiny_models[source].parent, folder)
        (folder / RF.HISTORY_FILE).write_text("epoch\n")
    (killed / RF.BEST_FILE).write_bytes(b"keras")
    RF.write_card(finished, {"run": "finished"})
    own = tiny.make_tiny_model(runs / "my_models" / "model.onnx", a=1, b=0, model_name="mine")  # a user's own
    loose = tiny.make_tiny_model(runs / "loose.onnx", a=2, b=0, model_name="loose")
    assert RF.is_finished_run(finished) and not RF.is_unfinished_run(finished)
    assert RF.is_unfinished_run(killed) and RF.is_unfinished_run(killed_early) and not RF.is_finished_run(killed)
    assert not RF.is_run_folder(own.parent) and not RF.is_unfinished_run(own.parent)

    with pytest.warns(M.UnfinishedRunWarning) as caught:
        files = M.discover_model_files(runs)
    assert files == [finished / "model.onnx", runs / "loose.onnx", own]
    assert loose in files
    texts = [str(w.message) for w in caught if issubclass(w.category, M.UnfinishedRunWarning)]
    assert len(texts) == 1 and "skipped 2 unfinished run folder(s)" in texts[0]
    assert str(killed) in texts[0] and str(killed_early) in texts[0] and "card.json" in texts[0]
    assert "\n" not in texts[0]
    # the API reports the same without warnings
    found = M.find_model_files(runs)
    assert found.unfinished == (killed, killed_early) and list(found.files) == files

    # only unfinished runs: no models, and the error says why
    with pytest.raises(UsageError, match=r"no ONNX models found under .*skipped 1 unfinished run folder\(s\)"):
        M.discover_model_files(killed.parent / "killed")
    # --precision int8 does not ask an unfinished run for its int8 twin
    int8_runs = tmp_path / "int8_runs"
    shutil.copytree(finished, int8_runs / "finished")
    shutil.copytree(killed, int8_runs / "killed")
    int8 = tiny.make_tiny_model(int8_runs / "finished" / "model.int8.onnx", a=4, b=-2, model_name="gen_a")
    with pytest.warns(M.UnfinishedRunWarning, match="skipped 1 unfinished"):
        assert M.discover_model_files(int8_runs, precision="int8") == [int8]
    # given explicitly, it is used as given, with a warning
    with pytest.warns(M.UnfinishedRunWarning, match="given with --model"):
        assert M.discover_model_files(model_files=[killed / "model.onnx"]) == [killed / "model.onnx"]


def test_model_option_given_a_folder_and_an_empty_model_file_say_so(tmp_path, tiny_models):
    folder = tiny_models["gen_a"].parent
    with pytest.raises(UsageError) as err:
        M.discover_model_files(model_files=[folder])
    assert "got a folder" in str(err.value) and "--models" in str(err.value) and "not found" not in str(err.value)
    with pytest.raises(ModelError, match="is a folder"):
        M.load_model_spec(folder)
    with pytest.raises(ModelError, match="model file not found"):
        M.load_model_spec(tmp_path / "gone.onnx")
    empty = tmp_path / "run" / "model.onnx"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    RF.write_card(empty.parent, {})
    for load in (lambda: M.load_model_spec(empty), lambda: M.load_models(empty.parent)):
        with pytest.raises(ModelError) as err:
            load()
        text = str(err.value)
        assert text.startswith(f"{empty}: ") and "file is empty" in text and "image input" not in text


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


def test_score_prints_skipped_runs_and_copies_as_one_warning_line_each(tmp_path, tiny_models, capsys):
    from mura_ens.cli.main import main

    tree = make_tree(tmp_path / "data", [("XR_HAND", 1, 2), ("XR_WRIST", 0, 1)])
    models = tmp_path / "models"
    shutil.copytree(tiny_models["gen_a"].parent, models / "gen_a")
    shutil.copytree(tiny_models["gen_a"].parent, models / "gen_a_copy")
    shutil.copytree(tiny_models["gen_b"].parent, models / "killed")
    (models / "killed" / RF.BEST_FILE).write_bytes(b"keras")
    out = tmp_path / "out"
    assert main(["score", str(tree), "--models", str(models), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("mura-ens: warning:")]
    assert any("skipped 1 unfinished run folder(s)" in line and str(models / "killed") in line for line in warned), err
    assert any("gen_a_copy" in line and "is a copy of" in line for line in warned), err
    header = (out / "images.csv").read_text().splitlines()[0]
    assert [c for c in header.split(",") if c.startswith("prob__")] == ["prob__gen_a"]


def test_intra_op_threads_spin_only_for_graphs_with_many_nodes(tiny_models):
    """Spinning pays for DenseNet201's ~600 short parallel sections per batch and costs a small graph the cores
    its decode threads need (onnx/runtime.py): the rule reads the node count from the model file."""
    from mura_ens.onnx.runtime import SPIN_MIN_NODES

    pool = S.SessionConfig(providers=("CPUExecutionProvider",), intra_op_threads=2)

    def spinning(**kwargs) -> str:
        return S.session_options(pool, **kwargs).get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning() == "1" and spinning(nodes=SPIN_MIN_NODES) == "1" and spinning(nodes=613) == "1"
    assert spinning(nodes=SPIN_MIN_NODES - 1) == "0" and spinning(nodes=25) == "0"
    path = tiny_models["gen_a"]
    nodes = S._node_count(str(path))
    assert nodes == len(onnx.load(str(path)).graph.node) and nodes < SPIN_MIN_NODES
    assert S._node_count(path.read_bytes()) == nodes and S._node_count(str(path) + ".missing") is None
