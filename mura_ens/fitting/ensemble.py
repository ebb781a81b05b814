"""A fitted ensemble: its members, one :class:`PartModel` per body part, JSON form, and how it scores.

Applying it to a table with ``body_part`` and the members' ``prob__<model>``
columns (a ``studies.csv`` or an ``images.csv``), row by row:

1. a row of a part with fitted weights (status ``fitted`` or ``weights_only``):
   the weighted mean of that part's members over those present in the row
   (:func:`mura_ens.fitting.weights.pool`), then the part's calibrator, then
   ``prob > threshold`` with the part's threshold;
2. a row of a part at the plain mean's weights (``threshold_only``, ``plain_mean``):
   the plain mean of that part's members present in the row, then the part's
   calibrator and threshold;
   a row of a part absent from the fitting set, or of unknown body part (""):
   the plain mean of all members present in the row (``score`` leaves the
   columns of models that do not serve a part empty, so for a known part these
   are exactly its generalists and specialists: the ``body_part`` ensemble),
   then the *global* calibrator and the *global* threshold;
3. a row with no member probability gets NaN and no prediction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from .calibration import Calibrator
from .settings import FitSettings
from .weights import pool

FORMAT = "mura-ens/fitted-ensemble"
FORMAT_VERSION = 1
#: Part statuses: fitted weights and own threshold, one of them, or neither.
FITTED = "fitted"
WEIGHTS_ONLY = "weights_only"
THRESHOLD_ONLY = "threshold_only"
PLAIN_MEAN = "plain_mean"


def part_status(weights: bool, threshold: bool) -> str:
    """The status of a part that uses fitted (pooled or own) ``weights`` and/or its own ``threshold``."""
    if weights:
        return FITTED if threshold else WEIGHTS_ONLY
    return THRESHOLD_ONLY if threshold else PLAIN_MEAN


@dataclass(frozen=True)
class Member:
    """A model of the ensemble: its name (``prob__<name>`` column) and the sha256 of its ONNX file."""

    name: str
    sha256: str

    @property
    def column(self) -> str:
        """Its probability column in studies.csv / images.csv."""
        return f"prob__{self.name}"


@dataclass(frozen=True)
class PartModel:
    """How one body part's studies are combined.

    ``status`` is ``fitted``, ``weights_only``, ``threshold_only`` or
    ``plain_mean``; ``weights`` maps each member serving the part to the
    weight it gets (the plain mean's 1/m when the part uses no fitted weights);
    ``info`` holds what the fit measured (JSON-ready: unshrunk weights, shrink
    factors, raw threshold, cross-validated quality) and ``notes`` says why.
    """

    status: str
    weights: dict[str, float]
    calibrator: Calibrator
    threshold: float
    n_studies: int
    n_positive: int
    info: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def uses_weights(self) -> bool:
        """Whether the part's weights are fitted (``fitted``, ``weights_only``), not the plain mean."""
        return self.status in (FITTED, WEIGHTS_ONLY)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (see docs/ensembles.md)."""
        return {
            "status": self.status,
            "n_studies": self.n_studies,
            "n_positive": self.n_positive,
            "weights": dict(self.weights),
            "calibrator": self.calibrator.to_dict(),
            "threshold": self.threshold,
            **self.info,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartModel:
        """Inverse of :meth:`to_dict` (checked by :func:`mura_ens.fitting.validate.check_part` when loaded)."""
        known = {"status", "n_studies", "n_positive", "weights", "calibrator", "threshold", "notes"}
        return cls(
            status=data["status"],
            weights={str(k): float(v) for k, v in data["weights"].items()},
            calibrator=Calibrator.from_dict(data["calibrator"]),
            threshold=float(data["threshold"]),
            n_studies=int(data["n_studies"]),
            n_positive=int(data["n_positive"]),
            info={k: v for k, v in data.items() if k not in known},
            notes=tuple(str(n) for n in data.get("notes", ())),
        )


@dataclass(frozen=True)
class FittedEnsemble:
    """Everything ``score --ensemble fitted`` needs, and a record of how it was fitted.

    ``fitting`` holds the fitting set's ``n_studies``, ``n_positive``,
    ``sha256`` (of its sorted ``study<TAB>label`` lines), ``by_body_part``
    counts and ``studies`` (the study keys, sorted).
    """

    members: tuple[Member, ...]
    parts: dict[str, PartModel]
    global_calibrator: Calibrator
    global_threshold: float
    settings: FitSettings
    fitting: dict[str, Any]
    mura_ens_version: str
    notes: tuple[str, ...] = ()
    #: what the fit measured about the global threshold (its own value, shrink factor, guard), JSON-ready
    global_info: dict[str, Any] = field(default_factory=dict)
    #: how the fitting studies were scored (``fp32``/``int8``, ``none``/``flip``); None = unknown (older files)
    precision: str | None = None
    tta: str | None = None
    #: the fitting studies' out-of-fold ``prob`` and ``pred`` of what each part uses (what the table's CV
    #: columns are computed from; ``fit-ensemble --oof FILE`` writes it); None when loaded from a file
    out_of_fold: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    # ---- scoring -------------------------------------------------------------------------------
    def apply(self, frame: pd.DataFrame) -> tuple[np.ndarray, pd.api.extensions.ExtensionArray]:
        """``(prob, pred)`` for each row of ``frame`` (see the module doc for the arithmetic).

        ``frame`` needs ``body_part`` and every member's ``prob__<model>``
        column. ``prob`` is float64 (NaN where no member has a probability),
        ``pred`` a nullable Int64 array (``prob > threshold``, NA where prob is NaN).
        """
        P, parts = self._matrix(frame)
        prob = np.full(len(frame), np.nan)
        threshold = np.full(len(frame), self.global_threshold)
        index = {m.name: j for j, m in enumerate(self.members)}
        for part in dict.fromkeys(parts.tolist()):
            rows = parts == part
            model = self.parts.get(part)
            if model is None:  # a part the fit never saw, or unknown: plain mean of what is present
                prob[rows] = self.global_calibrator.apply(pool(P[rows], np.zeros(P.shape[1])))
                continue
            cols = [index[name] for name in model.weights]
            # weights of 0 make pool() take the plain mean of the members present
            w = np.array(list(model.weights.values()), dtype=np.float64) if model.uses_weights else np.zeros(len(cols))
            prob[rows] = model.calibrator.apply(pool(P[np.ix_(rows, cols)], w))
            threshold[rows] = model.threshold
        pred = pd.array([pd.NA if np.isnan(p) else int(p > t) for p, t in zip(prob, threshold)], dtype="Int64")
        return prob, pred

    def thresholds(self, body_parts: Iterable[str]) -> np.ndarray:
        """The threshold each row's prediction uses, from its body part (the global one for parts the fit never saw)."""
        out = []
        for part in body_parts:
            model = self.parts.get(_part(part))
            out.append(self.global_threshold if model is None else model.threshold)
        return np.array(out, dtype=np.float64)

    def _matrix(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        missing = [m.column for m in self.members if m.column not in frame.columns]
        if "body_part" not in frame.columns:
            missing.insert(0, "body_part")
        if missing:
            raise UsageError(f"the table lacks column(s) the fitted ensemble needs: {', '.join(missing)}")
        P = frame[[m.column for m in self.members]].to_numpy(dtype=np.float64, na_value=np.nan)
        parts = np.array([_part(v) for v in frame["body_part"].tolist()], dtype=object)
        return P, parts

    # ---- checks --------------------------------------------------------------------------------
    def check_members(self, available: Mapping[str, str], *, allow_extra: bool = False) -> None:
        """Refuse (one-line :class:`UsageError`) models that do not match the members.

        ``available`` maps each model found (name) to its sha256. Missing
        members, members whose sha256 differs and (unless ``allow_extra``)
        models that are not members are all named in the message.
        """
        problems = []
        missing = [m.name for m in self.members if m.name not in available]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        changed = [
            f"{m.name} (ensemble {m.sha256[:12]}, found {str(available[m.name])[:12]})"
            for m in self.members
            if m.name in available and available[m.name] != m.sha256
        ]
        if changed:
            problems.append(f"different sha256 for {', '.join(changed)}")
        names = {m.name for m in self.members}
        extra = [name for name in available if name not in names]
        if extra and not allow_extra:
            problems.append(f"not in the ensemble: {', '.join(extra)}")
        if problems:
            raise UsageError("the models do not match the fitted ensemble's members: " + "; ".join(problems))

    def scoring_mismatches(self, precision: str, tta: str) -> list[str]:
        """How scoring with ``precision`` and ``tta`` differs from what the ensemble was fitted on (empty: same).

        A file that does not record them (fitted before they were recorded) is never a mismatch: see
        :meth:`unknown_scoring`.
        """
        out = []
        if self.precision is not None and self.precision != precision:
            out.append(f"precision {precision} (fitted on {self.precision} scores)")
        if self.tta is not None and self.tta != tta:
            out.append(f"--tta {tta} (fitted on --tta {self.tta} scores)")
        return out

    def unknown_scoring(self) -> list[str]:
        """Which of precision / TTA the file does not record."""
        return [name for name, value in (("precision", self.precision), ("TTA", self.tta)) if value is None]

    def overlap(self, study_keys: Iterable[str]) -> int:
        """How many of ``study_keys`` (distinct) were in the fitting set."""
        fitted = set(self.fitting.get("studies", ()))
        return len({str(k) for k in study_keys} & fitted)

    # ---- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict written to ``ensemble.json`` (layout: docs/ensembles.md)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "mura_ens_version": self.mura_ens_version,
            "settings": self.settings.to_dict(),
            "members": [{"name": m.name, "sha256": m.sha256} for m in self.members],
            "precision": self.precision,
            "tta": self.tta,
            "global": {
                "calibrator": self.global_calibrator.to_dict(),
                "threshold": self.global_threshold,
                **self.global_info,
            },
            "parts": {part: model.to_dict() for part, model in self.parts.items()},
            "fitting": self.fitting,
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """``ensemble.json``'s text (floats written exactly, NaN never)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FittedEnsemble:
        """Inverse of :meth:`to_dict`; every field is checked first (:mod:`mura_ens.fitting.validate`).

        A wrong format or a bad field is a one-line :class:`UsageError` naming the field and its value.
        Files without ``precision`` / ``tta`` (fitted before they were recorded) load with both None (unknown).
        """
        from .validate import check_ensemble_dict

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f'not a fitted ensemble (no "format": "{FORMAT}")')
        if data.get("format_version") != FORMAT_VERSION:
            raise UsageError(f"unsupported fitted ensemble format_version {data.get('format_version')!r}")
        check_ensemble_dict(data)
        try:
            settings = FitSettings.from_dict(data["settings"])
        except (UsageError, TypeError) as exc:
            raise UsageError(f"settings: {exc}") from None
        return cls(
            members=tuple(Member(str(m["name"]), str(m["sha256"])) for m in data["members"]),
            parts={str(p): PartModel.from_dict(v) for p, v in data["parts"].items()},
            global_calibrator=Calibrator.from_dict(data["global"]["calibrator"]),
            global_threshold=float(data["global"]["threshold"]),
            settings=settings,
            fitting=dict(data["fitting"]),
            mura_ens_version=str(data["mura_ens_version"]),
            notes=tuple(str(n) for n in data.get("notes", ())),
            global_info={k: v for k, v in data["global"].items() if k not in ("calibrator", "threshold")},
            precision=data.get("precision"),
            tta=data.get("tta"),
        )

    @classmethod
    def from_json(cls, text: str) -> FittedEnsemble:
        """Parse ``ensemble.json``'s text."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``ensemble.json`` atomically and return its path."""
        from ..io import atomic_write_text

        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedEnsemble:
        """Read ``ensemble.json``; any problem is a one-line :class:`UsageError` naming the file."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"ensemble file not found: {path}")
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read ensemble file {path}: {exc}") from None


def _part(value: Any) -> str:
    """A body part cell as text: NaN/None/NA -> "" (unknown)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()
