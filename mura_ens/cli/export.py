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
    from ..errors import UsageError
    from ..run_folder import MODEL_FILE

    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise UsageError(f"unknown --quantize {quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    from ..training.export import require_finished_run

    require_finished_run(run_dir)  # a run being built or killed is never exported nor quantized
    if quantize is None or reexport or not (Path(run_dir) / MODEL_FILE).exists():
        from ..training.export import export_run

        typer.echo(_export_line(export_run(run_dir)))
    if quantize == "int8":
        from ..onnx.quantize import quantize_run

        typer.echo(_int8_line(quantize_run(run_dir, calibration_images=calibration_images, data=data)))


def _export_line(exported) -> str:
    """One line about an :class:`~mura_ens.training.export.ExportedRun`."""
    meta = exported.metadata
    return (
        f"{exported.path}  (plugin {meta.plugin}, body parts {','.join(meta.body_parts) or 'all'}, "
        f"input {meta.input_size} px, ONNX vs Keras max |diff| {exported.onnx_max_abs_diff:.2g})"
    )


def _int8_line(quantized) -> str:
    """One line about a :class:`~mura_ens.onnx.quantize.QuantizedRun`: calibration and agreement with fp32."""
    section = quantized.section
    line = (
        f"{quantized.path}  ({section.get('quantization')}, "
        f"calibrated on {section.get('calibration', {}).get('images')} training images"
    )
    agreement = quantized.agreement
    if agreement:
        keys = ("study_auc_diff", "study_kappa_diff", "study_prediction_agreement")
        line += f"; vs fp32 on the {agreement.get('fold')} fold: " + ", ".join(
            f"{k} {agreement[k]:.4g}" for k in keys if isinstance(agreement.get(k), (int, float))
        )
    return line + ")"
