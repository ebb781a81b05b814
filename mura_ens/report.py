"""``report.html``: one self-contained, print-friendly page describing a scoring run.

Sections: header (input, counts, ensemble, test-time augmentation,
threshold), predictions per body part, a forest plot per body part (study
kappa with its interval for the ensemble, the plain-mean baseline of a
fitted run and every model serving the part), the fitted ensemble's weights,
calibrators and thresholds (``--ensemble fitted``), study- and image-level
metrics tables for the ensemble, baselines and every model, ROC curves and
reliability diagrams per body part, the ensemble's study-level confusion
matrix, the heatmap gallery (``score --explain K``), failed inputs, and provenance (one compact table of the models:
name, file relative to its run's parent, plugin, input size, sha256, training-set sha256; never card.json's
content, which names training images by path, nor any absolute path; library versions, command, input name).

Metric values (tables, forest plots, the AUCs of the ROC legends, the
confusion counts) are read from the ``metrics.json`` structure given, never
recomputed here; only the ROC curves and the reliability diagrams are drawn
from the study rows, and the Brier scores of the reliability legends (mean
squared difference between study probability and label; not in
``metrics.json``) are computed with them.

A fitted run's provenance carries ``fitted_ensemble`` (the ensemble file's
content, :meth:`mura_ens.fitting.FittedEnsemble.to_dict`): it is shown as
its own section, not in the provenance table.

No external assets: CSS is inline and figures are base64 PNGs drawn with
matplotlib's Agg canvas (imported lazily). Without labels the metric, ROC
and confusion sections are replaced by a note; the predictions summary
stays.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .io import atomic_write_text
from .metrics import TABLE_COLUMNS, UNKNOWN_GROUP, confusion_counts, format_metric, metrics_rows

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure

__all__ = ["write_report", "render_report", "reliability_points", "roc_figure", "ENSEMBLE_NAME"]

#: Name of the ensemble in tables and legends.
ENSEMBLE_NAME = "ensemble"

#: Failed inputs listed in full up to this many rows (all are in images.csv).
MAX_FAILED_ROWS = 1000
#: Fewer labelled studies than this get a note instead of reliability diagrams (5 bins would hold 1-2 each).
MIN_CALIBRATION_STUDIES = 10

#: Card fields longer than this (as JSON) are cut in the report (they sit in collapsed <details> blocks).
MAX_CARD_JSON_CHARS = 20000

#: Libraries whose installed versions the report lists (read from metadata, never imported).
REPORTED_DISTRIBUTIONS = (
    "mura-ens",
    "onnxruntime",
    "onnx",
    "numpy",
    "pandas",
    "scikit-learn",
    "pillow",
    "matplotlib",
)

#: How the header describes each ``--tta``.
TTA_TEXT = {
    "none": "none",
    "flip": "flip: each image's probability is the mean over the image and its horizontal mirror",
}

#: Table headers in the report where the terminal table abbreviates.
_LONG_HEADERS = {
    "n_positive": "abnormal",
    "kappa": "kappa [{ci}% CI]",
    "auc": "AUC [{ci}% CI]",
    "accuracy": "accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}

_CSS = """
:root { --ink: #1d2127; --muted: #5b6470; --rule: #d5d9df; --band: #f4f6f8; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); margin: 0 auto; padding: 24px 32px 48px; max-width: 1180px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--ink); }
h3 { font-size: 15px; margin: 20px 0 6px; }
p.note, .muted { color: var(--muted); }
table { border-collapse: collapse; margin: 6px 0 14px; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 2px 0 4px; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--rule); vertical-align: top; }
th { text-align: left; border-bottom: 1.5px solid var(--ink); font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
tr.overall td { font-weight: 600; border-top: 1.5px solid var(--ink); }
table.kv th { border-bottom: 1px solid var(--rule); font-weight: 500; color: var(--muted); }
table.confusion td, table.confusion th { text-align: center; min-width: 90px; }
table.confusion td.hit { background: var(--band); font-weight: 600; }
code, pre { font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px; }
pre { background: var(--band); padding: 8px 10px; overflow-x: auto; white-space: pre-wrap; margin: 4px 0 12px; }
td.path { word-break: break-all; font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px; }
figure { margin: 8px 0 16px; }
.forest { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 4px 24px; }
.forest figure { margin: 0; }
table.fitted { font-size: 13px; }
table.fitted th.num { white-space: normal; min-width: 64px; }
table.fitted td.num:nth-child(4) { white-space: normal; text-align: left; max-width: 460px; }
details { margin: 2px 0 8px; }
details > summary { cursor: pointer; color: var(--muted); }
details[open] > summary { margin-bottom: 4px; }
figure img { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; }
.gallery-study { margin: 14px 0 18px; break-inside: avoid; page-break-inside: avoid; }
.gallery-study h3 { margin: 0 0 2px; word-break: break-all; }
.gallery-study p { margin: 2px 0; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 6px; }
.thumbs figure { margin: 0; max-width: 240px; }
.thumbs img { border: 1px solid var(--rule); display: block; width: auto; height: auto; max-width: 240px; max-height: 200px; }
.thumbs figcaption { font-size: 11px; word-break: break-all; }
.jet { display: inline-block; width: 90px; height: 10px; vertical-align: middle; border: 1px solid var(--rule);
       background: linear-gradient(to right, #00007f, #0000ff, #00ffff, #7fff7f, #ffff00, #ff0000, #7f0000); }
.header-grid { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 10px 0; }
.header-grid div:nth-child(odd) { color: var(--muted); }
.model { break-inside: avoid; page-break-inside: avoid; }
@media print {
  body { padding: 0; max-width: none; font-size: 11px; }
  h2 { break-after: avoid; page-break-after: avoid; }
  table, figure { break-inside: avoid; page-break-inside: avoid; }
  pre { white-space: pre-wrap; }
  details > *:not(summary) { display: block; }
}
"""


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def write_report(out_path: str | Path, **inputs: Any) -> Path:
    """Write ``report.html`` atomically and return its path.

    ``out_path`` is the file to write (its folder is created); ``inputs`` are
    :func:`render_report`'s keywords (``studies``, ``images``, ``metrics``, ``models``,
    ``provenance``, ``failed``, ``title``), passed on unchanged.
    """
    return atomic_write_text(out_path, render_report(**inputs))


def render_report(
    *,
    studies: pd.DataFrame,
    images: pd.DataFrame | None = None,
    metrics: Mapping[str, Any] | None = None,
    models: Sequence[Mapping[str, Any]] = (),
    provenance: Mapping[str, Any] | None = None,
    failed: pd.DataFrame | None = None,
    heatmaps: Mapping[str, Any] | None = None,
    title: str = "mura-ens report",
) -> str:
    """The report's HTML text (:func:`write_report` writes it to a file).

    Parameters
    ----------
    studies : DataFrame
        ``study, patient, body_part, n_images, label, prob__<model>..., prob, pred, status``
        (``label`` may be empty or absent: then no metrics are shown).
    images : DataFrame, optional
        ``path, study, body_part, prob__<model>..., status, error``.
    metrics : dict, optional
        The ``metrics.json`` structure (:func:`mura_ens.metrics.build_metrics`);
        ``metrics["models"][name]`` holds each model's ``study``/``image`` levels.
        Every metric shown comes from here (no AUC and no confusion matrix without it).
    models : list of dict
        One per model: ``name``, ``file`` (relative name), ``plugin``, ``body_parts``, ``input_size``,
        ``resize_policy``, ``threshold``, ``quantization``, ``sha256``, ``training_set_sha256``
        (or ``path`` and ``metadata``, ONNX metadata_props, from which they are read); any ``card`` is ignored.
    provenance : dict, optional
        Free-form run facts (``command``, ``input``, ``ensemble``, ``date``,
        ``versions``, ...), shown as given; ``unknown_body_parts`` (``{folder name:
        studies}``, :func:`mura_ens.data.layout.unknown_parts`) is shown as a note
        under the predictions table instead.
    failed : DataFrame, optional
        Inputs that could not be scored: ``path, study, status, error``.
    heatmaps : dict, optional
        The ``--explain`` gallery (its fields: :func:`_heatmap_section`); None: no section.
    title : str
        The page title.
    """
    provenance = dict(provenance or {})
    fitted = provenance.pop("fitted_ensemble", None)
    unknown = provenance.pop("unknown_body_parts", None)
    metrics = dict(metrics or {})
    images = images if images is not None else pd.DataFrame(columns=["path", "study", "body_part", "status"])
    failed = failed if failed is not None else pd.DataFrame(columns=["path", "study", "status", "error"])
    threshold = float(metrics.get("threshold", provenance.get("threshold", 0.5)))
    model_names = _model_names(models, studies)
    labelled = _labelled_studies(studies)

    sections = [
        _header(title, studies, images, failed, threshold, provenance, model_names),
        _predictions_summary(studies, images, threshold, labelled is not None)
        + _unknown_parts_note(unknown, has_generalist=any(not m.get("body_parts") for m in models)),
    ]
    has_metrics = bool(metrics.get("study") or metrics.get("models"))
    if has_metrics:
        sections.append(_forest_section(metrics, model_names))
    if fitted:
        sections.append(_fitted_section(fitted, metrics))
    if has_metrics:
        sections.append(_metrics_section(metrics, model_names))
    else:
        sections.append(
            '<h2 id="metrics">Metrics</h2><p class="note">No labels in the input: '
            "metrics, ROC curves and the confusion matrix need study labels.</p>"
        )
    if labelled is not None:
        sections.append(_roc_section(labelled, model_names, metrics))
        sections.append(_calibration_section(labelled, model_names, metrics))
        sections.append(_confusion_section(metrics, threshold))
    sections.append(_heatmap_section(heatmaps))
    sections.append(_failed_section(failed))
    sections.append(_provenance_section(models, provenance))
    body = "\n".join(s for s in sections if s)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------


def _header(title, studies, images, failed, threshold, provenance, model_names) -> str:
    # Day only unless the caller gives a date: a resumed run then writes the
    # same report as an uninterrupted one.
    date = provenance.get("date") or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
    n_images = len(images)
    ok_images = int(_is_ok(images).sum()) if n_images else 0
    probs = _numeric(studies, "prob")
    facts: list[tuple[str, str]] = [("Date", str(date))]
    if "input" in provenance:
        facts.append(("Input", str(provenance["input"])))
    facts += [
        ("Images", f"{n_images:,} ({ok_images:,} scored, {n_images - ok_images:,} not scored)"),
        ("Studies", f"{len(studies):,} ({int(np.isfinite(probs).sum()):,} with a probability)"),
        ("Models", ", ".join(model_names) if model_names else "none"),
    ]
    if "ensemble" in provenance:
        ensemble = str(provenance["ensemble"])
        if provenance.get("ensemble_file"):
            sha = str(provenance.get("ensemble_file_sha256", ""))[:12]
            ensemble += f" ({provenance['ensemble_file']}, sha256 {sha})"
        facts.append(("Ensemble", ensemble))
    if "tta" in provenance:
        tta = str(provenance["tta"])
        facts.append(("Test-time augmentation", TTA_TEXT.get(tta, tta)))
    if provenance.get("ensemble_file"):
        facts.append(
            ("Threshold", f"per body part (fitted ensemble); models: abnormal when probability > {threshold:g}")
        )
    else:
        facts.append(("Threshold", f"abnormal when probability > {threshold:g}"))
    grid = "".join(f"<div>{_e(k)}</div><div>{_e(v)}</div>" for k, v in facts)
    return f'<header><h1>{_e(title)}</h1><div class="header-grid">{grid}</div></header>'


def _predictions_summary(studies, images, threshold, has_labels) -> str:
    probs = _numeric(studies, "prob")
    # the run's own predictions (a fitted ensemble's thresholds are per part); else prob > threshold
    preds = _numeric(studies, "pred") if "pred" in studies.columns else (probs > threshold).astype(float)
    parts = _parts(studies)
    image_parts = _parts(images) if len(images) else np.array([], dtype=object)
    image_ok = _is_ok(images).to_numpy() if len(images) else np.array([], dtype=bool)
    labels = _numeric(studies, "label")
    head = ["body part", "studies", "scored", "predicted abnormal", "mean probability", "images", "images not scored"]
    if has_labels:
        head.insert(2, "labelled abnormal")
    rows = []
    for part in sorted(set(parts.tolist()) | set(image_parts.tolist())) + ["overall"]:
        mask = np.ones(len(studies), bool) if part == "overall" else parts == part
        img_mask = np.ones(len(images), bool) if part == "overall" else image_parts == part
        p = probs[mask]
        scored = np.isfinite(p)
        n_abnormal = int(np.sum(preds[mask][scored] == 1))
        cells = [
            part,
            f"{int(mask.sum()):,}",
            f"{int(scored.sum()):,}",
            f"{n_abnormal:,} ({_pct(n_abnormal, int(scored.sum()))})",
            format_metric(float(np.mean(p[scored])) if scored.any() else None),
            f"{int(img_mask.sum()):,}",
            f"{int(np.sum(img_mask & ~image_ok)):,}",
        ]
        if has_labels:
            lab = labels[mask]
            known = np.isfinite(lab)
            n_pos = int(np.sum(lab[known] == 1))
            cells.insert(2, f"{n_pos:,} of {int(known.sum()):,}")
        rows.append(cells)
    return '<h2 id="predictions">Predictions</h2>' + _table(head, rows, numeric_from=1, overall_last=True)


def _unknown_parts_note(unknown: Mapping[str, int] | None, *, has_generalist: bool) -> str:
    """Studies without one of the seven body parts, by the ``XR_*`` folder they are in ("" when none)."""
    if not unknown:
        return ""
    total = sum(int(n) for n in unknown.values())
    shown = ", ".join(f"{name or 'no body-part folder'}: {int(n):,}" for name, n in unknown.items())
    return (
        f'<p class="note">{total:,} {"study" if total == 1 else "studies"} of an unknown body part '
        f"(counted in the {_e(UNKNOWN_GROUP)} rows): {_e(shown)}. "
        + ("Only generalist models score them." if has_generalist else "No generalist model was loaded: not scored.")
        + "</p>"
    )


def _metrics_section(metrics, model_names) -> str:
    per_model = metrics.get("models") or {}
    names = [n for n in model_names if n in per_model] + sorted(set(per_model) - set(model_names))
    boot = metrics.get("bootstrap") or {}
    threshold = float(metrics.get("threshold", 0.5))
    ci = 100 * float(boot.get("ci", 0.95))
    resamples = ""
    if "n_resamples" in boot:
        resamples = f" ({int(boot['n_resamples']):,} resamples, seed {boot.get('seed')})"
    rule = f"Prediction = probability > {threshold:g}"
    if metrics.get("ensemble_thresholds"):
        rule += " (models and baselines); the fitted ensemble uses its per-part thresholds (Fitted ensemble)"
    note = _e(
        f"{rule}. Intervals: {ci:g}% percentile bootstrap{resamples}. "
        "Study probability = mean of the study's image probabilities. "
        "n/a: undefined (e.g. AUC on a group with one class)."
    )
    out = [f'<h2 id="metrics">Metrics</h2><p class="note">{note}</p>']
    baselines = metrics.get("baselines") or {}
    for level in ("study", "image"):
        tables = []
        if metrics.get(level):
            tables.append(_metrics_table(metrics[level], f"{_ensemble_label(metrics)} — {level} level", ci))
        for name, levels in baselines.items():
            if (levels or {}).get(level):
                tables.append(_metrics_table(levels[level], f"{_baseline_label(name)} — {level} level", ci))
        for name in names:
            if (per_model.get(name) or {}).get(level):
                tables.append(_metrics_table(per_model[name][level], f"{name} — {level} level", ci))
        if tables:
            out.append(f"<h3>{level.capitalize()}-level metrics</h3>" + "".join(tables))
    return "\n".join(out)


def _metrics_table(level: Mapping[str, Any], caption: str, ci: float) -> str:
    rows = metrics_rows(level)
    head = [_LONG_HEADERS.get(key, header).format(ci=f"{ci:g}") for key, header in TABLE_COLUMNS]
    body = [[r[key] for key, _ in TABLE_COLUMNS] for r in rows]
    excluded = sum(int(r["n_excluded"]) for r in rows if r["group"] == "overall")
    table = _table(head, body, caption=caption, numeric_from=1, overall_last="overall" in level)
    if excluded:
        table += f'<p class="note">{excluded:,} row(s) without a label or a probability excluded.</p>'
    return table


def _roc_section(labelled: pd.DataFrame, model_names: list[str], metrics: Mapping[str, Any]) -> str:
    labels = _numeric(labelled, "label")
    classes = set(labels[np.isfinite(labels)].astype(int).tolist())
    if len(classes) < 2:  # no panel can hold a curve: say so instead of drawing empty axes (~0.5 s)
        return (
            '<h2 id="roc">ROC curves (study level)</h2><p class="note">No ROC curve: every labelled study '
            f"is {'abnormal' if classes == {1} else 'normal'}, and a curve needs both classes.</p>"
        )
    png = _roc_figure(labelled, model_names, metrics)
    return (
        '<h2 id="roc">ROC curves (study level)</h2>'
        f'<figure><img alt="ROC curves per body part" src="data:image/png;base64,{png}">'
        "<figcaption>One panel per body part and overall; one line per model and the ensemble, "
        "AUC in the legend (below each panel); with a fitted ensemble, the plain body_part mean dashed grey; the "
        "circle is the ensemble's operating point (sensitivity, 1 − specificity) at the threshold it predicted "
        "with. Specialists appear in their body part's panel only. "
        "Panels with a single class have no curve.</figcaption></figure>"
    )


def _roc_figure(labelled: pd.DataFrame, model_names: list[str], metrics: Mapping[str, Any]) -> str:
    """The small-multiples ROC figure as base64 PNG; curves from the rows, AUCs read from ``metrics``."""
    buffer = io.BytesIO()
    roc_figure(labelled, model_names, metrics).savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def roc_figure(labelled: pd.DataFrame, model_names: list[str], metrics: Mapping[str, Any]) -> Figure:
    """The study-level ROC curves, one panel per body part and overall, as a matplotlib Figure (no pyplot).

    ``labelled``: the labelled rows of ``studies.csv``; ``model_names``: the
    models whose ``prob__<name>`` columns get a line; AUCs are read from ``metrics``.
    """
    grid = _Panels.of(labelled, model_names, metrics)
    baseline = _plain_mean_series(labelled, model_names, metrics)
    for ax, panel in grid.cells:
        _roc_axes(ax, panel)
        drawn = 0
        for i, name, col, labels, probs in grid.series(panel):
            y, p = labels.astype(int), probs
            if y.size == 0 or y.min() == y.max():
                continue
            auc = format_metric(_study_auc(metrics, col, panel))
            _roc_line(
                ax, y, p, label=f"{short_label(name)} ({auc})", colour=None if col == "prob" else f"C{(i - 1) % 10}"
            )
            drawn += 1
        if drawn:
            _roc_extras(ax, grid, panel, baseline, metrics)
            _legend_below(ax, "AUC")
        else:
            n = int(grid.mask(panel).sum())
            ax.text(0.5, 0.5, f"AUC n/a\n(one class, n={n})", ha="center", va="center", fontsize=8, color="0.3")
    return grid.figure


@dataclass(frozen=True)
class _Panels:
    """Small multiples: ``overall`` then each body part, one axes each (spare axes hidden), and the lines to draw."""

    figure: Figure
    cells: list[tuple[Any, str]]  # (axes, panel)
    lines: list[tuple[str, str]]  # (name, column): the ensemble, then each model that has a column
    labelled: pd.DataFrame
    parts: np.ndarray
    covers_all: dict[str, bool]  # column -> whether it has probabilities in every body part

    @classmethod
    def of(cls, labelled: pd.DataFrame, model_names: list[str], metrics: Mapping[str, Any]) -> _Panels:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        parts = _parts(labelled)
        panels = ["overall"] + sorted(set(parts.tolist()))
        lines = [(_ensemble_label(metrics), "prob")] + [(n, f"prob__{n}") for n in model_names]
        lines = [(name, col) for name, col in lines if col in labelled.columns]
        ncols = min(4, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        legend = 0.4 + 0.11 * (len(lines) + 2)  # the legend under each panel: a line per curve, + baseline, point
        fig = Figure(figsize=(3.1 * ncols, (3.1 + legend) * nrows), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        every = set(parts.tolist())
        covers = {col: set(parts[np.isfinite(_numeric(labelled, col))].tolist()) == every for _, col in lines}
        return cls(fig, list(zip(axes, panels)), lines, labelled, parts, covers)

    def mask(self, panel: str) -> np.ndarray:
        """The rows of ``panel``: all of them for ``overall``, else those of that body part."""
        return np.ones(len(self.labelled), bool) if panel == "overall" else self.parts == panel

    def series(self, panel: str) -> Iterator[tuple[int, str, str, np.ndarray, np.ndarray]]:
        """``(index in lines, name, column, labels, probabilities)`` of each line of ``panel``, on its labelled rows.

        A specialist's probabilities cover only its body part: in the overall
        panel its line would describe that part, so it is drawn per part only.
        """
        mask = self.mask(panel)
        labels = _numeric(self.labelled, "label")
        for i, (name, col) in enumerate(self.lines):
            if panel == "overall" and not self.covers_all[col] and col != "prob":
                continue
            probs = _numeric(self.labelled, col)
            keep = mask & np.isfinite(probs) & np.isfinite(labels)
            yield i, name, col, labels[keep], probs[keep]


def _legend_below(ax, title: str) -> None:
    """The panel's legend under its axes, outside the plot area (constrained layout makes room)."""
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        fontsize=6,
        title=title,
        title_fontsize=6,
        frameon=False,
        borderaxespad=0.0,
    )


def _plain_mean_series(labelled: pd.DataFrame, model_names: list[str], metrics: Mapping[str, Any]) -> np.ndarray | None:
    """The plain ``body_part`` mean per study when ``metrics`` reports it as a baseline (a fitted ensemble), else
    None: per row, the mean of the models that scored it (a specialist's column is empty outside its part)."""
    if "body_part" not in (metrics.get("baselines") or {}):
        return None
    columns = [f"prob__{n}" for n in model_names if f"prob__{n}" in labelled.columns]
    if not columns:
        return None
    values = np.column_stack([_numeric(labelled, c) for c in columns])
    counts = np.isfinite(values).sum(axis=1)
    total = np.where(np.isfinite(values), values, 0.0).sum(axis=1)
    return np.divide(total, counts, out=np.full(len(labelled), np.nan), where=counts > 0)


def _roc_extras(ax, grid: _Panels, panel: str, baseline: np.ndarray | None, metrics: Mapping[str, Any]) -> None:
    """The plain-mean baseline's curve (grey, dashed) and the ensemble's operating point at its threshold."""
    labels = _numeric(grid.labelled, "label")
    if baseline is not None:
        keep = grid.mask(panel) & np.isfinite(baseline) & np.isfinite(labels)
        y = labels[keep].astype(int)
        if y.size and y.min() != y.max():
            group = _group(((metrics.get("baselines") or {}).get("body_part") or {}).get("study"), panel)
            auc = format_metric((group or {}).get("auc"))
            _roc_line(ax, y, baseline[keep], label=f"{_baseline_label('body_part')} ({auc})", colour="0.55", ls="--")
    group = _group(metrics.get("study"), panel) or {}
    sens, spec = group.get("sensitivity"), group.get("specificity")
    if sens is None or spec is None:
        return
    ax.plot(
        [1.0 - float(spec)],
        [float(sens)],
        marker="o",
        ms=5,
        mfc="white",
        mec="black",
        mew=1.2,
        ls="none",
        zorder=4,
        clip_on=False,
        label=f"operating point ({_threshold_text(metrics, panel)})",
    )


def _threshold_text(metrics: Mapping[str, Any], panel: str) -> str:
    """``threshold 0.5``, or the fitted ensemble's threshold of ``panel`` (``per-part thresholds`` overall)."""
    fitted = metrics.get("ensemble_thresholds")
    if not fitted:
        return f"threshold {float(metrics.get('threshold', 0.5)):g}"
    if panel == "overall":
        return "per-part thresholds"
    value = (fitted.get("by_body_part") or {}).get(panel, fitted.get("default"))
    return f"threshold {float(value):.3g}" if value is not None else "per-part thresholds"


def _roc_axes(ax, panel: str) -> None:
    ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--")
    ax.set_title(panel, fontsize=10)
    # A margin around [0, 1]: a perfect curve (up the left edge, along the top) stays visible, not under the frame.
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)
    ax.set_xlabel("1 − specificity", fontsize=8)
    ax.set_ylabel("sensitivity", fontsize=8)


