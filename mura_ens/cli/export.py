"""`mura-ens export RUN_DIR`: re-export best.keras to model.onnx (parity-checked), or quantize it to int8."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app

QUANTIZE_MODES = ("int8",)


@app.command("export")
def export_command(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder written by 'mura-ens train' (holds best.keras and card.json).")
    ],
    quantize: Annotated[
        str | None,
        typer.Option(
            metavar="int8",
            help="Write model.int8.onnx from the run's model.onnx by ONNX Runtime static quantization "
            "(QDQ, calibrated on training images) and record its agreement with fp32 in card.json. "
            "Needs no TensorFlow; model.onnx is re-exported first only with --reexport or when it is missing.",
        ),
    ] = None,
    calibration_images: Annotated[int, typer.Option(metavar="N", help="Training images used to calibrate int8.")] = 200,
    data: Annotated[
        Path | None, typer.Option(metavar="SOURCE", help="The training data, when it moved since training.")
    ] = None,
    reexport: Annotated[
        bool, typer.Option("--reexport", help="With --quantize: re-export model.onnx from best.keras first.")
    ] = False,
) -> None:
    """Convert RUN_DIR/best.keras to RUN_DIR/model.onnx after checking ONNX vs Keras parity; or quantize it (--quantize int8)."""
    import json

    from ..errors import UsageError

    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise UsageError(f"unknown --quantize {quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    if quantize is None or reexport or not (Path(run_dir) / "model.onnx").exists():
        from ..training.export import export_run, read_onnx_metadata

        path = export_run(run_dir)
        card = json.loads((Path(run_dir) / "card.json").read_text(encoding="utf-8"))
        meta = read_onnx_metadata(path)
        typer.echo(
            f"{path}  (plugin {meta.get('plugin')}, body parts {meta.get('body_parts') or 'all'}, "
            f"input {meta.get('input_size')} px, ONNX vs Keras max |diff| {card['onnx_max_abs_diff']:.2g})"
        )
    if quantize == "int8":
        from ..quantize import quantize_run

        path = quantize_run(run_dir, calibration_images=calibration_images, data=data)
        card = json.loads((Path(run_dir) / "card.json").read_text(encoding="utf-8"))
        section = card.get("int8", {})
        agreement = section.get("agreement", {})
        line = f"{path}  ({section.get('quantization')}, calibrated on {section.get('calibration', {}).get('images')} training images"
        if agreement:
            keys = ("study_auc_diff", "study_kappa_diff", "study_prediction_agreement")
            line += f"; vs fp32 on the {agreement.get('fold')} fold: " + ", ".join(
                f"{k} {agreement[k]:.4g}" for k in keys if isinstance(agreement.get(k), (int, float))
            )
        typer.echo(line + ")")
