"""`mura-ens export RUN_DIR --quantize int8`: the CLI over mura_ens.onnx.quantize (no TensorFlow needed)."""

from __future__ import annotations

import json

from mura_ens.cli.main import main


def test_export_quantize_int8_from_model_onnx(run_dir, capsys):
    # The fixture has no best.keras: success proves --quantize does not re-export through Keras.
    code = main(["export", str(run_dir), "--quantize", "int8", "--calibration-images", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert (run_dir / "model.int8.onnx").is_file()
    card = json.loads((run_dir / "card.json").read_text())
    assert card["int8"]["calibration"]["images"] == 4
    assert card["int8"]["agreement"]["fold"] in ("test", "val")
    assert "model.int8.onnx" in out and "calibrated on 4 training images" in out
    # the line reports the agreement quantize_run returned, which is the one recorded in the card
    agreement = card["int8"]["agreement"]
    assert f"vs fp32 on the {agreement['fold']} fold" in out
    assert f"study_prediction_agreement {agreement['study_prediction_agreement']:.4g}" in out


def test_export_unknown_quantize_mode_is_one_line(run_dir, capsys):
    assert main(["export", str(run_dir), "--quantize", "int4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'int4'" in err and "int8" in err
    assert not (run_dir / "model.int8.onnx").exists()


def test_export_reexport_needs_best_keras(run_dir, capsys):
    assert main(["export", str(run_dir), "--quantize", "int8", "--reexport"]) == 2
    assert "best.keras is missing" in capsys.readouterr().err