def _roc_line(ax, y: np.ndarray, p: np.ndarray, *, label: str, colour: str | None, ls: str = "-") -> None:
    """One ROC curve: a model's in ``colour``, the ensemble's (``colour`` None) black and thicker."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    is_ensemble = colour is None
    ax.plot(
        fpr,
        tpr,
        color="black" if is_ensemble else colour,
        lw=1.8 if is_ensemble else 1.0,
        ls=ls,
        label=label,
        zorder=3 if is_ensemble else 2.6,  # above the frame (2.5)
    )


def _study_auc(metrics: Mapping[str, Any], column: str, panel: str) -> float | None:
    """The study-level AUC that ``metrics`` holds for ``column`` (``prob`` = the ensemble) on ``panel``."""
    if column == "prob":
        level = metrics.get("study")
    else:
        level = ((metrics.get("models") or {}).get(column[len("prob__") :]) or {}).get("study")
    level = level or {}
    group = level.get("overall") if panel == "overall" else (level.get("by_body_part") or {}).get(panel)
    return (group or {}).get("auc")


def _confusion_section(metrics: Mapping[str, Any], threshold: float) -> str:
    """The ensemble's study-level confusion matrix, overall and per body part, from ``metrics``' counts."""
    study = metrics.get("study") or {}
    overall = study.get("overall") or {}
    if not overall.get("n"):
        return ""
    tn, fp, fn, tp = confusion_counts(overall)
    matrix = (
        '<table class="confusion"><caption>ensemble, all body parts '
        f"(n = {int(overall['n']):,})</caption>"
        '<tr><th></th><th>predicted normal</th><th>predicted abnormal</th><th class="num">total</th></tr>'
        f'<tr><th>normal</th><td class="hit">{tn:,}</td><td>{fp:,}</td><td class="num">{tn + fp:,}</td></tr>'
        f'<tr><th>abnormal</th><td>{fn:,}</td><td class="hit">{tp:,}</td><td class="num">{fn + tp:,}</td></tr>'
        f'<tr><th>total</th><td>{tn + fn:,}</td><td>{fp + tp:,}</td><td class="num">{tn + fp + fn + tp:,}</td></tr>'
        "</table>"
    )
    rows = []
    for part, group in sorted((study.get("by_body_part") or {}).items()):
        if not group.get("n"):
            continue
        p_tn, p_fp, p_fn, p_tp = confusion_counts(group)
        rows.append([part, *(f"{c:,}" for c in (p_tp, p_fp, p_fn, p_tn)), f"{int(group['n']):,}"])
    per_part = _table(["body part", "TP", "FP", "FN", "TN", "n"], rows, caption="per body part", numeric_from=1)
    rule = "the fitted per-part thresholds" if metrics.get("ensemble_thresholds") else f"probability &gt; {threshold:g}"
    return (
        '<h2 id="confusion">Confusion matrix (ensemble, study level)</h2>'
        f'<p class="note">Rows: label; columns: prediction ({rule}).</p>' + matrix + per_part
    )


# --------------------------------------------------------------------------
# Forest plots, the fitted ensemble, reliability diagrams
# --------------------------------------------------------------------------


def _ensemble_label(metrics: Mapping[str, Any]) -> str:
    """The ensemble's name in tables and plots: ``fitted ensemble``, ``body_part ensemble``..., else ``ensemble``."""
    name = metrics.get("ensemble")
    return f"{name} {ENSEMBLE_NAME}" if name else ENSEMBLE_NAME


