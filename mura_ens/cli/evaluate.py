"""`mura-ens evaluate`: recompute metrics from a studies.csv or images.csv that has labels."""

from __future__ import annotations

from pathlib import Path

import typer

# The file-level evaluation lives in mura_ens.predictions (shared with the Python API, mura_ens.evaluate,
# which the command calls); its names stay importable from here.
from ..predictions import DuplicateRowsWarning, drop_duplicate_rows, evaluate_file, fitted_thresholds  # noqa: F401
from ._app import app


@app.command("evaluate")
def evaluate_command(
    predictions: Path = typer.Argument(
        ...,
        metavar="PREDICTIONS.csv",
        help="studies.csv or images.csv with study, body_part, label and a probability column.",
        show_default=False,
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", "-t", help="Predict abnormal when prob > threshold.  [default: 0.5]", show_default=False
    ),
    ensemble_file: Path | None = typer.Option(
        None,
        "--ensemble-file",
        metavar="FILE",
        help="Predict with this fitted ensemble's per-part thresholds (a `score --ensemble fitted` output), not --threshold.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Where to write metrics.json [default: beside PREDICTIONS.csv]; never onto an input.",
        show_default=False,
    ),
    prob_column: str = typer.Option("prob", "--prob-column", help="Probability column, e.g. prob__<model>."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals (0 = none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
) -> None:
    """Kappa, ROC AUC, accuracy, sensitivity, specificity per body part from labelled predictions.

    Writes metrics.json beside PREDICTIONS.csv (-o to choose), in the structure `score` writes: for the
    ensemble column `prob` of a scoring run's studies.csv, also the image level (from the images.csv beside
    it), each model's section (its prob__<model> column) and, with --ensemble-file, the plain body_part
    mean under baselines.
    """
    import warnings

    from rich.console import Console

    from ..api import evaluate
    from ..io import atomic_write_json, check_output_file, refuse_input_as_output
    from ..metrics import BootstrapSettings, UndefinedMetricWarning, fold_undefined_warnings, format_metrics_table
    from ..predictions import IMAGES_FILE, MODELS_FILE

    console = Console()
    out = predictions.parent / "metrics.json" if out is None else out
    beside = (predictions.parent / IMAGES_FILE, predictions.parent / MODELS_FILE)
    refuse_input_as_output([out], [predictions, ensemble_file, *beside], what="--out")
    check_output_file(out, what="--out")  # before any work: a path that cannot be written is one line
    settings = BootstrapSettings(n_resamples=bootstrap, seed=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        with fold_undefined_warnings():  # one line for all one-class groups, as `score` says it
            metrics = evaluate(
                predictions,
                threshold=threshold,
                ensemble_file=ensemble_file,
                prob_column=prob_column,
                bootstrap=settings,
            )
    rule = "per-part thresholds" if ensemble_file is not None else f"> {0.5 if threshold is None else threshold:g}"
    for level in ("study", "image"):
        if level in metrics:
            title = f"{level.capitalize()}-level metrics ({prob_column} {rule})"
            console.print(format_metrics_table(metrics[level], title=title))
    for note in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)):
        typer.echo(f"mura-ens: warning: {note}", err=True)
    for w in caught:
        if not issubclass(w.category, UndefinedMetricWarning):
            typer.echo(f"mura-ens: warning: {w.message}", err=True)
    atomic_write_json(out, metrics)
    typer.echo(f"wrote {out}")
