"""`mura-ens fit-ensemble`: fit per-body-part weights, calibrators and thresholds on a labelled `score` output.

A thin wrapper over :func:`mura_ens.fit_ensemble` (:func:`mura_ens.fitting.fit_scored_dir`); heavy imports
happen inside the command so that ``mura-ens --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from ._app import app


def _shrinkage(value: str) -> float | None:
    """``auto`` -> None (empirical Bayes), else a number."""
    if value.strip().lower() == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"--threshold-shrinkage must be auto or a number >= 0, got {value!r}") from None


@app.command("fit-ensemble")
def fit_ensemble_command(
    scored_dir: Annotated[
        Path,
        typer.Argument(
            metavar="SCORED_DIR", help="--out folder of `mura-ens score` on a labelled set not used for training."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="Where to write the ensemble.")] = Path(
        "ensemble.json"
    ),
    models: Annotated[
        Path | None,
        typer.Option("--models", metavar="DIR", help="The models SCORED_DIR was scored with (for their sha256)."),
    ] = None,
    model: Annotated[
        list[Path] | None, typer.Option("--model", metavar="FILE", help="One of those models (repeatable).")
    ] = None,
    calibrate: Annotated[
        str, typer.Option(metavar="none|platt|isotonic", help="Probability calibration per body part.")
    ] = "none",
    threshold_rule: Annotated[
        str,
        typer.Option(metavar="kappa|youden|fixed", help="How each part's decision threshold is chosen."),
    ] = "kappa",
    threshold: Annotated[float, typer.Option(metavar="P", help="The threshold of --threshold-rule fixed.")] = 0.5,
    shrinkage: Annotated[
        float, typer.Option(metavar="K", help="Weights shrink toward the plain mean by n/(n+K) (0 = none).")
    ] = 10.0,
    threshold_shrinkage: Annotated[
        str,
        typer.Option(
            metavar="auto|K",
            help="Thresholds shrink toward the global one: auto = empirical Bayes, K = by n/(n+K).",
        ),
    ] = "auto",
    min_studies: Annotated[
        int, typer.Option(metavar="N", help="A part with fewer labelled studies keeps the plain mean.")
    ] = 10,
    folds: Annotated[int, typer.Option(metavar="K", help="Patient-grouped cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the folds and bootstrap.")] = 0,
) -> None:
    """Fit per body part: member weights, an optional calibrator and a decision threshold; write ensemble.json."""
    from ..api import fit_ensemble
    from ..io import check_output_file

    if not out.is_dir():  # a folder has its own message; below a file, /proc, no permission: one line, before fitting
        check_output_file(out, what="--out")
    fitted = fit_ensemble(
        scored_dir,
        out,
        models=models,
        model=model,
        calibrate=calibrate,
        threshold_rule=threshold_rule,
        threshold=threshold,
        shrinkage=shrinkage,
        threshold_shrinkage=_shrinkage(threshold_shrinkage),
        min_studies=min_studies,
        folds=folds,
        seed=seed,
    )
    _print_summary(fitted)
    typer.echo(f"wrote {out}")


def _print_summary(fitted: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..fitting.summary import summary_rows

    rows = summary_rows(fitted)
    settings = fitted.settings
    title = f"Fitted ensemble: {settings.threshold_rule} thresholds, calibration {settings.calibrate}"
    table = Table(title=title)
    columns = [c for c in rows[0] if c != "notes"]
    for column in columns:
        table.add_column(column, no_wrap=column in ("part", "threshold"))
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    Console().print(table)
    for row in rows:
        if row["notes"]:
            typer.echo(f"{row['part']}: {row['notes']}")
    for note in fitted.notes:
        typer.echo(f"note: {note}")