def _baseline_label(name: str) -> str:
    return f"{name} mean (baseline)"


def _details(summary_html: str, text: str) -> str:
    """A collapsed ``<details>`` block: ``summary_html`` (already escaped) over a ``<pre>`` of ``text``."""
    return f"<details><summary>{summary_html}</summary><pre>{_e(text)}</pre></details>"


def _group(level: Mapping[str, Any] | None, panel: str) -> Mapping[str, Any] | None:
    """A level's GROUP for ``panel`` (``overall`` or a body part)."""
    level = level or {}
    return level.get("overall") if panel == "overall" else (level.get("by_body_part") or {}).get(panel)


def _parts_with_rows(level: Mapping[str, Any] | None) -> set[str]:
    return {part for part, group in ((level or {}).get("by_body_part") or {}).items() if (group or {}).get("n")}


def _forest_rows(metrics: Mapping[str, Any], model_names: list[str], panel: str) -> list[tuple[str, Mapping, str]]:
    """``(label, GROUP, colour)`` of each line of a forest panel: the ensemble, the baselines, the models.

    Models are coloured as in the ROC figure; a model that does not cover every body part (a
    specialist) is left out of the ``overall`` panel, whose number would describe its parts only.
    """
    rows = []
    ensemble = _group(metrics.get("study"), panel)
    if ensemble is not None:
        rows.append((_ensemble_label(metrics), ensemble, "black"))
    for name, levels in (metrics.get("baselines") or {}).items():
        group = _group((levels or {}).get("study"), panel)
        if group is not None:
            rows.append((_baseline_label(name), group, "0.5"))
    everywhere = _parts_with_rows(metrics.get("study"))
    per_model = metrics.get("models") or {}
    for i, name in enumerate(model_names):
        level = (per_model.get(name) or {}).get("study")
        if panel == "overall" and not everywhere <= _parts_with_rows(level):
            continue
        group = _group(level, panel)
        if group is not None and group.get("n"):
            rows.append((name, group, f"C{i % 10}"))
    return rows


