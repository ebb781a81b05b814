"""`mura-ens export RUN_DIR...`: re-export best.keras to model.onnx (parity-checked) with the explain artifact
(heatmaps, docs/explain.md), or quantize it to int8.

A thin wrapper over :func:`mura_ens.export`, one run folder after the other (folders and globs).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEBUG_ENV
from ..errors import RunFailed
from ._app import app


@app.command("export")
def export_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...",
            help="Run folders written by 'mura-ens train' (each holds best.keras and card.json); "
            "several, or globs such as 'runs/specialists*'.",
            show_default=False,
        ),
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
    """Convert RUN_DIR/best.keras to RUN_DIR/model.onnx after checking ONNX vs Keras parity; or quantize it (--quantize int8).

    The export also writes what `score --explain` draws heatmaps with (explain.json, explain.npz);
    runs exported before heatmaps existed get them this way.

    Several run folders (or globs, e.g. a specialists family: runs/specialists*)
    are done one after the other, one line per run; a run that fails prints
    its error and the others are still done (exit code 2 at the end).
    """
    from ..api import check_quantize
    from ..errors import UsageError

    check_quantize(quantize)
    targets, unmatched = expand_run_dirs(run_dirs)
    if len(run_dirs) == 1 and unmatched:
        raise UsageError(f"no run folder matches {unmatched[0]}")
    failed = [f"no run folder matches {pattern}" for pattern in unmatched]
    for line in failed:
        print(f"mura-ens: error: {line}", file=sys.stderr)
    for run_dir in targets:
        try:
            _export_one(run_dir, quantize=quantize, calibration_images=calibration_images, data=data, reexport=reexport)
        except Exception as exc:  # one line for this run; the others are still done (exit 2 at the end)
            one_run = len(targets) == 1 and not unmatched
            if (one_run and isinstance(exc, (UsageError, RunFailed))) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise  # one run: the usual one-line error (main prints it)
            text = str(exc) if isinstance(exc, (UsageError, RunFailed)) else f"{type(exc).__name__}: {exc}"
            text = " ".join(text.split())
            message = text if str(run_dir) in text else f"{run_dir}: {text}"
            print(f"mura-ens: error: {message}", file=sys.stderr)
            failed.append(message)
    if failed:
        raise typer.Exit(2)


def _export_one(run_dir: Path, *, quantize: str | None, calibration_images: int, data: Path | None, reexport: bool):
    """Export and/or quantize one run with :func:`mura_ens.export`, printing a line after each step."""
    from ..api import export
    from ..run_folder import MODEL_FILE

    if quantize is None or reexport or not (run_dir / MODEL_FILE).exists():
        typer.echo(_export_line(export(run_dir).onnx))
    if quantize is not None:
        typer.echo(
            _int8_line(export(run_dir, quantize=quantize, calibration_images=calibration_images, data=data).int8)
        )


def expand_run_dirs(patterns: list[Path]) -> tuple[list[Path], list[str]]:
    """The run folders the arguments name, in order, each once; and the globs that matched no folder.

    An argument that exists, or has no glob character (``*``, ``?``, ``[``), is
    taken as it is (a missing folder is reported by the export); otherwise its
    matching folders are taken in sorted order (hidden ones, such as a run
    still being built, are never matched).
    """
    found: dict[Path, None] = {}
    unmatched = []
    for pattern in patterns:
        text = os.fspath(pattern)
        if pattern.exists() or not any(char in text for char in "*?["):
            found.setdefault(pattern)
            continue
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)) if Path(p).is_dir())
        if not matches:
            unmatched.append(text)
        for match in matches:
            found.setdefault(match)
    return list(found), unmatched


def _export_line(exported) -> str:
    """One line about an :class:`~mura_ens.training.export.ExportedRun`."""
    meta = exported.metadata
    explain = exported.export.get("explain") or {}
    heatmaps = (
        f"heatmaps {explain.get('method')} from {explain.get('feature_layer')}"
        if explain.get("written")
        else f"no heatmaps: {explain.get('reason')}"
    )
    return (
        f"{exported.path}  (plugin {meta.plugin}, body parts {','.join(meta.body_parts) or 'all'}, "
        f"input {meta.input_size} px, ONNX vs Keras max |diff| {exported.onnx_max_abs_diff:.2g}; {heatmaps})"
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
