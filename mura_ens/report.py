"""``report.html``: one self-contained, print-friendly page describing a scoring run.

Sections: header (input, counts, threshold), predictions per body part,
study- and image-level metrics for the ensemble and every model, ROC curves
per body part (one small-multiples figure, inline PNG), the ensemble's
study-level confusion matrix, failed inputs, and provenance (models with
their ONNX metadata and card excerpts, library versions, command, input).

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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import atomic_write_text
from .metrics import TABLE_COLUMNS, UNKNOWN_GROUP, metrics_rows

__all__ = ["write_report", "render_report", "ENSEMBLE_NAME"]

#: Name of the ensemble in tables and legends.
ENSEMBLE_NAME = "ensemble"

#: Failed inputs listed in full up to this many rows (all are in images.csv).
MAX_FAILED_ROWS = 1000

#: Card fields longer than this (as JSON) are cut in the report.
MAX_CARD_JSON_CHARS = 4000

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
figure img { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; }
.header-grid { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 10px 0; }
.header-grid div:nth-child(odd) { color: var(--muted); }
.model { break-inside: avoid; page-break-inside: avoid; }
@media print {
  body { padding: 0; max-width: none; font-size: 11px; }
  h2 { break-after: avoid; page-break-after: avoid; }
  table, figure { break-inside: avoid; page-break-inside: avoid; }
  pre { white-space: pre-wrap; }
}
"""


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def write_report(
    out_path: str | Path,
    *,
    studies: pd.DataFrame,
    images: pd.DataFrame | None = None,
    metrics: Mapping[str, Any] | None = None,
    models: Sequence[Mapping[str, Any]] = (),
    provenance: Mapping[str, Any] | None = None,
    failed: pd.DataFrame | None = None,
    title: str = "mura-ens report",
) -> Path:
    """Write ``report.html`` atomically and return its path.

    Parameters
    ----------
    out_path : path
        File to write (its folder is created).
    studies : DataFrame
        ``study, patient, body_part, n_images, label, prob__<model>..., prob, pred, status``
        (``label`` may be empty or absent: then no metrics are shown).
    images : DataFrame, optional
        ``path, study, body_part, prob__<model>..., status, error``.
    metrics : dict, optional
        The ``metrics.json`` structure; ``metrics["models"][name]`` holds each
        model's ``study``/``image`` levels.
    models : list of dict
        One per model: ``name``, ``path``, ``metadata`` (ONNX metadata_props),
        ``card`` (card.json content or None).
    provenance : dict, optional
        Free-form run facts (``command``, ``input``, ``ensemble``, ``date``,
        ``versions``, ...), shown as given.
    failed : DataFrame, optional
        Inputs that could not be scored: ``path, study, status, error``.
    """
    text = render_report(
        studies=studies,
        images=images,
        metrics=metrics,
        models=models,
        provenance=provenance,
        failed=failed,
        title=title,
    )
    return atomic_write_text(out_path, text)


def render_report(
    *,
    studies: pd.DataFrame,
    images: pd.DataFrame | None = None,
    metrics: Mapping[str, Any] | None = None,
    models: Sequence[Mapping[str, Any]] = (),
    provenance: Mapping[str, Any] | None = None,
    failed: pd.DataFrame | None = None,
    title: str = "mura-ens report",
) -> str:
    """The report's HTML text; see :func:`write_report`."""
    provenance = dict(provenance or {})
    metrics = dict(metrics or {})
    images = images if images is not None else pd.DataFrame(columns=["path", "study", "body_part", "status"])
    failed = failed if failed is not None else pd.DataFrame(columns=["path", "study", "status", "error"])
    threshold = float(metrics.get("threshold", provenance.get("threshold", 0.5)))
    model_names = _model_names(models, studies)
    labelled = _labelled_studies(studies)

    sections = [
        _header(title, studies, images, failed, threshold, provenance, model_names),
        _predictions_summary(studies, images, threshold, labelled is not None),
    ]
    if metrics.get("study") or metrics.get("models"):
        sections.append(_metrics_section(metrics, model_names))
    else:
        sections.append(
            '<h2 id="metrics">Metrics</h2><p class="note">No labels in the input: '
            "metrics, ROC curves and the confusion matrix need study labels.</p>"
        )
    if labelled is not None:
        sections.append(_roc_section(labelled, model_names))
        sections.append(_confusion_section(labelled, threshold))
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
        facts.append(("Ensemble", str(provenance["ensemble"])))
    facts.append(("Threshold", f"abnormal when probability > {threshold:g}"))
    grid = "".join(f"<div>{_e(k)}</div><div>{_e(v)}</div>" for k, v in facts)
    return f'<header><h1>{_e(title)}</h1><div class="header-grid">{grid}</div></header>'


