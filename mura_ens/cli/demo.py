"""`mura-ens demo`: the whole pipeline on synthetic data (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._app import app


@app.command("demo")
def demo_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for data, runs and results (rebuilt on rerun).")
    ] = Path("demo-out"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller data and models, 1-2 epochs: under 2 minutes.")
    ] = False,
    seed: Annotated[int, typer.Option(metavar="K", help="Seed of the synthetic data and of training.")] = 0,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Scoring progress bar (default: only on a terminal)."),
    ] = None,
) -> None:
    """Synthetic MURA -> custom_cnn + warm-started specialists -> ONNX -> fit an ensemble on the held-out
    fold -> score the valid split (plain and fitted) -> one comparison table, report.html."""
    import time

    from rich.console import Console

    from ..demo import run_demo

    started = time.perf_counter()
    from ..training.checks import training_warnings_as_lines

    with training_warnings_as_lines():  # the runs' warnings as "mura-ens: warning: ..." lines, as in `train`
        result = run_demo(out, quick=quick, seed=seed, progress=progress)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough for the comparison table
        console = Console(width=max(console.width, 100))
    _print_fit(result.fitted, result.heldout, console)
    print_comparison(result.comparison, console)
    print_localisation(result.explain_eval)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"demo finished in {time.perf_counter() - started:.0f} s ({steps})")
    print(f"open {result.results / 'report.html'} (fitted ensemble; plain mean: {result.out / 'results_body_part'})")


def print_localisation(evaluation: Any) -> None:
    """The heatmaps' pointing game on valid against the ground-truth findings: the ensemble, then each model."""
    if not evaluation:
        print("heatmaps: no findings.csv in the synthetic data, localisation not measured")
        return
    sources = evaluation["sources"]
    grow = evaluation["grow_px"]
    for name in ["ensemble", *sorted(n for n in sources if n != "ensemble")]:
        entry = sources[name]
        hit, base = entry["pointing_game"], entry["pointing_baseline"]
        low, high = hit["ci95"]
        ratio = f"{hit['mean'] / base['mean']:.1f}x" if base["mean"] > 0 else "n/a"
        print(
            f"heatmaps {name}: pointing game {hit['mean']:.3f} [{low:.3f}, {high:.3f}] vs random {base['mean']:.3f} "
            f"({ratio}; box grown by {grow} px), energy share {entry['energy_share']['mean']:.3f} vs "
            f"{entry['energy_baseline']['mean']:.3f}, {entry['images']} images with a finding on valid"
        )


def _print_fit(fitted: Any, heldout: Any, console: Any) -> None:
    """What was fitted on the held-out fold: one row per body part, and the notes."""
    from rich.table import Table

    from ..fitting.summary import summary_rows

    n = int((heldout.studies["status"] == "ok").sum())
    rows = summary_rows(fitted)
    table = Table(title=f"Ensemble fitted on the runs' held-out validation fold ({n} studies)")
    columns = [c for c in rows[0] if c != "notes"]
    for column in columns:
        table.add_column(column, no_wrap=column in ("part", "threshold"))
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    console.print(table)
    for row in rows:
        if row["notes"] and row["part"] != "other":
            print(f"{row['part']}: {row['notes']}")


def print_comparison(comparison: Any, console: Any) -> None:
    """The demo's table: study kappa and AUC per body part and overall for every model and both ensembles."""
    from rich import box
    from rich.table import Table

    from ..metrics import format_metric

    table = Table(title="Valid split (never seen by training or the fit): study-level kappa / AUC", box=box.SIMPLE)
    table.add_column("body part", no_wrap=True)
    table.add_column("n", justify="right")
    for column in comparison.columns:
        table.add_column(f"{column}\nkappa", justify="right")
        table.add_column("\nAUC", justify="right")
    for group, row in comparison.rows.items():
        n = row["fitted"].n or max(cell.n for cell in row.values())
        cells = []
        for column in comparison.columns:
            cells += [format_metric(row[column].kappa, missing="-"), format_metric(row[column].auc, missing="-")]
        table.add_row(group, str(n), *cells, end_section=group == "overall")
    console.print(table)
    print(
        f"models at threshold {comparison.threshold:g}; specialist = each study by its own part's specialist; "
        "fitted = weights and per-part thresholds fitted on the held-out fold"
    )
    verdict = comparison.verdict()
    print(
        f"fitted ensemble overall study kappa {format_metric(verdict['fitted'])} vs best single model "
        f"({verdict['best_single']}) {format_metric(verdict['best_single_kappa'])} and plain mean "
        f"{format_metric(verdict['plain_mean'])}: "
        + ("holds" if verdict["holds"] else "does NOT hold")
        + " (goal: >= best single - 0.01 and >= plain mean)"
    )
