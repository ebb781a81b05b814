"""The fitting set: a labelled studies table (as ``score`` writes it) checked and turned into arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import UsageError
from .ensemble import Member

PROB_PREFIX = "prob__"


@dataclass
class FittingTable:
    """Usable studies: keys, patients (CV groups), body parts ("" = unknown), labels, member probabilities.

    ``P`` has one column per member (NaN where a model did not score the
    study); ``part_members`` maps each body part to the indices of the members
    with a probability for its studies; every kept row has all of them.
    """

    study: np.ndarray
    patient: np.ndarray
    part: np.ndarray
    y: np.ndarray
    P: np.ndarray
    part_members: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_member_list(members: Sequence[Member]) -> None:
    """Refuse an empty member list, repeated names or an empty sha256."""
    if not members:
        raise UsageError("no ensemble members given")
    names = [m.name for m in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"member names must be unique, repeated: {', '.join(repeated)}")
    no_sha = [m.name for m in members if not m.sha256]
    if no_sha:
        raise UsageError(f"member(s) without a sha256: {', '.join(no_sha)}")


def fitting_table(studies: pd.DataFrame, members: Sequence[Member]) -> FittingTable:
    """Check ``studies`` against ``members`` and keep the labelled, scored studies.

    Needs ``study``, ``body_part``, ``label`` and each member's
    ``prob__<model>``; a ``prob__`` column of no member, repeated study keys,
    labels other than 0/1 and probabilities outside [0, 1] are refused.
    Rows with ``status`` other than ``ok``, no label or no member probability
    are left out (counted in ``notes``). Without a ``patient`` column each
    study is its own patient.
    """
    check_member_list(members)
    missing = [c for c in ("study", "body_part", "label") if c not in studies.columns]
    missing += [m.column for m in members if m.column not in studies.columns]
    if missing:
        raise UsageError(f"the studies table lacks column(s): {', '.join(missing)}")
    columns = {m.column for m in members}
    stray = [c for c in studies.columns if str(c).startswith(PROB_PREFIX) and c not in columns]
    if stray:
        names = ", ".join(c[len(PROB_PREFIX) :] for c in stray)
        raise UsageError(f"the studies table has probabilities of model(s) that are not members: {names}")
    study = studies["study"].astype("string").fillna("").str.strip()
    repeated = study[study.duplicated()].unique().tolist()
    if repeated:
        raise UsageError(f"repeated study key(s) in the studies table: {', '.join(map(str, repeated[:5]))}")
    label = pd.to_numeric(studies["label"], errors="coerce")
    bad = studies["label"][label.notna() & ~label.isin([0, 1]) | (label.isna() & _filled(studies["label"]))]
    if len(bad):
        raise UsageError(f"labels must be 0 or 1 (or empty), got {bad.iloc[0]!r}")
    P = studies[[m.column for m in members]].to_numpy(dtype=np.float64, na_value=np.nan)
    outside = P[~np.isnan(P) & ((P < 0) | (P > 1))]
    if outside.size:
        raise UsageError(f"probabilities must be in [0, 1], got {float(outside[0])!r}")

    notes: list[str] = []
    keep = label.notna().to_numpy(dtype=bool, copy=True)
    _count(notes, ~keep, "unlabelled")
    if "status" in studies.columns:
        ok = (studies["status"].astype("string").fillna("") == "ok").to_numpy()
        _count(notes, keep & ~ok, "not scored (status other than ok)")
        keep &= ok
    scored = ~np.isnan(P).all(axis=1)
    _count(notes, keep & ~scored, "without any member probability")
    keep &= scored
    part = studies["body_part"].astype("string").fillna("").str.strip().to_numpy(dtype=object)
    if "patient" in studies.columns:
        patient = studies["patient"].astype("string").fillna("").to_numpy(dtype=object)
    else:
        patient = np.array([""] * len(studies), dtype=object)
        notes.append("no patient column: each study is its own patient in cross-validation")
    patient = np.where(patient == "", study.to_numpy(dtype=object), patient)
    return _complete(
        FittingTable(
            study=study.to_numpy(dtype=object)[keep],
            patient=patient[keep],
            part=part[keep],
            y=label.to_numpy(dtype=np.float64, na_value=np.nan)[keep].astype(np.int64),
            P=P[keep],
            notes=notes,
        )
    )


def _filled(column: pd.Series) -> pd.Series:
    return column.notna() & (column.astype("string").str.strip() != "")


def _count(notes: list[str], mask: np.ndarray, what: str) -> None:
    n = int(np.sum(mask))
    if n:
        notes.append(f"{n} stud{'y' if n == 1 else 'ies'} {what}: left out of the fit")


def _complete(table: FittingTable) -> FittingTable:
    """Find each part's members; leave out rows that lack one of them."""
    keep = np.ones(len(table.y), dtype=bool)
    present = ~np.isnan(table.P)
    for part in sorted(set(table.part.tolist())):
        rows = table.part == part
        cols = [int(j) for j in np.flatnonzero(present[rows].any(axis=0))]
        table.part_members[part] = cols
        incomplete = rows & ~present[:, cols].all(axis=1)
        keep &= ~incomplete
        _count(table.notes, incomplete, f"of {part or 'unknown body part'} missing a member's probability")
    if not keep.all():
        table.study, table.patient, table.part = table.study[keep], table.patient[keep], table.part[keep]
        table.y, table.P = table.y[keep], table.P[keep]
    if not len(table.y):
        raise UsageError("no labelled, scored studies in the studies table: nothing to fit")
    return table