def _predictions_summary(studies, images, threshold, has_labels) -> str:
    probs = _numeric(studies, "prob")
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
        n_abnormal = int(np.sum(p[scored] > threshold))
        cells = [
            part,
            f"{int(mask.sum()):,}",
            f"{int(scored.sum()):,}",
            f"{n_abnormal:,} ({_pct(n_abnormal, int(scored.sum()))})",
            _num(float(np.mean(p[scored])) if scored.any() else None),
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


def _metrics_section(metrics, model_names) -> str:
    per_model = metrics.get("models") or {}
    names = [n for n in model_names if n in per_model] + sorted(set(per_model) - set(model_names))
    boot = metrics.get("bootstrap") or {}
    threshold = float(metrics.get("threshold", 0.5))
    ci = 100 * float(boot.get("ci", 0.95))
    resamples = ""
    if "n_resamples" in boot:
        resamples = f" ({int(boot['n_resamples']):,} resamples, seed {boot.get('seed')})"
    note = _e(
        f"Prediction = probability > {threshold:g}. Intervals: {ci:g}% percentile bootstrap{resamples}. "
        "Study probability = mean of the study's image probabilities. "
        "n/a: undefined (e.g. AUC on a group with one class)."
    )
    out = [f'<h2 id="metrics">Metrics</h2><p class="note">{note}</p>']
    for level in ("study", "image"):
        tables = []
        if metrics.get(level):
            tables.append(_metrics_table(metrics[level], f"{ENSEMBLE_NAME} — {level} level", ci))
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


def _roc_section(labelled: pd.DataFrame, model_names: list[str]) -> str:
    png = _roc_figure(labelled, model_names)
    return (
        '<h2 id="roc">ROC curves (study level)</h2>'
        f'<figure><img alt="ROC curves per body part" src="data:image/png;base64,{png}">'
        "<figcaption>One panel per body part and overall; one line per model and the ensemble, "
        "AUC in the legend. Specialists appear in their body part's panel only. "
        "Panels with a single class have no curve.</figcaption></figure>"
    )


def _roc_figure(labelled: pd.DataFrame, model_names: list[str]) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    parts = _parts(labelled)
    panels = ["overall"] + sorted(set(parts.tolist()))
    lines = [(ENSEMBLE_NAME, "prob")] + [(n, f"prob__{n}") for n in model_names]
    lines = [(name, col) for name, col in lines if col in labelled.columns]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.1 * ncols, 3.1 * nrows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colours = [f"C{i}" for i in range(10)]
    labels = _numeric(labelled, "label")
    all_parts = set(parts.tolist())
    # A specialist's probabilities cover only its body part: in the overall
    # panel its curve would describe that part, so it is drawn per part only.
    covers_all = {col: set(parts[np.isfinite(_numeric(labelled, col))].tolist()) == all_parts for _, col in lines}
    for ax, panel in zip(axes.flat, panels):
        mask = np.ones(len(labelled), bool) if panel == "overall" else parts == panel
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--")
        ax.set_title(panel, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("1 − specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        drawn = 0
        for i, (name, col) in enumerate(lines):
            if panel == "overall" and not covers_all[col] and name != ENSEMBLE_NAME:
                continue
            probs = _numeric(labelled, col)
            keep = mask & np.isfinite(probs) & np.isfinite(labels)
            y, p = labels[keep].astype(int), probs[keep]
            if y.size == 0 or y.min() == y.max():
                continue
            fpr, tpr, _ = roc_curve(y, p)
            is_ensemble = name == ENSEMBLE_NAME
            ax.plot(
                fpr,
                tpr,
                color="black" if is_ensemble else colours[(i - 1) % 10],
                lw=1.8 if is_ensemble else 1.0,
                label=f"{name} ({roc_auc_score(y, p):.3f})",
                zorder=3 if is_ensemble else 2,
            )
            drawn += 1
        if drawn:
            ax.legend(loc="lower right", fontsize=6, title="AUC", title_fontsize=6, frameon=False)
        else:
            n = int(mask.sum())
            ax.text(0.5, 0.5, f"AUC n/a\n(one class, n={n})", ha="center", va="center", fontsize=8, color="0.3")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _confusion_section(labelled: pd.DataFrame, threshold: float) -> str:
    probs = _numeric(labelled, "prob")
    labels = _numeric(labelled, "label")
    keep = np.isfinite(probs) & np.isfinite(labels)
    if not keep.any():
        return ""
    parts = _parts(labelled)[keep]
    y = labels[keep].astype(int)
    pred = (probs[keep] > threshold).astype(int)
    tn, fp, fn, tp = (int(np.sum((y == a) & (pred == b))) for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)))
    matrix = (
        '<table class="confusion"><caption>ensemble, all body parts '
        f"(n = {int(keep.sum()):,})</caption>"
        '<tr><th></th><th>predicted normal</th><th>predicted abnormal</th><th class="num">total</th></tr>'
        f'<tr><th>normal</th><td class="hit">{tn:,}</td><td>{fp:,}</td><td class="num">{tn + fp:,}</td></tr>'
        f'<tr><th>abnormal</th><td>{fn:,}</td><td class="hit">{tp:,}</td><td class="num">{fn + tp:,}</td></tr>'
        f'<tr><th>total</th><td>{tn + fn:,}</td><td>{fp + tp:,}</td><td class="num">{tn + fp + fn + tp:,}</td></tr>'
        "</table>"
    )
    rows = []
    for part in sorted(set(parts.tolist())):
        m = parts == part
        yp, pp = y[m], pred[m]
        counts = [int(np.sum((yp == a) & (pp == b))) for a, b in ((1, 1), (0, 1), (1, 0), (0, 0))]
        rows.append([part, *(f"{c:,}" for c in counts), f"{int(m.sum()):,}"])
    per_part = _table(["body part", "TP", "FP", "FN", "TN", "n"], rows, caption="per body part", numeric_from=1)
    return (
        '<h2 id="confusion">Confusion matrix (ensemble, study level)</h2>'
        f'<p class="note">Rows: label; columns: prediction (probability &gt; {threshold:g}).</p>' + matrix + per_part
    )


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
    out = ['<h2 id="provenance">Provenance</h2>']
    if models:
        out.append("<h3>Models</h3>")
        overview = []
        for m in models:
            meta = dict(m.get("metadata") or {})

            def field(key: str, m=m, meta=meta) -> Any:
                value = m.get(key, meta.get(key, ""))
                return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value

            overview.append(
                [
                    str(m.get("name", "")),
                    str(field("plugin")),
                    str(field("body_parts") or "all (generalist)"),
                    str(field("input_size")),
                    str(field("resize_policy")),
                    str(field("threshold")),
                    str(field("quantization") or "fp32"),
                    str(field("sha256"))[:12],
                ]
            )
        out.append(
            _table(
                ["model", "plugin", "body parts", "input size", "resize", "threshold", "precision", "sha256"], overview
            )
        )
        for m in models:
            out.append(_model_details(m))
    if provenance:
        out.append("<h3>Run</h3>" + _kv_table(provenance))
    out.append("<h3>Report built with</h3>" + _kv_table(_library_versions()))
    return "\n".join(out)


def _model_details(model: Mapping[str, Any]) -> str:
    name = str(model.get("name", ""))
    parts = [f'<div class="model"><h3>{_e(name)}</h3>']
    if model.get("path"):
        parts.append(f'<p class="muted"><code>{_e(model["path"])}</code></p>')
    if model.get("sha256"):
        parts.append(f'<p class="muted">sha256 <code>{_e(model["sha256"])}</code></p>')
    meta = model.get("metadata") or {}
    if meta:
        parts.append(_kv_table(meta, caption="ONNX metadata"))
    card = model.get("card")
    if card:
        scalars = {k: v for k, v in card.items() if not isinstance(v, (dict, list, tuple))}
        nested = {k: v for k, v in card.items() if isinstance(v, (dict, list, tuple))}
        if scalars:
            parts.append(_kv_table(scalars, caption="card.json"))
        for key, value in nested.items():
            text = json.dumps(value, indent=1, sort_keys=False, default=str)
            if len(text) > MAX_CARD_JSON_CHARS:
                text = text[:MAX_CARD_JSON_CHARS] + "\n… (cut; see card.json)"
            parts.append(f'<div class="muted">card.json: <code>{_e(key)}</code></div><pre>{_e(text)}</pre>')
    elif model.get("card_error"):
        parts.append(f'<p class="note">card.json unreadable: {_e(model["card_error"])}</p>')
    else:
        parts.append('<p class="note">No card.json beside this model.</p>')
    parts.append("</div>")
    return "".join(parts)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


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
) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if numeric_from is not None and i >= numeric_from else ""

    rows = list(rows)
    parts = ["<table>"]
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
