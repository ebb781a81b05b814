"""``score --explain K``: which studies get heatmaps, and how much each model weighs in a study's heatmap.

Selection (:func:`select_studies`), over the studies with an ensemble
probability (status ``ok``):

- ``highest_probability``: the K studies of highest ensemble ``prob``;
- when the input has labels, ``false_positive``: the K studies labelled 0 and
  predicted 1 of highest ``prob`` (the most confident false alarms), and
  ``false_negative``: the K studies labelled 1 and predicted 0 of lowest
  ``prob`` (the most confident misses). ``pred`` is the run's own prediction
  (with ``--ensemble fitted`` its per-part thresholds).

With ``every_abnormal`` (``--explain all``), first every study labelled 1
(``labelled_abnormal``: what ``mura-ens explain-eval`` needs, an unbiased set), then the
groups above; on unlabelled input that is just the groups above.

Ties keep the order of ``studies.csv``. A study in several groups is selected
once with all its reasons, in the order above.

Member weights (:func:`member_weights`): the models the ensemble combined for
the study (:func:`mura_ens.scoring.ensemble.members`): ``body_part`` and
``mean`` give them equal weights; ``fitted`` gives them its per-part weights
(equal weights for a part the fit kept at the plain mean or never saw, as
:meth:`mura_ens.fitting.FittedEnsemble.apply` does). Members that cannot
explain are left out and the rest renormalised to sum to 1; when the ones left
all have weight 0 they share the weight equally (as :func:`mura_ens.fitting.weights.pool`
does for probabilities).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..fitting.ensemble import WEIGHTS_ONLY
from .ensemble import FITTED, members

if TYPE_CHECKING:
    import pandas as pd

    from ..fitting.ensemble import FittedEnsemble
    from .models import ModelSpec

#: Why a study was selected, in the order they are listed.
LABELLED_ABNORMAL = "labelled_abnormal"
HIGHEST = "highest_probability"
FALSE_POSITIVE = "false_positive"
FALSE_NEGATIVE = "false_negative"
REASONS: tuple[str, ...] = (LABELLED_ABNORMAL, HIGHEST, FALSE_POSITIVE, FALSE_NEGATIVE)
#: ``--explain all``: K of the groups besides every labelled abnormal study.
ALL_K = 5


@dataclass(frozen=True)
class SelectedStudy:
    """One study chosen for heatmaps: its key, the reasons (in :data:`REASONS` order) and its row in the study table."""

    study: str
    reasons: tuple[str, ...]
    row: int  # position in the study table


def select_studies(studies: pd.DataFrame, k: int, *, every_abnormal: bool = False) -> list[SelectedStudy]:
    """The studies of ``studies`` (the rows of ``studies.csv``) to explain, see the module doc.

    Returned in order: with ``every_abnormal`` the labelled abnormal studies (table order), then the top-K
    (highest probability first), then the false positives, then the false negatives not already listed.
    """
    import numpy as np
    import pandas as pd

    if (k < 1 and not every_abnormal) or studies.empty:
        return []
    prob = pd.to_numeric(studies["prob"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    usable = np.isfinite(prob) & (studies["status"].astype("string").fillna("") == "ok").to_numpy()
    label = _int_column(studies, "label")
    pred = _int_column(studies, "pred")
    false_pos = usable & (label == 0) & (pred == 1)
    false_neg = usable & (label == 1) & (pred == 0)
    abnormal = usable & (label == 1) if every_abnormal else np.zeros(len(prob), bool)
    groups = {  # (rows, sort key): highest probability first, except the misses: lowest first
        LABELLED_ABNORMAL: (abnormal, np.zeros(len(prob))),
        HIGHEST: (usable, -prob),
        FALSE_POSITIVE: (false_pos, -prob),
        FALSE_NEGATIVE: (false_neg, prob),
    }
    reasons: dict[int, list[str]] = {}
    for reason in REASONS:
        rows, key = groups[reason]
        for row in _ranked(np.flatnonzero(rows), key[rows], len(prob) if reason == LABELLED_ABNORMAL else k):
            reasons.setdefault(row, []).append(reason)
    keys = studies["study"].astype("string").fillna("").to_numpy(dtype=object)
    return [SelectedStudy(str(keys[row]), tuple(why), row) for row, why in reasons.items()]


def _ranked(rows, keys, k: int) -> list[int]:
    """The first ``k`` of ``rows`` sorted by ``keys`` (stable: ties keep the table's order)."""
    import numpy as np

    return [int(r) for r in rows[np.argsort(keys, kind="stable")][:k]]


def _int_column(frame: pd.DataFrame, column: str):
    """A nullable integer column as float64 (NaN where missing; all NaN when absent)."""
    import numpy as np
    import pandas as pd

    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def member_weights(
    ensemble: str,
    models: Sequence[ModelSpec],
    body_part: str,
    *,
    explainable: Collection[str],
    fitted: FittedEnsemble | None = None,
) -> dict[str, float]:
    """Weight of each model in a study's ensemble heatmap: ``{model name: weight}``, summing to 1 (see the module doc).

    Only models named in ``explainable`` appear; empty when none of the study's members can explain.
    """
    names = [m.name for m in members(ensemble, models, body_part) if m.name in explainable]
    if not names:
        return {}
    raw = dict.fromkeys(names, 1.0)
    if ensemble == FITTED and fitted is not None:
        part = fitted.parts.get(body_part)
        if part is not None and part.status in (FITTED, WEIGHTS_ONLY):  # the part's fitted (pooled) weights
            raw = {name: float(part.weights.get(name, 0.0)) for name in names}
    total = sum(raw.values())
    if total <= 0:
        return {name: 1.0 / len(names) for name in names}
    return {name: value / total for name, value in raw.items()}
