"""The public Python API (mura_ens.train/export/score/evaluate/fit_ensemble/load_run/list_plugins) and the CLI basics.

- the package top imports lazily: ``import mura_ens`` loads neither pandas nor TensorFlow;
- the API returns the numbers the CLI writes (score, evaluate, fit-ensemble on the same input);
- every command calls its API function (a spy in place of the function);
- ``mura_ens.score`` runs with TensorFlow unimportable; ``mura_ens.train`` then raises the install hint
  as an ``ImportError``;
- ``load_run``: history, best epoch, evaluation, plots; unfinished runs refused with one line;
- ``mura-ens --version``; ``mura-ens export RUN_DIR...`` with several folders and globs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from onnx_graphs import make_run_dir
from scoring_fixtures import ENSEMBLE_LAYOUT, make_tree

import mura_ens
from mura_ens import api
from mura_ens.cli.main import main
from mura_ens.errors import MissingExtraError, UsageError

TF_MODULES = ("tensorflow", "keras", "tf2onnx")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("api"), ENSEMBLE_LAYOUT[:6], seed=4)


@pytest.fixture(scope="module")
def models_dir(tiny_models):
    return tiny_models["gen_a"].parents[1]


def _json(value):
    """``value`` as metrics.json holds it (NaN -> null, tuples -> lists)."""
    from mura_ens.io import _nan_to_none

    return json.loads(json.dumps(_nan_to_none(value)))


def _blocker(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment whose interpreter cannot import TensorFlow, Keras or tf2onnx; a marker file records tries."""
    blocker, marker = tmp_path / "block", tmp_path / "tensorflow_was_imported"
    for name in TF_MODULES:
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\nraise ImportError('{name} is blocked by the test')\n"
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked by the test" in check.stderr  # the blocker really blocks
    marker.unlink()
    return env, marker


def _run(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=300
    )


# --------------------------------------------------------------------------- the package top


