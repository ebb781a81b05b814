"""`mura-ens evaluate`: recompute metrics from a studies.csv or images.csv that has labels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import UsageError
from ._app import app

if TYPE_CHECKING:  # metrics imports scikit-learn: only inside the command
    from ..metrics import BootstrapSettings, PartThresholds

#: Columns read as text whatever they look like (ids such as "00012" stay intact).
_TEXT_COLUMNS = ("path", "study", "patient", "body_part", "status", "error", "split")


def evaluate_file(
    path: str | Path,
    *,
    threshold: float | PartThresholds = 0.5,
    prob_column: str = "prob",
    bootstrap: BootstrapSettings | None = None,
) -> dict[str, Any]:
    """Metrics (the ``metrics.json`` structure) of a predictions CSV.

    The CSV needs ``study``, ``body_part``, ``label`` and ``prob_column``.
    With a ``path`` column its rows are images (``images.csv``): image rows
    whose ``status`` is not ``ok`` are unscored, and studies get the mean of
    their image probabilities. Otherwise its rows are studies
    (``studies.csv``); studies with an empty probability are excluded.
    ``bootstrap`` defaults to :data:`mura_ens.metrics.DEFAULT_BOOTSTRAP`;
    ``threshold`` may be a fitted ensemble's per-part thresholds
    (:func:`fitted_thresholds`).
    See :func:`mura_ens.metrics.evaluate_predictions`.

    Raises
    ------
    UsageError
        Missing or unreadable file, missing columns, bad labels or probabilities.
    """
    import pandas as pd

    from ..metrics import DEFAULT_BOOTSTRAP, evaluate_predictions

    path = Path(path)
    if not path.exists():
        raise UsageError(f"predictions file not found: {path}")
    if not path.is_file():
        raise UsageError(f"predictions path is not a file: {path}")
    try:
        frame = pd.read_csv(path, dtype={c: "string" for c in _TEXT_COLUMNS})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot read predictions file {path}: {reason}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    try:
        return evaluate_predictions(
            frame, threshold=threshold, prob_col=prob_column, bootstrap=bootstrap or DEFAULT_BOOTSTRAP
        )
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from exc


def fitted_thresholds(ensemble_file: str | Path) -> PartThresholds:
    """The per-part thresholds of an ``ensemble.json`` (what ``score --ensemble fitted`` predicted with)."""
    from ..fitting.ensemble import FittedEnsemble
    from ..metrics import PartThresholds

    fitted = FittedEnsemble.load(ensemble_file)
    return PartThresholds({part: model.threshold for part, model in fitted.parts.items()}, fitted.global_threshold)


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
    out: Path = typer.Option(Path("metrics.json"), "--out", "-o", help="Where to write metrics.json."),
    prob_column: str = typer.Option("prob", "--prob-column", help="Probability column, e.g. prob__<model>."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals (0 = none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
) -> None:
    """Kappa, ROC AUC, accuracy, sensitivity, specificity per body part from labelled predictions."""
    import warnings

    from rich.console import Console

    from ..io import atomic_write_json
    from ..metrics import BootstrapSettings, UndefinedMetricWarning, format_metrics_table

    console = Console()
    settings = BootstrapSettings(n_resamples=bootstrap, seed=seed)
    if ensemble_file is not None and threshold is not None:
        raise UsageError("give --threshold or --ensemble-file, not both")
    cut = fitted_thresholds(ensemble_file) if ensemble_file is not None else (0.5 if threshold is None else threshold)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        metrics = evaluate_file(predictions, threshold=cut, prob_column=prob_column, bootstrap=settings)
    rule = "per-part thresholds" if ensemble_file is not None else f"> {cut:g}"
    for level in ("study", "image"):
        if level in metrics:
            title = f"{level.capitalize()}-level metrics ({prob_column} {rule})"
            console.print(format_metrics_table(metrics[level], title=title))
    for note in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)):
        typer.echo(f"mura-ens: warning: {note}", err=True)
    for w in caught:
        if not issubclass(w.category, UndefinedMetricWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    atomic_write_json(out, metrics)
    typer.echo(f"wrote {out}")
