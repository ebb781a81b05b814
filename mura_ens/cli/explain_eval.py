"""`mura-ens explain-eval`: how well a scored run's heatmaps point at ground-truth findings."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app


@app.command("explain-eval")
def explain_eval_command(
    scored_dir: Path = typer.Argument(
        ..., metavar="SCORED_DIR", help="The --out of `mura-ens score --explain all`.", show_default=False
    ),
    findings: Path = typer.Option(
        ...,
        "--findings",
        metavar="CSV",
        help="Ground-truth boxes: path, kind, x0, y0, x1, y1 (stored image pixels, inclusive).",
        show_default=False,
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write the JSON [default: SCORED_DIR/explain_eval.json].", show_default=False
    ),
) -> None:
    """Pointing game (map maximum inside a finding's box grown by 15 px), energy share inside the boxes and
    their random baselines, per model and for the ensemble, with 95% intervals resampling patients."""
    from ..explain.evaluate import explain_eval, table_rows

    result = explain_eval(scored_dir, findings, out)
    typer.echo(f"{'maps':<32} {'images':>6}  {'pointing game':<22} {'random':<22} {'energy share':<22} random")
    for row in table_rows(result):
        typer.echo(
            f"{row['maps']:<32} {row['images']:>6}  {row['pointing_game']:<22} {row['pointing_baseline']:<22} "
            f"{row['energy_share']:<22} {row['energy_baseline']}"
        )
    typer.echo(f"wrote {result['path']}")