def _forest_section(metrics: Mapping[str, Any], model_names: list[str]) -> str:
    """Study kappa with its interval per body part: one small figure per part, on one shared axis."""
    study = metrics.get("study") or {}
    panels = ["overall"] + sorted(study.get("by_body_part") or {})
    rows = {panel: _forest_rows(metrics, model_names, panel) for panel in panels}
    values = [v for lines in rows.values() for _, g, _ in lines for v in [g.get("kappa"), *(g.get("kappa_ci") or [])]]
    lowest = min([v for v in values if v is not None] + [0.0])
    xmin = max(-1.0, math.floor((lowest - 0.05) * 10) / 10)
    figures, undefined = [], []
    for panel in panels:
        if not any(group.get("kappa") is not None for _, group, _ in rows[panel]):  # only "n/a" lines
            undefined += [panel] if rows[panel] else []
        else:
            png = _forest_png(panel, rows[panel], xmin, int((_group(study, panel) or {}).get("n") or 0))
            figures.append(f'<figure><img alt="study kappa, {_e(panel)}" src="data:image/png;base64,{png}"></figure>')
    ci = 100 * float((metrics.get("bootstrap") or {}).get("ci", 0.95))
    baseline = ", the plain-mean baseline (grey)" if metrics.get("baselines") else ""
    note = (
        f"Study-level Cohen's kappa (dot) with its {ci:g}% bootstrap interval (bar) for the ensemble "
        f"(black){baseline} and every model serving the part; the dashed line is chance agreement. "
        "Specialists appear in their own parts only. Values from metrics.json."
    )
    if not figures:
        note = "No study kappa to plot: kappa needs both classes among a group's labels and predictions."
    elif undefined:
        note += f" Not plotted, kappa undefined for every line (one class): {', '.join(undefined)}."
    return (
        f'<h2 id="forest">Study kappa per body part</h2><p class="note">{_e(note)}</p>'
        f'<div class="forest">{"".join(figures)}</div>'
    )


