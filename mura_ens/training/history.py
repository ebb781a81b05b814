"""Per-epoch records: the ``history.tsv`` format, the progress line and ``curves.png``.

No Keras here; the callbacks that fill these live in ``callbacks.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

#: Columns of ``history.tsv``; metrics are unweighted, ``lr`` is the rate used in that epoch. An undefined
#: value (the AUC or kappa of a one-class fold, a loss of no batch) is an empty cell (``None`` when read back).
HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch",
    "loss",
    "auc",
    "accuracy",
    "kappa",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "val_kappa",
    "lr",
    "seconds",
)


def history_tsv(rows: list[dict]) -> str:
    """Rows (dicts keyed by :data:`HISTORY_COLUMNS`) as TSV text with a header."""
    lines = ["\t".join(HISTORY_COLUMNS)]
    for row in rows:
        cells = []
        for column in HISTORY_COLUMNS:
            value = row.get(column)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("")
            elif column == "epoch":
                cells.append(str(int(value)))
            else:
                cells.append(f"{float(value):.6g}")
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def read_history(path: str | Path) -> list[dict]:
    """Read ``history.tsv`` back into a list of dicts (floats; ``epoch`` int; empty = None)."""
    text = Path(path).read_text(encoding="utf-8").splitlines()
    header = text[0].split("\t")
    rows = []
    for line in text[1:]:
        if not line.strip():
            continue
        row = {}
        for key, cell in zip(header, line.split("\t")):
            row[key] = None if cell == "" else (int(cell) if key == "epoch" else float(cell))
        rows.append(row)
    return rows


def progress_line(row: dict, epochs: int, *, best: bool) -> str:
    """``epoch 3/20  loss 0.612 auc 0.710 acc 0.660 kappa 0.310 | val ... | lr 1e-03 | 12.3 s *``.

    An undefined value (None or NaN: e.g. the AUC of a one-class fold) is shown as ``n/a``, never as a number.
    """

    def fmt(key: str) -> str:
        value = row.get(key)
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    train = f"loss {fmt('loss')} auc {fmt('auc')} acc {fmt('accuracy')} kappa {fmt('kappa')}"
    val = f"val loss {fmt('val_loss')} auc {fmt('val_auc')} acc {fmt('val_accuracy')} kappa {fmt('val_kappa')}"
    width = len(str(epochs))
    mark = "  * best val_loss" if best else ""
    return (
        f"epoch {row['epoch']:>{width}}/{epochs}  {train} | {val} | lr {row['lr']:.1e} | {row['seconds']:.1f} s{mark}"
    )


def plot_curves(rows: list[dict], path: str | Path, *, title: str = "", weighted_loss: bool = True) -> Path:
    """``curves.png``: loss, AUC and kappa per epoch, train vs val (matplotlib, Agg backend)."""
    import io

    # A bare Figure renders through Agg without touching pyplot's global backend.
    from matplotlib.figure import Figure

    from ..io import atomic_write_bytes

    epochs = [row["epoch"] for row in rows]
    figure = Figure(figsize=(12, 3.6), dpi=100)
    for index, (key, label) in enumerate(
        (
            ("loss", "loss (class-weighted BCE)" if weighted_loss else "loss (BCE)"),
            ("auc", "ROC AUC"),
            ("kappa", "Cohen's kappa"),
        )
    ):
        axes = figure.add_subplot(1, 3, index + 1)
        for prefix, style, name in (("", "-o", "train"), ("val_", "-s", "val")):
            values = [math.nan if row.get(prefix + key) is None else float(row[prefix + key]) for row in rows]
            axes.plot(epochs, values, style, markersize=3, label=name)
        axes.set_xlabel("epoch")
        axes.set_title(label)
        axes.grid(alpha=0.3)
        if epochs:
            axes.set_xlim(0.5, max(epochs) + 0.5)
        axes.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
