"""`mura-ens compare RUN_DIR...`: finished runs side by side -> compare.html + curve PNGs, and tables on the terminal.

A thin wrapper over :func:`mura_ens.compare.compare_runs` and :func:`mura_ens.compare.write_comparison`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ._app import app


@app.command("compare")
def compare_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...",
            help="Run folders written by 'mura-ens train', folders holding run folders (e.g. runs), "
            "or globs such as 'runs/densenet201*'.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for compare.html and the curve PNGs.")
    ] = Path("compare-out"),
    metric: Annotated[
        str, typer.Option(metavar="kappa|auc|accuracy", help="Metric shown first (terminal and page).")
    ] = "kappa",
) -> None:
    """Overlay the runs' training curves and put their test metrics and differing parameters side by side.

    Writes OUT/compare.html (self-contained) and OUT/curves_{loss,auc,kappa}.png
    and prints the chosen metric per run and the parameters that differ. A path
    that is not a finished run is named on stderr and skipped; exit code 2 when
    no finished run remains.
    """
    from rich.console import Console

    from ..compare import NoRunToCompare, compare_runs, write_comparison
    from ..io import refuse_input_as_output

    refuse_input_as_output([out], run_dirs)  # the page's folder is never one of the runs it reads
    try:
        comparison = compare_runs(run_dirs, metric=metric)
    except NoRunToCompare as exc:
        _print_skipped(exc.skipped)
        raise
    _print_skipped(comparison.skipped)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough for a few body-part columns
        console = Console(width=max(console.width, 160))
    console.print(metric_table(comparison))
    if len(comparison.names) > 1:
        console.print(parameter_table(comparison))
    for note in comparison.notes:
        print(f"note: {note}")
    files = write_comparison(comparison, out)
    for path in (files.html, *files.curves.values()):
        print(f"wrote {path}")


def _print_skipped(skipped: Any) -> None:
    for folder in skipped:
        print(f"mura-ens: skipped {folder.line()}", file=sys.stderr)


def metric_table(comparison: Any) -> Any:
    """A rich table: per run, the chosen metric overall (study and image, with intervals) and per body part (study)."""
    from rich import box
    from rich.table import Table

    metric = comparison.metric
    parts = [g for g in comparison.groups("study") if g != "overall"]
    evaluated = sorted(set(comparison.overview["evaluated_on"]) - {""}) or ["test"]
    table = Table(
        title=f"{metric} on the {'/'.join(evaluated)} fold per run (best in bold)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("run", overflow="fold")
    table.add_column(f"study {metric} [CI]", justify="right", min_width=13)
    table.add_column(f"image {metric} [CI]", justify="right", min_width=13)
    for part in parts:
        table.add_column(part.removeprefix("XR_").lower(), justify="right")
    for name in comparison.names:
        cells = [_metric_cell(comparison, name, level, "overall") for level in ("study", "image")]
        cells += [_metric_cell(comparison, name, "study", part) for part in parts]
        table.add_row(name, *cells)
    return table


def _metric_cell(comparison: Any, name: str, level: str, group: str) -> str:
    from rich.markup import escape

    from ..compare.table import MISSING
    from ..metrics import format_metric

    cell = comparison.cell(name, level, group)
    if cell is None:
        return MISSING
    value = float(cell[comparison.metric])
    text = format_metric(value)
    if group == "overall" and f"{comparison.metric}_lo" in cell.index and value == value:
        lo, hi = float(cell[f"{comparison.metric}_lo"]), float(cell[f"{comparison.metric}_hi"])
        if lo == lo and hi == hi:
            text += f" [{lo:.3f},{hi:.3f}]"
    text = escape(text)
    return f"[bold]{text}[/bold]" if comparison.is_best(level, group, comparison.metric, value) else text


def parameter_table(comparison: Any) -> Any:
    """A rich table of the parameters that differ: one row per parameter, one column per run."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    parameters = comparison.parameters
    table = Table(title="Parameters that differ", title_justify="left", box=box.SIMPLE_HEAD)
    if parameters.columns.empty:
        table.caption = "none: the runs share every parameter"
    table.add_column("parameter", no_wrap=True)
    for name in parameters.index:
        table.add_column(escape(str(name)), overflow="fold")
    for key in parameters.columns:
        table.add_row(escape(str(key)), *(escape(str(value)) for value in parameters[key]))
    return table
