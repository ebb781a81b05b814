"""Is a cross-validated gain more than noise? A paired patient bootstrap of the out-of-fold predictions.

Every guard in :mod:`mura_ens.fitting.fit` compares a fitted choice (weights,
a part's own threshold, the global threshold) with the plain one on the same
out-of-fold studies. On 15-25 studies per part a gain of one study is noise,
so a gain counts only when it survives resampling: the patients are drawn
with replacement ``RESAMPLES`` times (seeded; a patient's studies travel
together, as in the folds), the gain is recomputed on each resample from the
*same* out-of-fold predictions (paired), and the fitted choice is kept only
when the gain on all studies is positive and the resampled gain is positive
in at least ``CONFIDENCE`` of the resamples where it is defined (a one-sided
paired bootstrap test at the 10% level). A gain carried by a single study is
absent from the ~37% of resamples that leave that study out, so it never passes.
The rule was fixed before looking at any held-out result (docs/ensembles.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .calibration import EPS

#: a gain must be larger than this to count (a tie keeps the plain choice)
TIE = 1e-9
#: patient resamples of the paired bootstrap
RESAMPLES = 1000
#: share of resamples in which the gain must be positive
CONFIDENCE = 0.9
#: how guards name the rule in ``ensemble.json``
RULE = f"paired patient bootstrap: gain > 0 in >= {CONFIDENCE:.0%} of {RESAMPLES} resamples"


def patient_resamples(groups: np.ndarray, seed: int, n_boot: int = RESAMPLES) -> np.ndarray:
    """(n_boot, n) copies of each study per resample, drawing patients with replacement (a patient's studies together)."""
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    k = int(index.max()) + 1 if len(index) else 0
    if k == 0:
        return np.zeros((0, 0))
    draws = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=n_boot)
    return draws[:, index].astype(np.float64)


def study_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each study's binary cross-entropy, ``p`` clipped to [EPS, 1 - EPS] as in the fit."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def resampled_mean(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The mean of per-study ``values`` on each resample (a row of ``counts``)."""
    n = counts.sum(axis=1)
    return np.divide(counts @ values, n, out=np.full(len(counts), np.nan), where=n > 0)


def judge(gain: float | None, resampled: np.ndarray) -> dict[str, Any]:
    """The guard's verdict on a gain (fitted minus plain, larger is better) and its resampled values (NaN = undefined).

    ``kept`` when ``gain > TIE`` and the share of defined resamples with a gain
    above ``TIE`` is at least ``CONFIDENCE``; the dict records the numbers and the rule.
    """
    defined = resampled[~np.isnan(resampled)]
    share = float(np.mean(defined > TIE)) if len(defined) else None
    kept = gain is not None and share is not None and gain > TIE and share >= CONFIDENCE
    return {
        "kept": bool(kept),
        "gain": None if gain is None else float(gain),
        "share_positive": share,
        "resamples": len(defined),
        "rule": RULE,
    }


def verdict(judged: dict[str, Any]) -> str:
    """Why a judged gain was not enough, for a note (``gain +0.031, positive in 64% of resamples < 90%``)."""
    gain, share = judged.get("gain"), judged.get("share_positive")
    if gain is None or share is None:
        return "gain not measurable"
    if gain <= TIE:
        return f"gain {gain:+.3f}"
    return f"gain {gain:+.3f} positive in only {share:.0%} of patient resamples (< {CONFIDENCE:.0%})"
