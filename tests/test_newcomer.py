"""Issue 24's fast checks: one-line warnings, `plugins --verbose`, the training step bar, the input structure
fed to Keras models (no structure warning) and best.keras without the optimizer state."""

from __future__ import annotations

import io
import json
import warnings

import pytest

from mura_ens import console
from mura_ens.cli.main import main

# ----------------------------------------------------------------------------- warnings as one line


@pytest.fixture
def shown_as_python_shows(monkeypatch):
    """Warnings shown, not recorded: as in a terminal or a notebook (pytest records them otherwise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", warnings._showwarning_orig)  # type: ignore[attr-defined]
        monkeypatch.setattr(warnings, "_showwarnmsg_impl", lambda message: None)  # Python's own, a function
        yield


def test_toolkit_and_third_party_warnings_are_one_line_without_file_line_or_raw_ids(shown_as_python_shows, capsys):
    with console.warnings_as_lines():
        # this test file is no site-package: a toolkit-style line
        warnings.warn("cc: train: dropped 1 image\nsecond line", UserWarning, stacklevel=1)
        warnings.warn_explicit(
            "Invalid value for VR UI: '1.2.840.113619.2.55.3.604688119.969.1268071029.320'",
            UserWarning,
            "/venv/lib/python3.11/site-packages/pydicom/valuerep.py",
            443,
        )
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "mura-ens: warning: cc: train: dropped 1 image",
        "mura-ens: warning: pydicom: Invalid value for VR UI: '<id>'",
    ]


def test_warnings_recorded_by_a_caller_stay_recorded():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with console.warnings_as_lines():
            warnings.warn("kept for the caller", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["kept for the caller"]


def test_the_api_shows_a_toolkit_warning_as_one_line(shown_as_python_shows, capsys, tmp_path):
    import mura_ens

    csv = tmp_path / "studies.csv"
    csv.write_text("study,body_part,label,prob\na,XR_HAND,1,0.9\nb,XR_HAND,1,0.2\n")
    mura_ens.evaluate(csv, bootstrap=0)
    err = capsys.readouterr().err
    assert "mura-ens: warning:" in err and "ROC AUC is undefined" in err
    assert "Warning:" not in err and ".py:" not in err


# ----------------------------------------------------------------------------- plugins --verbose


def test_plugins_verbose_lists_hyper_parameters_with_defaults_and_help(capsys):
    assert main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "hyper-parameters" in out
    assert "trainable_after" in out and "606" in out and "fine-tuned" in out
    assert "spatial_dropout" in out and "SpatialDropout2D" in out
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    params = {p["name"]: p for p in rows["custom_cnn"]["parameters"]}
    assert params["pooling"] == {
        "name": "pooling",
        "default": "max",
        "choices": ["max", "avg"],
        "help": "the 2x2 pooling: max or avg",
    }


def test_a_plugin_without_help_strings_shows_empty_help(fake_plugin, capsys):
    assert not getattr(fake_plugin, "param_help", {})
    from mura_ens.registry import plugin_rows

    row = next(r for r in plugin_rows() if r["name"] == fake_plugin.name)
    assert row["parameters"] and all(p["help"] == "" for p in row["parameters"])
    assert main(["plugins", "-v"]) == 0
    assert fake_plugin.name in capsys.readouterr().out


# ----------------------------------------------------------------------------- Keras side (TensorFlow)


@pytest.mark.tf
def test_step_progress_draws_steps_rate_eta_and_loss_then_goes_away():
    pytest.importorskip("tensorflow")
    from rich.console import Console

    from mura_ens.training.callbacks import StepProgress

    stream = io.StringIO()
    bar = StepProgress(4, 2, 16, console=Console(file=stream, force_terminal=True, width=120))
    bar.on_epoch_begin(0)
    for step in range(3):
        bar.on_train_batch_end(step, {"loss": 0.5 - 0.1 * step})
    bar._bar.refresh()
    drawn = stream.getvalue()
    bar.on_epoch_end(0)
    assert "epoch 1/2" in drawn and "3/4" in drawn and "img/s" in drawn and "ETA" in drawn and "loss 0.300" in drawn
    assert bar._bar is None


@pytest.mark.tf
def test_loaded_models_get_their_input_structure_and_best_keras_drops_the_optimizer(tmp_path):
    pytest.importorskip("tensorflow")
    import numpy as np

    from mura_ens.training.export import load_best_model, save_inference_model
    from mura_ens.training.tf_runtime import import_tensorflow, model_inputs

    _, keras = import_tensorflow()
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(64)(x)))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    images = np.zeros((2, 8, 8, 3), np.float32)
    model.fit(images, np.array([0.0, 1.0]), epochs=1, verbose=0)
    fat = tmp_path / "fat.keras"
    model.save(fat)
    loaded = load_best_model(fat)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded.predict_on_batch(model_inputs(loaded, images))
    assert not [w for w in caught if "structure" in str(w.message)]
    slim = save_inference_model(loaded, tmp_path / "best.keras")
    assert slim.stat().st_size < 0.6 * fat.stat().st_size  # Adam's two moments were most of it
    again = load_best_model(slim)
    np.testing.assert_allclose(again.predict_on_batch(model_inputs(again, images)), model.predict(images, verbose=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "fat.keras"]


def test_manifest_shows_pydicom_warnings_once_each_without_the_uids(tmp_path, capsys):
    pytest.importorskip("pydicom")
    import numpy as np
    import pydicom
    from test_dicom import write_dicom

    uid = "1.2.840.113619.2.55.3.6046881190.x"  # not a valid UI value: pydicom warns when it reads it
    with pydicom.config.disable_value_validation():
        for i in range(3):
            write_dicom(tmp_path / "pacs" / f"IM{i}", np.zeros((16, 16), np.uint16), study_uid=uid, body_part="HAND")
    assert main(["manifest", str(tmp_path / "pacs"), "-o", str(tmp_path / "m.csv")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "pydicom" in line]
    assert err == [
        "mura-ens: warning: pydicom: Invalid value for VR UI: '<id>.x'. Please see "
        "<https://dicom.nema.org/medical/dicom/current/output/html/part05.html#table_6.2-1> "
        "for allowed values for each VR."
    ]


# ----------------------------------------------------------------------------- pages


def test_compare_bolds_a_loss_only_among_runs_on_the_same_body_parts():
    from types import SimpleNamespace

    import pandas as pd

    from mura_ens.compare.page import _breakable, _peer_best

    runs = pd.DataFrame({"body_parts": ["all", "all", "XR_HAND", "XR_WRIST"]}, index=["g1", "g2", "hand", "wrist"])
    comparison = SimpleNamespace(overview=runs)
    loss = {"g1": 0.30, "g2": 0.20, "hand": 0.10, "wrist": 0.05}
    assert _peer_best(comparison, loss, "loss") == {"g2"}  # the specialists' lower losses are not comparable
    assert _peer_best(comparison, {"g1": 0.5, "g2": 0.5}, "kappa") == {"g1", "g2"}  # ties are all best
    assert _breakable("custom_cnn-64-f16") == "custom_cnn-<wbr>64-<wbr>f16"


def test_roc_panels_show_the_baseline_the_operating_point_and_legends_below_the_axes():
    import numpy as np
    import pandas as pd

    from mura_ens.report import roc_figure

    rng = np.random.default_rng(0)
    n = 40
    label = rng.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "body_part": ["XR_HAND"] * n,
            "label": label,
            "prob": np.clip(0.3 + 0.4 * label + rng.normal(0, 0.1, n), 0, 1),
            "prob__a": np.clip(0.4 + 0.2 * label + rng.normal(0, 0.2, n), 0, 1),
            "prob__b": np.clip(0.4 + 0.2 * label + rng.normal(0, 0.2, n), 0, 1),
        }
    )
    group = {"auc": 0.9, "sensitivity": 0.8, "specificity": 0.7}
    level = {"overall": group, "by_body_part": {"XR_HAND": group}}
    metrics = {
        "threshold": 0.5,
        "ensemble": "fitted",
        "ensemble_thresholds": {"by_body_part": {"XR_HAND": 0.4}, "default": 0.45},
        "study": level,
        "baselines": {"body_part": {"study": level}},
    }
    figure = roc_figure(frame, ["a", "b"], metrics)
    figure.canvas.draw()
    for ax in [a for a in figure.axes if a.get_visible()]:
        legend = ax.get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert any(t.startswith("body_part mean (baseline)") for t in texts)
        assert any(t.startswith("operating point (") for t in texts)
        assert legend.get_window_extent().y1 <= ax.get_window_extent().y0  # outside, under the plot area
        (point,) = [line for line in ax.get_lines() if line.get_label().startswith("operating point")]
        assert point.get_xdata()[0] == pytest.approx(0.3) and point.get_ydata()[0] == pytest.approx(0.8)
        assert ax.get_xlim()[0] < 0 and ax.get_ylim()[1] > 1  # a perfect curve is not hidden by the frame
    texts = [t.get_text() for ax in figure.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "operating point (threshold 0.4)" in texts and "operating point (per-part thresholds)" in texts
