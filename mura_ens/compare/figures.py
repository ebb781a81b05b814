"""The training curves of compared runs overlaid: one figure per metric (loss, AUC, kappa).

Train dashed, validation solid, one colour per run, the legend by run name.
Drawn on matplotlib's Agg canvas without pyplot (no global backend touched).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from .table import Comparison

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Titles of the curve figures.
CURVE_TITLES = {
    "loss": "Loss (as trained: class-weighted BCE when class weights are on)",
    "auc": "ROC AUC",
    "kappa": "Cohen's kappa",
}


def run_colours(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct colours: tab10 up to 10 runs, tab20 up to 20, then tab20 again."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if n <= 10 else "tab20"]
    size = 10 if n <= 10 else 20
    return [palette(i % size) for i in range(n)]


def curve_figure(comparison: Comparison, metric: str) -> Figure:
    """``metric`` per epoch for every run of ``comparison``: train dashed, validation solid; legend by run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9.5, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    curves = comparison.curves[comparison.curves["metric"] == metric]
    for name, colour in zip(comparison.names, run_colours(len(comparison.names))):
        rows = curves[curves["run"] == name]
        for fold, style in (("train", "--"), ("val", "-")):
            points = rows[rows["fold"] == fold].sort_values("epoch")
            axes.plot(
                points["epoch"],
                points["value"],
                linestyle=style,
                marker="o",
                markersize=3.5,
                color=colour,
                label=name if fold == "val" else None,
            )
    axes.set_title(CURVE_TITLES.get(metric, metric), loc="left", fontsize=11)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    # Outside the axes, and counted by the constrained layout, so long run names are never cut.
    figure.legend(title="run", loc="outside right upper", fontsize=8, frameon=False, alignment="left")
    styles = [Line2D([], [], color="0.3", linestyle="-"), Line2D([], [], color="0.3", linestyle="--")]
    figure.legend(styles, ["validation", "train"], loc="outside right lower", fontsize=8, frameon=False)
    return figure


def curve_png(comparison: Comparison, metric: str) -> bytes:
    """:func:`curve_figure` as PNG bytes."""
    buffer = io.BytesIO()
    curve_figure(comparison, metric).savefig(buffer, format="png")
    return buffer.getvalue()
