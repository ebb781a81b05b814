"""`mura-ens export RUN_DIR`: re-export a run folder's best.keras to model.onnx (with the parity check)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A run folder written by 'mura-ens train' (holds best.keras and card.json)."),
) -> None:
    """Convert RUN_DIR/best.keras to RUN_DIR/model.onnx with its metadata, after checking ONNX vs Keras parity."""
    from ..training.export import export_run, read_onnx_metadata

    path = export_run(run_dir)
    import json

    card = json.loads((Path(run_dir) / "card.json").read_text(encoding="utf-8"))
    meta = read_onnx_metadata(path)
    typer.echo(
        f"{path}  (plugin {meta.get('plugin')}, body parts {meta.get('body_parts') or 'all'}, "
        f"input {meta.get('input_size')} px, ONNX vs Keras max |diff| {card['onnx_max_abs_diff']:.2g})"
    )