def _forest_png(panel: str, rows: list[tuple[str, Mapping, str]], xmin: float, n: int) -> str:
    """One forest panel as base64 PNG; each line's numbers are printed at its right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.4, 0.3 * len(rows) + 0.75), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ys = np.arange(len(rows))[::-1]
    for y, (_, group, colour) in zip(ys, rows):
        kappa = group.get("kappa")
        lo, hi = (list(group.get("kappa_ci") or []) + [None, None])[:2]
        strong = colour == "black"
        if kappa is None:
            ax.text(max(xmin, 0.0), y, "n/a", va="center", ha="left", fontsize=7, color="0.4")
        else:
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [y, y], color=colour, lw=2.0 if strong else 1.3, solid_capstyle="butt")
            ax.plot([kappa], [y], marker="D" if strong else "o", ms=5 if strong else 4, color=colour, zorder=3)
        text = _fmt_interval(kappa, lo, hi)
        ax.text(1.02, y, text, transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=7)
    ax.axvline(0.0, color="0.7", lw=0.8, ls="--")
    ax.set_yticks(ys, [short_label(label) for label, _, _ in rows], fontsize=7.5)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(xmin, 1.04)  # room for an interval that ends at 1
    ax.set_xticks([t for t in np.arange(-1.0, 1.01, 0.2) if t >= xmin - 1e-9])
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("study kappa", fontsize=7.5)
    ax.set_title(f"{panel} (n = {n:,})", fontsize=9, loc="left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def short_label(text: str, limit: int = 36) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (``start…end``) for a plot's axis.

    Run names made from parameters run long (``specialists-custom_cnn-64-f16-...-XR_ELBOW``); their
    start (plugin) and end (body part) tell them apart, and the tables keep the whole name.
    """
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def _fmt_interval(value: float | None, lo: float | None, hi: float | None) -> str:
    if value is None:
        return "n/a"
    return format_metric(value) + ("" if lo is None or hi is None else f" [{lo:.2f}, {hi:.2f}]")


