"""``compare.html`` and the curve PNGs of a :class:`~mura_ens.compare.table.Comparison`, written atomically.

One self-contained page in ``report.html``'s style (its CSS; figures as
base64 PNGs): the runs, the parameters that differ, the training curves
overlaid, the test metrics side by side (study and image level, overall and per
body part, with the bootstrap intervals; the best value of each column in bold)
and the folders skipped. Every metric shown is read from the comparison, which
holds each run's ``evaluation.json`` as it is.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_text, make_output_dir
from ..metrics import format_metric
from ..report import _CSS as REPORT_CSS  # one house style for report.html and compare.html
from .figures import curve_png
from .table import COMPARED_METRICS, CURVE_METRICS, MISSING, Comparison, best_value

COMPARE_FILE = "compare.html"
#: ``curves_<metric>.png`` for each of :data:`~mura_ens.compare.table.CURVE_METRICS`.
CURVE_FILES: Mapping[str, str] = {metric: f"curves_{metric}.png" for metric in CURVE_METRICS}
_HEADERS = {"kappa": "kappa", "auc": "AUC", "accuracy": "accuracy"}

_CSS = (
    REPORT_CSS
    + """
td.best, td .best { font-weight: 700; }
td.num span.ci { display: block; color: var(--muted); font-size: 12px; font-weight: 400; }
table.wide { font-size: 13px; }
td.param { overflow-wrap: anywhere; max-width: 16em; }
table.wide td, table.wide th { overflow-wrap: normal; word-break: normal; }
table.wide td.param { overflow-wrap: anywhere; }
td.run { min-width: 8em; }
"""
)


@dataclass(frozen=True)
class ComparisonFiles:
    """What :func:`write_comparison` wrote: the page and one PNG per curve metric."""

    html: Path
    curves: Mapping[str, Path]


def write_comparison(comparison: Comparison, out: str | os.PathLike[str]) -> ComparisonFiles:
    """Write ``compare.html`` and ``curves_{loss,auc,kappa}.png`` into the folder ``out`` (created), atomically."""
    folder = make_output_dir(out, what="compare output folder")
    pngs = {metric: curve_png(comparison, metric) for metric in CURVE_METRICS}
    curves = {metric: atomic_write_bytes(folder / CURVE_FILES[metric], data) for metric, data in pngs.items()}
    page = atomic_write_text(folder / COMPARE_FILE, render_comparison(comparison, pngs))
    return ComparisonFiles(html=page, curves=curves)


def render_comparison(comparison: Comparison, pngs: Mapping[str, bytes]) -> str:
    """The page's HTML text; ``pngs``: curve metric -> PNG bytes (:func:`~mura_ens.compare.figures.curve_png`)."""
    title = "mura-ens run comparison"
    sections = [
        _header(title, comparison),
        "".join(f'<p class="note">{_e(note)}</p>' for note in comparison.notes),
        _runs_section(comparison),
        _parameters_section(comparison),
        _curves_section(pngs),
        _metrics_section(comparison),
        _skipped_section(comparison),
    ]
    body = "\n".join(section for section in sections if section)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _header(title: str, comparison: Comparison) -> str:
    facts = [
        ("Date", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")),
        ("Runs", f"{len(comparison.names)}: " + ", ".join(comparison.names)),
        ("Metric", f"{_HEADERS[comparison.metric]} (shown first; best value per column in bold)"),
    ]
    if comparison.skipped:
        facts.append(("Skipped", f"{len(comparison.skipped)} path(s), listed at the end"))
    grid = "".join(f"<div>{_e(k)}</div><div>{_e(v)}</div>" for k, v in facts)
    return f'<header><h1>{_e(title)}</h1><div class="header-grid">{grid}</div></header>'


def _peer_best(comparison: Comparison, values: Mapping[str, float], column: str) -> set[str]:
    """The runs whose value is the best among the runs validated and tested on the same body parts as they are
    (groups of two runs or more): a specialist's loss or overall kappa is not comparable with a generalist's."""
    parts = comparison.overview["body_parts"].astype(str)
    best: set[str] = set()
    for _, group in parts.groupby(parts, sort=False):
        names = [n for n in group.index if n in values]
        if len(names) < 2:
            continue
        top = best_value([values[n] for n in names], column)
        best |= {n for n in names if _same(float(values[n]), top)}
    return best


def _overall_peers(comparison: Comparison, level: str, metric: str) -> set[str]:
    """The runs whose overall ``metric`` is the best among the runs on the same body parts (:func:`_peer_best`)."""
    values = {n: float(c[metric]) for n in comparison.names if (c := comparison.cell(n, level, "overall")) is not None}
    return _peer_best(comparison, values, metric)


def _runs_section(comparison: Comparison) -> str:
    overview = comparison.overview
    best_loss = _peer_best(comparison, {str(n): float(v) for n, v in overview["best_val_loss"].items()}, "loss")
    head = ["run", "plugin", "body parts", "input", "epochs", "best epoch", "best val loss", "evaluated on", "folder"]
    rows = []
    for name, row in overview.iterrows():
        loss = float(row["best_val_loss"])
        rows.append(
            [
                _name_td(name),
                _td(row["plugin"]),
                _td(row["body_parts"]),
                _td(f"{row['input_size']} px", numeric=True),
                _td(_whole(row["epochs_run"]), numeric=True),
                _td(_whole(row["best_epoch"]), numeric=True),
                _td(format_metric(loss, 4), numeric=True, best=name in best_loss),
                _td(row["evaluated_on"] or "n/a"),
                f'<td class="path">{_e(row["path"])}</td>',
            ]
        )
    note = (
        '<p class="note">Bold: the lowest validation loss among runs on the same body parts '
        "(a specialist's loss is not comparable with a generalist's).</p>"
    )
    return '<h2 id="runs">Runs</h2>' + note + _table(head, rows, numeric=(3, 4, 5, 6))


def _parameters_section(comparison: Comparison) -> str:
    parameters = comparison.parameters
    out = ['<h2 id="parameters">Parameters that differ</h2>']
    if len(comparison.names) < 2:
        return out[0] + '<p class="note">One run: nothing to compare.</p>'
    if parameters.columns.empty:
        return out[0] + '<p class="note">None: the runs share every parameter (card.json config).</p>'
    out.append(
        '<p class="note">From each card.json: plugin, its <code>params.*</code> (--param), input size and '
        f"training settings; <code>data</code> = the manifest's sha256. {_e(MISSING)}: the run has no such "
        "parameter (another plugin). Every other parameter is the same in all runs.</p>"
    )
    # One row per parameter: a handful of runs side by side stays readable however many parameters differ.
    head = ["parameter", *parameters.index]
    rows = [
        [
            f"<td><code>{_e(key)}</code></td>",
            *(f'<td class="param">{_breakable(value, "/,")}</td>' for value in parameters[key]),
        ]
        for key in parameters.columns
    ]
    return "".join(out) + _table(head, rows, css_class="wide", numeric=())


def _curves_section(pngs: Mapping[str, bytes]) -> str:
    figures = [
        f'<figure><img alt="{_e(metric)} per epoch, every run" '
        f'src="data:image/png;base64,{base64.b64encode(pngs[metric]).decode("ascii")}"></figure>'
        for metric in CURVE_METRICS
        if metric in pngs
    ]
    note = (
        "One colour per run; validation solid, train dashed. Training metrics are those of the epoch's batches "
        "(augmented), validation metrics those of the held-out validation fold."
    )
    return f'<h2 id="curves">Training curves</h2><p class="note">{_e(note)}</p>' + "".join(figures)


def _metrics_section(comparison: Comparison) -> str:
    out = ['<h2 id="metrics">Test metrics</h2>', f'<p class="note">{_e(_metrics_note(comparison))}</p>']
    for level in ("study", "image"):
        groups = comparison.groups(level)
        if not groups:
            continue
        out.append(f"<h3>{level.capitalize()} level</h3>")
        if "overall" in groups:
            out.append(_overall_table(comparison, level))
        for index, metric in enumerate(_metric_order(comparison.metric)):
            table = _by_part_table(comparison, level, metric, groups)
            summary = f"{level.capitalize()} {_HEADERS[metric]} by body part"
            out.append(
                f"<h4>{_e(summary)}</h4>{table}"
                if index == 0
                else f"<details><summary>{_e(summary)}</summary>{table}</details>"
            )
    if len(out) == 2:
        out.append('<p class="note">No run has an evaluation.json with metrics.</p>')
    return "\n".join(out)


def _metrics_note(comparison: Comparison) -> str:
    boot = next((b for b in map(_bootstrap, comparison.runs) if b), {})
    ci = 100 * float(boot.get("ci", 0.95))
    resamples = f", {int(boot['n_resamples']):,} resamples" if "n_resamples" in boot else ""
    return (
        "Each run's evaluation.json (its test fold, MURA valid; else its validation fold: see 'evaluated on'). "
        f"Brackets: {ci:g}% bootstrap interval{resamples}. Bold: the best value of a column among the runs "
        "(kappa, AUC, accuracy; none when fewer than two runs have a value); in the overall rows, among the runs "
        "on the same body parts only. n/a: undefined (one class), "
        f"{MISSING}: the run has no studies of that body part."
    )


def _overall_table(comparison: Comparison, level: str) -> str:
    head = ["run", "n", "abnormal", "kappa [CI]", "AUC [CI]", "accuracy", "sensitivity", "specificity"]
    rows = []
    peers = {metric: _overall_peers(comparison, level, metric) for metric in ("kappa", "auc", "accuracy")}
    for name in comparison.names:
        cell = comparison.cell(name, level, "overall")
        if cell is None:
            rows.append([_name_td(name), *(_td(MISSING, numeric=True) for _ in head[1:])])
            continue
        rows.append(
            [
                _name_td(name),
                _td(int(cell["n"]), numeric=True),
                _td(int(cell["n_positive"]), numeric=True),
                *(
                    _metric_td(comparison, cell, metric, best=name in peers[metric])
                    for metric in ("kappa", "auc", "accuracy")
                ),
                _td(format_metric(float(cell["sensitivity"])), numeric=True),
                _td(format_metric(float(cell["specificity"])), numeric=True),
            ]
        )
    return _table(head, rows, caption=f"{level.capitalize()} level, overall")


def _by_part_table(comparison: Comparison, level: str, metric: str, groups: Sequence[str]) -> str:
    head = ["run", *(_group_header(comparison, level, group) for group in groups)]
    rows = []
    overall = _overall_peers(comparison, level, metric)
    for name in comparison.names:
        cells = [_name_td(name)]
        for group in groups:
            cell = comparison.cell(name, level, group)
            if cell is None:
                cells.append(_td(MISSING, numeric=True))
                continue
            # A body part's studies are the same for every run; "overall" is comparable only among peers.
            best = name in overall if group == "overall" else comparison.is_best(level, group, metric, cell[metric])
            cells.append(_metric_td(comparison, cell, metric, best=best))
        rows.append(cells)
    return _table(head, rows, css_class="wide")


def _group_header(comparison: Comparison, level: str, group: str) -> str:
    """``XR_WRIST (n 12)`` when every run has the same n there, else the group alone."""
    counts = {int(cell["n"]) for name in comparison.names if (cell := comparison.cell(name, level, group)) is not None}
    return f"{group} (n {counts.pop()})" if len(counts) == 1 else group


def _metric_td(comparison: Comparison, cell: Any, metric: str, *, best: bool) -> str:
    value = float(cell[metric])
    text = _e(format_metric(value))
    if metric in ("kappa", "auc"):
        lo, hi = float(cell[f"{metric}_lo"]), float(cell[f"{metric}_hi"])
        if not (math.isnan(value) or math.isnan(lo) or math.isnan(hi)):
            text += f'<span class="ci">[{lo:.3f}, {hi:.3f}]</span>'
    return f'<td class="num{" best" if best else ""}">{text}</td>'


def _skipped_section(comparison: Comparison) -> str:
    if not comparison.skipped:
        return ""
    rows = [[f'<td class="path">{_e(s.path)}</td>', _td(s.reason)] for s in comparison.skipped]
    return '<h2 id="skipped">Skipped</h2>' + _table(["path", "why"], rows, numeric=())


def _metric_order(metric: str) -> list[str]:
    return [metric, *(m for m in COMPARED_METRICS if m != metric)]


def _bootstrap(run: Any) -> Mapping[str, Any]:
    metrics = run.card.get("metrics") or {}
    return (metrics.get(run.evaluated_on or "test") or {}).get("bootstrap") or {}


def _same(value: float, best: float) -> bool:
    return not (math.isnan(value) or math.isnan(best)) and math.isclose(value, best, rel_tol=0.0, abs_tol=1e-12)


def _whole(value: Any) -> str:
    """A count for display (a column with a missing value holds floats); ``n/a`` when missing."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(number) else str(int(number))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _breakable(text: Any, after: str = "-") -> str:
    """Escaped ``text`` that may wrap after each of the characters ``after``: parameter-derived run names break
    between their parts (``custom_cnn-64-f16-c5-e15-wc-aug``), paths after a ``/``, never inside a part."""
    out = _e(text)
    for char in after:
        out = out.replace(char, f"{char}<wbr>")
    return out


def _name_td(name: Any) -> str:
    return f'<td class="run">{_breakable(name)}</td>'


def _td(value: Any, *, numeric: bool = False, best: bool = False) -> str:
    classes = " ".join(c for c, on in (("num", numeric), ("best", best)) if on)
    return f'<td class="{classes}">{_e(value)}</td>' if classes else f"<td>{_e(value)}</td>"


def _table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    caption: str = "",
    css_class: str = "",
    numeric: Collection[int] | None = None,
) -> str:
    """A table whose cells are already ``<td>`` HTML (so the best ones can carry their class).

    ``numeric``: the columns whose headers are right-aligned, over numbers (default: all but the first).
    """
    parts = [f'<table class="{css_class}">' if css_class else "<table>"]
    if caption:
        parts.append(f"<caption>{_e(caption)}</caption>")
    right = set(range(1, len(head))) if numeric is None else set(numeric)
    parts.append(
        "<tr>"
        + "".join(f"<th{' class=num' if i in right else ''}>{_breakable(h)}</th>" for i, h in enumerate(head))
        + "</tr>"
    )
    parts.extend("<tr>" + "".join(row) + "</tr>" for row in rows)
    parts.append("</table>")
    return "".join(parts)
