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
        typer.Option(
            "--models",
            metavar="DIR",
            help="Cross-check: the models SCORED_DIR was scored with (members and sha256 come from its models.json).",
        ),
    ] = None,
    model: Annotated[
        list[Path] | None,
        typer.Option("--model", metavar="FILE", help="Cross-check one of those models (repeatable)."),
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
    oof: Annotated[
        Path | None,
        typer.Option(
            "--oof",
            metavar="FILE",
            help="Also write the fitting studies' out-of-fold prob and pred of what each part uses "
            "(the table's CV columns are computed from them), as a CSV.",
        ),
    ] = None,
) -> None:
    """Fit per body part: member weights, an optional calibrator and a decision threshold; write ensemble.json."""
    from ..api import fit_ensemble

    _check_outputs(out, oof)
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
    if oof is not None and fitted.out_of_fold is not None:
        from ..io import atomic_write_csv

        typer.echo(f"wrote {atomic_write_csv(oof, fitted.out_of_fold)}")


def _check_outputs(out: Path, oof: Path | None) -> None:
    """Before fitting: ``--out`` and ``--oof`` writable files (one line each otherwise), not the same file."""
    from ..io import check_output_file

    if not out.is_dir():  # a folder has its own message; below a file, /proc, no permission: one line, before fitting
        check_output_file(out, what="--out")
    if oof is not None:
        if oof.is_dir() or oof.resolve() == out.resolve():
            raise UsageError(f"--oof must be a file other than --out, got {oof}")
        check_output_file(oof, what="--oof")


def _print_summary(fitted: Any) -> None:
    """The table of what each part uses, then the notes (one short sentence each: rejected candidates, why)."""
    from rich.console import Console
    from rich.table import Table

    from ..fitting.summary import COLUMNS, summary_rows

    rows = summary_rows(fitted)
    settings = fitted.settings
    scored = f"precision {fitted.precision or 'unknown'}, TTA {fitted.tta or 'unknown'}"
    title = f"Fitted ensemble: {settings.threshold_rule} thresholds, calibration {settings.calibrate}, {scored}"
    table = Table(title=title, caption="kappa and log loss: the plain mean vs what each part uses, cross-validated")
    for column in COLUMNS:
        table.add_column(column, no_wrap=column in ("part", "threshold", "status"))
    for row in rows:
        table.add_row(*(row[c] for c in COLUMNS))
    Console().print(table)
    typer.echo("notes:")
    for row in rows[:-1]:
        typer.echo(f"  {row['part']}: {row['notes']}")
    for note in fitted.notes:
        typer.echo(f"  {note}")