def _fitted_section(fitted: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """The fitted ensemble's weights, calibrators and thresholds per body part, as the ensemble file holds them."""
    members = [str(m.get("name")) for m in fitted.get("members") or []]
    # One weights cell per part (not a column per member): specialists' long names serve one part each,
    # and a column per member made the table several screens wide.
    head = ["body part", "status", "studies (abn.)", "weights used"]
    head += ["calibration", "threshold used", "CV kappa plain → used", "CV log loss plain → used"]
    rows, notes = [], []
    for part, model in sorted((fitted.get("parts") or {}).items()):
        weights = model.get("weights") or {}
        quality = model.get("quality") or {}
        weighted = model.get("status") in ("fitted", "weights_only")
        rows.append(
            [
                part,
                str(model.get("status", "")).replace("_", " "),
                f"{model.get('n_studies', 0):,} ({model.get('n_positive', 0):,})",
            ]
            + [
                "; ".join(f"{m} {format_metric(weights[m])}" for m in members if m in weights)
                if weighted
                else f"plain mean (1/{len(weights)} each)"
            ]
            + [_calibrator_text(model.get("calibrator")), format_metric(model.get("threshold"))]
            + [_cv_change(quality, key) for key in ("kappa", "log_loss")]
        )
        notes += [f"{part}: {note}" for note in model.get("notes") or []]
    glob = fitted.get("global") or {}
    rows.append(
        ["any other part", "plain mean", "", "equal weights of the members serving it"]
        + [_calibrator_text(glob.get("calibrator")), format_metric(glob.get("threshold")), "", ""]
    )
    notes += [str(note) for note in fitted.get("notes") or []]
    fitting = fitted.get("fitting") or {}
    settings = fitted.get("settings") or {}
    facts = (
        f"Fitted on {int(fitting.get('n_studies') or 0):,} labelled studies (sha256 {str(fitting.get('sha256', ''))[:12]}), "
        f"calibration {settings.get('calibrate', 'none')}, threshold rule {settings.get('threshold_rule', '')}, "
        f"scored with precision {fitted.get('precision') or 'unknown'} and TTA {fitted.get('tta') or 'unknown'}. "
        "A study's probability is the weighted mean of its part's models (weights pooled across parts), then the "
        "part's calibrator; it is predicted abnormal above the part's threshold. The table shows what each part "
        "uses; CV: patient-grouped cross-validation inside the fitting set (plain mean at the models' threshold)."
    )
    ensemble_file = metrics.get("ensemble_file") or {}
    overlap = ensemble_file.get("overlapping_studies")
    if overlap:
        facts += f" Warning: {overlap:,} scored studies were in the fitting set; their metrics are optimistic."
    for warning in fitted.get("applied_warnings") or ensemble_file.get("warnings") or []:
        facts += f" Warning: {warning}."
    caption = "Per body part: studies it was fitted on, the weights, calibration and threshold it uses"
    table = _table(head, rows, caption=caption, numeric_from=2, overall_last=True, css_class="fitted")
    return (
        f'<h2 id="fitted">Fitted ensemble</h2><p class="note">{_e(facts)}</p>{table}'
        + (_details(f"Fitting notes ({len(notes)})", "\n".join(notes)) if notes else "")
        + _details("ensemble.json", _ensemble_json_text(fitted))
    )


def _calibrator_text(calibrator: Mapping[str, Any] | None) -> str:
    calibrator = calibrator or {}
    method = calibrator.get("method", "none")
    if method == "platt":
        return f"Platt a={calibrator.get('a', 0):.3g} b={calibrator.get('b', 0):.3g}"
    if method == "isotonic":
        return f"isotonic ({len(calibrator.get('x') or [])} points)"
    return str(method)


def _cv_change(quality: Mapping[str, Any], key: str) -> str:
    plain, fitted = (quality.get("plain") or {}).get(key), (quality.get("used_cv") or {}).get(key)
    if plain is None and fitted is None:
        return ""
    return f"{format_metric(plain)} → {format_metric(fitted)}"


def _ensemble_json_text(fitted: Mapping[str, Any]) -> str:
    """The ensemble file's content for a <details> block, its list of fitting study keys shortened to a count."""
    shown = dict(fitted)
    fitting = dict(shown.get("fitting") or {})
    if isinstance(fitting.get("studies"), list):
        fitting["studies"] = f"[{len(fitting['studies']):,} study keys]"
        shown["fitting"] = fitting
    text = json.dumps(shown, indent=1, default=str)
    return text if len(text) <= MAX_CARD_JSON_CHARS else text[:MAX_CARD_JSON_CHARS] + "\n… (cut; see the ensemble file)"


def _calibration_section(labelled: pd.DataFrame, model_names: list[str], metrics: Mapping[str, Any]) -> str:
    if len(labelled) < MIN_CALIBRATION_STUDIES:
        return (
            '<h2 id="calibration">Calibration (study level)</h2><p class="note">Too few labelled studies '
            f"({len(labelled)}) for a reliability diagram: it needs {MIN_CALIBRATION_STUDIES} or more.</p>"
        )
    png = _calibration_figure(labelled, model_names, metrics)
    return (
        '<h2 id="calibration">Calibration (study level)</h2>'
        f'<figure><img alt="reliability diagrams per body part" src="data:image/png;base64,{png}">'
        "<figcaption>Reliability diagrams: studies binned by probability (5 bins of width 0.2); each point is a "
        "bin's mean probability against the fraction of its studies labelled abnormal (the small numbers: the "
        "ensemble's studies per bin); on the diagonal a "
        "probability means what it says. Brier score (mean squared difference between probability and label, "
        "lower is better) in the legend, computed here from the study rows. Specialists appear in their "
        "body part's panel only.</figcaption></figure>"
    )


def _calibration_figure(labelled: pd.DataFrame, model_names: list[str], metrics: Mapping[str, Any]) -> str:
    """Reliability diagrams per body part and overall, one line per model and the ensemble, as base64 PNG."""
    grid = _Panels.of(labelled, model_names, metrics)
    colours = {"prob": "black", **{f"prob__{n}": f"C{i % 10}" for i, n in enumerate(model_names)}}
    for ax, panel in grid.cells:
        _reliability_axes(ax, panel)
        for _, name, col, labels, probs in grid.series(panel):
            if not labels.size:
                continue
            xs, ys, brier = reliability_points(labels, probs)
            strong = col == "prob"
            if strong:  # the ensemble's bin counts beside its points
                for x, y, n in zip(xs, ys, reliability_counts(probs)):
                    ax.annotate(str(n), (x, y), xytext=(3, -8), textcoords="offset points", fontsize=6.5, color="0.2")
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=3.5,
                lw=1.8 if strong else 1.0,
                color=colours[col],
                label=f"{short_label(name)} ({brier:.3f})",
                zorder=3 if strong else 2,
            )
        if ax.get_legend_handles_labels()[0]:
            _legend_below(ax, "Brier")
    buffer = io.BytesIO()
    grid.figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def reliability_points(y: np.ndarray, p: np.ndarray, bins: int = 5) -> tuple[list[float], list[float], float]:
    """A reliability diagram's points and the Brier score of labels ``y`` (0/1) and probabilities ``p``.

    ``p`` is cut into ``bins`` equal-width bins on [0, 1] (1.0 in the last); each non-empty
    bin gives (mean probability, fraction of ``y`` = 1). Brier = mean of ``(p - y) ** 2``.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    used = [b for b in range(bins) if np.any(which == b)]
    xs = [float(p[which == b].mean()) for b in used]
    ys = [float(y[which == b].mean()) for b in used]
    return xs, ys, float(np.mean((p - y) ** 2))


def reliability_counts(p: np.ndarray, bins: int = 5) -> list[int]:
    """The number of probabilities in each non-empty bin of :func:`reliability_points`, in the same order."""
    which = np.clip((np.asarray(p, dtype=np.float64) * bins).astype(int), 0, bins - 1)
    return [int(np.sum(which == b)) for b in range(bins) if np.any(which == b)]


def _reliability_axes(ax, panel: str) -> None:
    ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--")
    ax.set_title(panel, fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)
    ax.set_xlabel("mean probability", fontsize=8)
    ax.set_ylabel("fraction abnormal", fontsize=8)


def _heatmap_section(gallery: Mapping[str, Any] | None) -> str:
    """The ``--explain`` gallery: per study its key, why chosen, probabilities and overlay thumbnails (linked).

    ``gallery`` (:func:`mura_ens.scoring.heatmaps.write_heatmaps`; None: no section, ""): ``note`` and
    ``studies``, each with ``study``, ``reasons``, ``body_part``, ``prob``, ``label``, ``pred``, ``models``
    (name -> study probability), ``heatmap_models`` (name -> weight), ``cannot_explain`` (names) and
    ``images`` (each ``image`` and either ``href`` + ``thumbnail`` (a data URI) or ``error``).
    """
    if gallery is None:
        return ""
    studies = list(gallery.get("studies") or [])
    out = [f'<h2 id="heatmaps">Heatmaps ({len(studies):,} studies)</h2>']
    out.append(
        '<p class="note">'
        + _e(gallery.get("note", ""))
        + " Each overlay is the weighted mean of the raw heatmaps of the models the ensemble combined for "
        "the study, scaled to its own maximum (so a faint map of a study called normal still shows where it "
        'looked), coloured <span class="jet"></span> from low to high where the model\'s abnormal score rose; '
        "where the heat is zero the radiograph shows unchanged. Under each: the image's probability and a note "
        '("weak evidence": probability below 0.5; "no positive evidence": the map is zero everywhere). A '
        "thumbnail links to its full-size PNG; heatmaps/index.csv lists them all with the raw maps (.npy).</p>"
    )
    out.append(_localisation_table(gallery.get("evaluation")))
    for entry in studies:
        reasons = ", ".join(str(r).replace("_", " ") for r in entry.get("reasons") or [])
        label = entry.get("label")
        facts = (
            f"{reasons} · {entry.get('body_part') or UNKNOWN_GROUP} · ensemble probability "
            f"{format_metric(entry.get('prob'))} · predicted {_label_text(entry.get('pred'))}"
            f" · label {_label_text(label)}"
        )
        models = "; ".join(f"{name} {format_metric(p)}" for name, p in (entry.get("models") or {}).items())
        out.append(f'<div class="gallery-study"><h3>{_e(entry.get("study", ""))}</h3><p>{_e(facts)}</p>')
        weights = entry.get("heatmap_models") or {}
        in_map = ", ".join(f"{name} (weight {w:.2f})" for name, w in weights.items()) or "none"
        out.append(f'<p class="muted">Study probability per model: {_e(models or "none")}. Heatmap: {_e(in_map)}')
        if entry.get("cannot_explain"):
            out.append(f"; cannot explain: {_e(', '.join(entry['cannot_explain']))}")
        out.append('.</p><div class="thumbs">')
        for image in entry.get("images") or []:
            name = _e(Path(str(image.get("image", ""))).name)
            if image.get("thumbnail"):
                caption = name + _e(_image_caption(image))
                out.append(
                    f'<figure><a href="{_e(image["href"])}"><img alt="heatmap of {name}" '
                    f'src="{_e(image["thumbnail"])}"></a><figcaption>{caption}</figcaption></figure>'
                )
            else:
                why = _e(image.get("error", ""))
                out.append(f"<figure><figcaption>{name}: no heatmap ({why})</figcaption></figure>")
        out.append("</div></div>")
    return "".join(out)


def _image_caption(image: Mapping[str, Any]) -> str:
    """`` · p 0.123 · weak evidence`` under a gallery thumbnail (empty parts left out)."""
    text = ""
    if image.get("prob") is not None:
        text += f" · p {format_metric(image.get('prob'))}"
    if image.get("note"):
        text += f" · {image['note']}"
    return text


def _localisation_table(evaluation: Mapping[str, Any] | None) -> str:
    """``score --findings``: the pointing game and energy share per model and for the ensemble, with baselines."""
    if not evaluation:
        return ""
    head = ("maps", "images", "patients", "pointing game", "random", "energy share", "random (box area)")
    keys = ("maps", "images", "patients", "pointing_game", "pointing_baseline", "energy_share", "energy_baseline")
    out = [
        "<h3>Localisation against ground-truth findings</h3>",
        f'<p class="note">On images with a visible finding: pointing game = share of maps whose maximum lies in a '
        f"finding's box grown by {int(evaluation.get('grow_px', 15))} px; energy share = share of the map's positive "
        "mass inside the boxes; random = the same for a random point / a uniform map (the boxes' share of the "
        f"image). 95% intervals resample patients. Details: heatmaps/{_e(evaluation.get('file', ''))}.</p>",
        "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>",
    ]
    for row in evaluation.get("rows") or []:
        out.append("<tr>" + "".join(f"<td>{_e(str(row.get(k, '')))}</td>" for k in keys) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _label_text(value: Any) -> str:
    """A 0/1 label or prediction as words; "unknown" when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    return "abnormal" if int(value) == 1 else "normal"