def test_import_mura_ens_is_lazy_and_every_public_name_resolves_without_tensorflow():
    proc = _run(
        """
        import sys
        import mura_ens
        heavy = [m for m in ("pandas", "numpy", "onnxruntime", "tensorflow", "typer") if m in sys.modules]
        assert not heavy, heavy
        for name in mura_ens.__all__:
            assert getattr(mura_ens, name) is not None, name
        assert set(dir(mura_ens)) >= set(mura_ens.__all__)
        bad = [m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules]
        assert not bad, bad
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_all_names_the_lazy_table():
    assert set(mura_ens.__all__) == {"__version__", *mura_ens._LAZY}
    for name in ("train", "export", "score", "evaluate", "fit_ensemble", "load_run", "list_plugins"):
        assert callable(getattr(mura_ens, name)) and getattr(mura_ens, name).__doc__
    for name in ("TrainOptions", "ScoreSettings", "FitSettings", "BootstrapSettings"):
        assert isinstance(getattr(mura_ens, name), type)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mura_ens.nope  # noqa: B018


def test_missing_extra_error_is_a_usage_error_and_an_import_error():
    error = MissingExtraError("training and export", "train")
    assert isinstance(error, ImportError) and isinstance(error, UsageError)
    assert str(error) == "training and export needs the [train] extra: pip install 'mura-ens[train]'"


# --------------------------------------------------------------------------- API = CLI


def test_score_returns_the_numbers_the_cli_writes(tree, models_dir, tmp_path, capsys):
    assert main(["score", str(tree), "--models", str(models_dir), "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    result = mura_ens.score(tree, tmp_path / "api", models=models_dir, ensemble="body_part")
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert result.metrics is not None and cli_metrics["study"]["overall"]["n"] > 0
    assert _json(result.metrics) == cli_metrics
    assert json.loads((tmp_path / "api" / "metrics.json").read_text()) == cli_metrics
    cli_studies = pd.read_csv(tmp_path / "cli" / "studies.csv")
    assert isinstance(result.studies, pd.DataFrame) and list(result.studies.columns) == list(cli_studies.columns)
    pd.testing.assert_series_equal(
        result.studies["prob"].astype(float).reset_index(drop=True), cli_studies["prob"], check_names=False
    )
    assert isinstance(result.images, pd.DataFrame) and len(result.images) == len(
        pd.read_csv(tmp_path / "cli" / "images.csv")
    )
    assert {"images", "studies", "metrics", "report"} <= set(result.paths)
    assert all(Path(p).is_file() for p in result.paths.values())


def test_score_keywords_are_the_settings_fields(tree, models_dir, tmp_path):
    mean = mura_ens.score(
        tree, tmp_path / "mean", model=models_dir / "gen_a" / "model.onnx", ensemble="mean", bootstrap=0
    )
    assert mean.ensemble == "mean" and [m.name for m in mean.models] == ["gen_a"]
    assert mean.metrics["bootstrap"]["n_resamples"] == 0
    settings = mura_ens.ScoreSettings(threshold=0.3)
    again = mura_ens.score(tree, tmp_path / "again", models=models_dir, settings=settings, bootstrap=0)
    assert again.threshold == 0.3 and again.metrics["threshold"] == 0.3
    with pytest.raises(TypeError, match="unknown option.*nope"):
        mura_ens.score(tree, tmp_path / "x", models=models_dir, nope=1)
    with pytest.raises(UsageError, match="--batch-size"):
        mura_ens.score(tree, tmp_path / "x", models=models_dir, batch_size=0)


def test_evaluate_and_fit_ensemble_return_what_the_cli_writes(tree, models_dir, tmp_path, capsys):
    scored = tmp_path / "scored"
    mura_ens.score(tree, scored, models=models_dir, bootstrap=0)
    studies = scored / "studies.csv"
    args = ["evaluate", str(studies), "--bootstrap", "50", "--seed", "3", "--threshold", "0.4"]
    assert main([*args, "--out", str(tmp_path / "cli.json")]) == 0
    metrics = mura_ens.evaluate(studies, bootstrap=50, seed=3, threshold=0.4, out=tmp_path / "api.json")
    cli = json.loads((tmp_path / "cli.json").read_text())
    assert _json(metrics) == cli == json.loads((tmp_path / "api.json").read_text())
    assert cli["threshold"] == 0.4 and cli["bootstrap"]["n_resamples"] == 50

    fit = ["fit-ensemble", str(scored), "--out", str(tmp_path / "cli-ensemble.json"), "--min-studies", "2"]
    assert main([*fit, "--calibrate", "platt", "--folds", "2"]) == 0
    fitted = mura_ens.fit_ensemble(scored, tmp_path / "api-ensemble.json", min_studies=2, calibrate="platt", folds=2)
    capsys.readouterr()
    cli_ensemble = (tmp_path / "cli-ensemble.json").read_text()
    assert (tmp_path / "api-ensemble.json").read_text() == cli_ensemble == fitted.to_json()
    assert isinstance(fitted, mura_ens.FittedEnsemble) and fitted.settings.cv_folds == 2


def test_list_plugins_is_what_the_plugins_command_prints(capsys):
    assert main(["plugins", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == _json(mura_ens.list_plugins())
    assert "custom_cnn" in [row["name"] for row in mura_ens.list_plugins()]


def _spy(name: str, monkeypatch) -> list:
    calls: list = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        raise UsageError(f"spy {name} called")

    monkeypatch.setattr(api, name, spy)
    return calls


@pytest.mark.parametrize(
    ("command", "function"),
    [
        (["plugins"], "list_plugins"),
        (["score", "{tree}", "--models", "{models}", "--out", "{tmp}/out"], "score"),
        (["evaluate", "{tmp}/studies.csv"], "evaluate"),
        (["fit-ensemble", "{tmp}", "--out", "{tmp}/e.json"], "fit_ensemble"),
        (["train", "--plugin", "custom_cnn", "--data", "{tree}", "--out", "{tmp}/runs"], "train"),
        (["export", "{tmp}"], "export"),
    ],
)
def test_each_command_calls_its_api_function(command, function, tree, models_dir, tmp_path, monkeypatch, capsys):
    calls = _spy(function, monkeypatch)
    args = [a.format(tree=tree, models=models_dir, tmp=tmp_path) for a in command]
    assert main(args) == 2
    assert f"spy {function} called" in capsys.readouterr().err
    assert len(calls) == 1


# --------------------------------------------------------------------------- without TensorFlow


def test_score_runs_with_tensorflow_unimportable(tree, models_dir, tmp_path):
    env, marker = _blocker(tmp_path)
    proc = _run(
        f"""
        import sys
        import mura_ens
        result = mura_ens.score({str(tree)!r}, {str(tmp_path / "out")!r}, models={str(models_dir)!r})
        assert result.metrics["study"]["overall"]["n"] > 0
        print(len(result.studies), mura_ens.metrics_table(result.metrics).loc[("study", "overall"), "n"])
        bad = [m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules]
        assert not bad, bad
        """,
        env,
    )
    assert proc.returncode == 0, proc.stderr
    n_studies, n_labelled = proc.stdout.split()
    assert int(n_studies) >= int(n_labelled) > 0
    assert not marker.exists(), f"something tried to import: {marker.read_text()}"


def test_train_without_tensorflow_raises_the_install_hint(synth_small, tmp_path):
    env, _ = _blocker(tmp_path)
    proc = _run(
        f"""
        import mura_ens
        try:
            mura_ens.train("custom_cnn", {synth_small["root"]!r}, {str(tmp_path / "runs")!r}, epochs=1, progress=False)
        except ImportError as exc:
            assert isinstance(exc, mura_ens.UsageError), type(exc).__mro__
            print(type(exc).__name__)
            print(exc)
        else:
            raise SystemExit("no ImportError")
        """,
        env,
    )
    assert proc.returncode == 0, proc.stderr
    kind, message = proc.stdout.splitlines()
    assert kind == "MissingExtraError"
    assert (
        message.endswith("needs the [train] extra: pip install 'mura-ens[train]'") and "blocked by the test" in message
    )
    assert not (tmp_path / "runs").exists()


def test_train_cli_without_tensorflow_is_one_line_exit_2(synth_small, tmp_path):
    env, _ = _blocker(tmp_path)
    proc = _run(
        f"""
        import sys
        from mura_ens.cli.main import main
        sys.exit(main(["train", "--plugin", "custom_cnn", "--data", {synth_small["root"]!r},
                       "--out", {str(tmp_path / "runs")!r}, "--quiet"]))
        """,
        env,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install 'mura-ens[train]'" in proc.stderr, proc.stderr


def test_train_checks_for_tensorflow_before_reading_the_data(tmp_path):
    # TensorFlow absent as pip would leave it (not importable at all): the hint comes before the
    # data are looked at (a missing data folder would otherwise be the error).
    proc = _run(
        f"""
        import sys
        sys.modules["tensorflow"] = None
        import mura_ens
        try:
            mura_ens.train("custom_cnn", {str(tmp_path / "no-such-data")!r}, {str(tmp_path / "runs")!r})
        except ImportError as exc:
            print(exc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "training and export (tensorflow is not installed) needs the [train] extra: pip install 'mura-ens[train]'"
    )


def test_train_options_take_the_cli_spellings():
    options = api.train_options(epochs=2, param=["cells=3"], quiet=True)
    assert options.epochs == 2 and dict(options.params) == {"cells": "3"} and options.progress is False
    base = mura_ens.TrainOptions(epochs=5, image_size=32)
    assert api.train_options(base) is base
    assert api.train_options(base, epochs=1) == mura_ens.TrainOptions(epochs=1, image_size=32)
    with pytest.raises(TypeError, match="unknown option.*epoch\\b"):
        api.train_options(epoch=1)
    with pytest.raises(UsageError, match="epochs"):
        api.train_options(epochs=0)


# --------------------------------------------------------------------------- load_run

HISTORY = (
    "epoch\tloss\tauc\taccuracy\tkappa\tval_loss\tval_auc\tval_accuracy\tval_kappa\tlr\tseconds\n"
    "1\t0.7\t0.5\t0.5\t0\t0.69\t\t0.5\t\t0.001\t2.5\n"
    "2\t0.6\t0.6\t0.6\t0.2\t0.61\t0.7\t0.6\t0.1\t0.001\t0.4\n"
    "3\t0.5\t0.7\t0.7\t0.4\t0.64\t0.65\t0.6\t0.1\t0.0002\t0.4\n"
)
GROUP = {
    "n": 4,
    "n_positive": 2,
    "kappa": 0.5,
    "kappa_ci": [0.1, 0.9],
    "auc": None,
    "auc_ci": [None, None],
    "accuracy": 0.75,
    "sensitivity": 0.5,
    "specificity": 1.0,
    "n_excluded": 1,
}


def _fake_run(folder: Path, *, best_epoch: int | None = 2) -> Path:
    folder.mkdir(parents=True)
    props = {"plugin": "custom_cnn", "model_name": folder.name, "body_parts": "XR_HAND", "input_size": "32"}
    card = {"plugin": "custom_cnn", "onnx_metadata": props, "training": {"best_epoch": best_epoch}}
    (folder / "card.json").write_text(json.dumps(card))
    (folder / "history.tsv").write_text(HISTORY)
    level = {"overall": GROUP, "by_body_part": {"XR_HAND": {**GROUP, "auc": 0.8, "auc_ci": [0.6, 1.0]}}}
    evaluation = {"model_name": folder.name, "split": "test", "threshold": 0.5, "study": level, "image": level}
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    return folder


def test_load_run_holds_history_best_epoch_and_evaluation(tmp_path):
    run = mura_ens.load_run(_fake_run(tmp_path / "hand"))
    assert isinstance(run, mura_ens.Run) and run.name == "hand" and run.plugin == "custom_cnn"
    assert run.body_parts == ("XR_HAND",) and run.metadata.input_size == 32 and run.card["plugin"] == "custom_cnn"
    assert list(run.history["epoch"]) == [1, 2, 3] and math.isnan(run.history.loc[0, "val_auc"])
    best = run.best_epoch()
    assert best["epoch"] == 2 and best["val_loss"] == 0.61
    assert list(run.evaluation.index) == [
        ("study", "XR_HAND"),
        ("study", "overall"),
        ("image", "XR_HAND"),
        ("image", "overall"),
    ]
    overall = run.evaluation.loc[("study", "overall")]
    assert overall["n"] == 4 and overall["kappa_lo"] == 0.1 and math.isnan(overall["auc"])
    assert run.evaluation.loc[("study", "XR_HAND"), "auc"] == 0.8 and run.evaluated_on == "test"
    assert "hand" in repr(run) and "kappa 0.500" in repr(run)
    assert mura_ens.load_run(tmp_path / "hand" / "card.json").path == run.path


def test_best_epoch_falls_back_to_the_lowest_val_loss(tmp_path):
    run = mura_ens.load_run(_fake_run(tmp_path / "r", best_epoch=None))
    assert run.best_epoch()["epoch"] == 2


def test_plot_history_draws_train_and_val_with_the_best_epoch(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    run = mura_ens.load_run(_fake_run(tmp_path / "r"))
    ax = Figure().subplots()
    assert run.plot_history(ax, metric="auc") is ax
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"train auc", "val auc", "best epoch"}
    assert list(lines["train auc"].get_ydata()) == [0.5, 0.6, 0.7]
    assert list(lines["best epoch"].get_xdata()) == [2, 2]
    with pytest.raises(UsageError, match="unknown history metric 'lr'"):
        run.plot_history(ax, metric="lr")
    own = run.plot_history()  # a pyplot figure of its own
    assert own.get_title() == "r" and own is not ax


def test_load_run_refuses_unfinished_and_other_folders_with_one_line(tmp_path):
    unfinished = _fake_run(tmp_path / "killed")
    (unfinished / "card.json").unlink()
    for path, words in (
        (unfinished, "is an unfinished run (no card.json"),
        (tmp_path / "missing", "run folder not found"),
        (tmp_path, "not a mura-ens run folder"),
    ):
        with pytest.raises(UsageError, match="^[^\n]*$") as err:
            mura_ens.load_run(path)
        assert words in str(err.value) and str(path) in str(err.value)


def test_metrics_table_and_roc_figure_of_a_score_result(tree, models_dir, tmp_path):
    result = mura_ens.score(tree, tmp_path / "out", models=models_dir, bootstrap=0)
    table = mura_ens.metrics_table(result.metrics)
    parts = sorted(result.metrics["study"]["by_body_part"])
    assert list(table.loc["study"].index) == [*parts, "overall"]
    assert table.loc[("study", "overall"), "n"] == result.metrics["study"]["overall"]["n"]
    assert table.loc[("image", "overall"), "kappa"] == pytest.approx(result.metrics["image"]["overall"]["kappa"])
    assert list(mura_ens.metrics_table(result.metrics, levels=["image"]).index.unique("level")) == ["image"]
    assert mura_ens.metrics_table({}).empty
    figure = mura_ens.roc_figure(result)
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == ["overall", *parts]
    result.metrics = None
    with pytest.raises(UsageError, match="no labels"):
        mura_ens.roc_figure(result)


# --------------------------------------------------------------------------- CLI basics


def test_version_prints_the_installed_versions_without_importing_them():
    from importlib.metadata import version

    proc = _run(
        """
        import sys
        from mura_ens.cli.main import main
        code = main(["--version"])
        heavy = [m for m in ("tensorflow", "onnxruntime") if m in sys.modules]
        assert not heavy, heavy
        sys.exit(code)
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"mura-ens {mura_ens.__version__}"
    assert f"onnxruntime {version('onnxruntime')}" in lines
    assert f"tensorflow {version('tensorflow')}" in lines
    assert lines[-1].startswith("python 3.")


def test_version_says_when_tensorflow_is_not_installed(monkeypatch, capsys):
    from importlib import metadata

    real = metadata.version

    def version(name):
        if name.startswith("tensorflow") or name == "tf-nightly":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert "tensorflow not installed (training and export: pip install 'mura-ens[train]')" in out
    assert f"onnxruntime {real('onnxruntime')}" in out


def _complete(words: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "_MURA_ENS_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "1"}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from mura_ens.cli.main import main; sys.exit(main())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_shell_completion_is_available(capsys):
    proc = _complete("mura-ens exp")
    assert proc.returncode == 0 and proc.stdout.split() == ["explain-eval", "export"], proc.stdout + proc.stderr
    proc = _complete("mura-ens expo")
    assert proc.returncode == 0 and proc.stdout.split() == ["export"], proc.stdout + proc.stderr
    assert main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert "--install-completion" in shown and "--show-completion" in shown and "--version" in shown


def _family(tmp_path: Path, synth_small: dict, names: tuple[str, ...]) -> Path:
    """Copies of a tiny ONNX run folder (no best.keras) under ``tmp_path/runs``."""
    runs = tmp_path / "runs"
    first = make_run_dir(tmp_path, synth_small)
    for name in names:
        shutil.copytree(first, runs / name)
    return runs


def test_export_quantizes_several_runs_given_by_a_glob(synth_small, tmp_path, capsys):
    runs = _family(tmp_path, synth_small, ("spec-a", "spec-b", "other"))
    code = main(
        ["export", str(runs / "spec-*"), str(runs / "other"), "--quantize", "int8", "--calibration-images", "2"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert [Path(line.split()[0]).parent.name for line in lines] == ["spec-a", "spec-b", "other"]
    assert all("calibrated on 2 training images" in line for line in lines)
    for name in ("spec-a", "spec-b", "other"):
        assert json.loads((runs / name / "card.json").read_text())["int8"]["calibration"]["images"] == 2


def test_export_goes_on_after_a_failing_run_and_exits_2(synth_small, tmp_path, capsys):
    runs = _family(tmp_path, synth_small, ("spec-a", "spec-b", "spec-c"))
    (runs / "spec-b" / "card.json").unlink()  # a killed run (history, no card): refused
    (runs / "spec-b" / "history.tsv").write_text(HISTORY)
    missing = tmp_path / "nowhere"
    code = main(["export", str(runs / "spec-*"), str(missing), str(tmp_path / "zz*"), "--quantize", "int8"])
    captured = capsys.readouterr()
    assert code == 2
    assert [Path(line.split()[0]).parent.name for line in captured.out.splitlines()] == ["spec-a", "spec-c"]
    errors = captured.err.splitlines()
    assert len(errors) == 3 and all(line.startswith("mura-ens: error: ") for line in errors), errors
    assert any(f"no run folder matches {tmp_path / 'zz*'}" in line for line in errors)
    assert any(str(runs / "spec-b") in line and "unfinished run" in line for line in errors)
    assert any(str(missing) in line for line in errors)
    assert (runs / "spec-c" / "model.int8.onnx").is_file() and not (runs / "spec-b" / "model.int8.onnx").exists()


def test_export_of_one_unmatched_glob_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "runs" / "specialists*"), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert err == f"mura-ens: error: no run folder matches {tmp_path / 'runs' / 'specialists*'}\n"


def test_export_api_quantizes_from_model_onnx_alone(run_dir):
    # run_dir has no best.keras: success shows that quantizing alone does not re-export through Keras
    done = mura_ens.export(run_dir, quantize="int8", calibration_images=2)
    assert done.onnx is None and done.int8 is not None and done.paths == [run_dir / "model.int8.onnx"]
    assert done.int8.section["calibration"]["images"] == 2
    with pytest.raises(UsageError, match="unknown --quantize 'int4'"):
        mura_ens.export(run_dir, quantize="int4")


@pytest.mark.tf
@pytest.mark.slow
def test_train_returns_runs_and_export_reexports_several(synth_small, tmp_path, capsys):
    runs = mura_ens.train(
        "custom_cnn",
        synth_small["root"],
        tmp_path / "runs",
        epochs=1,
        batch_size=8,
        max_images=16,
        image_size=32,
        param=["cells=2", "starting_filters=4"],
        body_part="XR_WRIST",
        quiet=True,
    )
    (run,) = runs
    assert isinstance(run, mura_ens.Run) and run.body_parts == ("XR_WRIST",)
    assert run.name == "custom_cnn-32-f4-c2-e1-bs8-mi16-wc-aug-XR_WRIST"  # named after its parameters
    assert len(run.history) == 1 and run.best_epoch()["epoch"] == 1 and ("study", "overall") in run.evaluation.index
    assert run.card["config"]["params"]["cells"] == 2
    twin = tmp_path / "runs" / "twin"
    shutil.copytree(run.path, twin)
    for folder in (run.path, twin):
        (folder / "model.onnx").unlink()
    capsys.readouterr()
    assert main(["export", str(run.path), str(twin)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [Path(line.split()[0]) for line in lines] == [run.path / "model.onnx", twin / "model.onnx"]
    assert all("ONNX vs Keras max |diff|" in line for line in lines)
    assert (run.path / "model.onnx").is_file() and (twin / "model.onnx").is_file()