def _failed_section(failed: pd.DataFrame) -> str:
    if failed is None or len(failed) == 0:
        return '<h2 id="failed">Inputs not scored</h2><p class="note">None: every input was scored.</p>'
    status = (
        failed["status"].astype("string").fillna("") if "status" in failed.columns else pd.Series([""] * len(failed))
    )
    counts = status.value_counts()
    summary = ", ".join(f"{_e(s or 'unknown')}: {int(c):,}" for s, c in counts.items())
    columns = [c for c in ("path", "study", "status", "error") if c in failed.columns]
    shown = failed.head(MAX_FAILED_ROWS)
    rows_html = []
    for record in shown[columns].itertuples(index=False):
        cells = []
        for col, value in zip(columns, record):
            text = (
                ""
                if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA
                else str(value)
            )
            cls = ' class="path"' if col in ("path", "study") else ""
            cells.append(f"<td{cls}>{_e(text)}</td>")
        rows_html.append("<tr>" + "".join(cells) + "</tr>")
    more = len(failed) - len(shown)
    tail = f'<p class="note">… and {more:,} more (see images.csv).</p>' if more > 0 else ""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    return (
        f'<h2 id="failed">Inputs not scored ({len(failed):,})</h2><p class="note">{summary}</p>'
        f"<table><tr>{head}</tr>{''.join(rows_html)}</table>{tail}"
    )


def _provenance_section(models: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any]) -> str:
    """One compact table of the models (name, file relative to its run's parent, plugin, body parts, input size,
    resize, threshold, precision, sha256, training-set sha256), the run's facts and the library versions.

    No card.json content and no absolute path: a report may leave the hospital (``--pseudonymize``), and a
    model card names its training images by path. The cards stay in the run folders."""
    out = ['<h2 id="provenance">Provenance</h2>']
    if models:
        out.append("<h3>Models</h3>")
        head = ["model", "file", "plugin", "body parts", "input size", "resize", "threshold", "precision"]
        out.append(_table([*head, "sha256", "training set sha256"], [_model_row(m) for m in models]))
        out.append(
            '<p class="note">sha256 of the ONNX file and of the training manifest (card.json '
            "<code>data.manifest_sha256</code>), first 12 hex digits; each run folder's card.json holds the rest.</p>"
        )
    if provenance:
        out.append("<h3>Run</h3>" + _kv_table(provenance))
    out.append("<h3>Report built with</h3>" + _kv_table(_library_versions()))
    return "\n".join(out)


def _model_row(model: Mapping[str, Any]) -> list[str]:
    """A model's provenance row: its fields, or its ONNX metadata's (callers giving ``metadata`` only)."""
    meta = dict(model.get("metadata") or {})

    def field(key: str) -> Any:
        value = model.get(key, meta.get(key, ""))
        return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value

    file = model.get("file") or (Path(str(model["path"])).name if model.get("path") else "")
    return [
        str(model.get("name", "")),
        str(file),
        str(field("plugin")),
        str(field("body_parts") or "all (generalist)"),
        str(field("input_size")),
        str(field("resize_policy")),
        str(field("threshold")),
        str(field("quantization") or "fp32"),
        str(field("sha256"))[:12],
        str(model.get("training_set_sha256") or "")[:12] or "unknown",
    ]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f}%" if n else "n/a"


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _parts(frame: pd.DataFrame) -> np.ndarray:
    if "body_part" not in frame.columns:
        return np.full(len(frame), UNKNOWN_GROUP, dtype=object)
    parts = frame["body_part"].astype("string").fillna("").str.strip().to_numpy(dtype=object)
    parts[parts == ""] = UNKNOWN_GROUP
    return parts


def _is_ok(images: pd.DataFrame) -> pd.Series:
    if "status" not in images.columns:
        return pd.Series(True, index=images.index)
    status = images["status"].astype("string").fillna("").str.strip()
    return status.isin(["", "ok"])


def _model_names(models: Sequence[Mapping[str, Any]], studies: pd.DataFrame) -> list[str]:
    names = [str(m["name"]) for m in models if m.get("name")]
    if not names:
        names = [c[len("prob__") :] for c in studies.columns if str(c).startswith("prob__")]
    return list(dict.fromkeys(names))


def _labelled_studies(studies: pd.DataFrame) -> pd.DataFrame | None:
    """Studies with a label, or None when the input has no labels at all."""
    labels = _numeric(studies, "label")
    keep = np.isfinite(labels)
    return studies.loc[keep] if keep.any() else None


def _table(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    caption: str | None = None,
    numeric_from: int | None = None,
    overall_last: bool = False,
    css_class: str | None = None,
) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if numeric_from is not None and i >= numeric_from else ""

    rows = list(rows)
    parts = [f'<table class="{css_class}">' if css_class else "<table>"]
    if caption:
        parts.append(f"<caption>{_e(caption)}</caption>")
    parts.append("<tr>" + "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(head)) + "</tr>")
    for j, row in enumerate(rows):
        row_cls = ' class="overall"' if overall_last and j == len(rows) - 1 else ""
        parts.append(f"<tr{row_cls}>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def _kv_table(mapping: Mapping[str, Any], *, caption: str | None = None) -> str:
    parts = ['<table class="kv">']
    if caption:
        parts.append(f"<caption>{_e(caption)}</caption>")
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            cell = _kv_table(value)
        elif isinstance(value, (list, tuple)):
            cell = f"<code>{_e(' '.join(map(str, value)) if key == 'command' else json.dumps(list(value), default=str))}</code>"
        else:
            cell = _e(value)
        parts.append(f"<tr><th>{_e(key)}</th><td>{cell}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for dist in REPORTED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions
