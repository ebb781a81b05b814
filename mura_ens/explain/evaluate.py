"""How well heatmaps point at ground-truth findings (``mura-ens explain-eval``, ``score --findings``).

Pure NumPy/pandas. For each image whose finding is visible (a row of ``findings.csv``: ``path``, ``kind``,
``x0, y0, x1, y1`` in the stored image's pixels, inclusive) and each map of it (the ensemble's
``heatmaps/<study>/<image>.npy``, each model's in ``<image>.models.npz``, all on the stored image's grid):

- **pointing game**: a hit when the map's maximum lies inside one of the image's boxes grown by
  :data:`GROW` pixels on every side (clipped to the image): ``max(M[grown boxes]) == max(M) > 0``. An
  all-zero (or non-finite) map is a miss.
- **energy share**: ``sum(M+ inside the boxes) / sum(M+)`` (``M+ = max(M, 0)``; boxes not grown; 0 for an
  all-zero map).
- **random baselines**: the share of the image the grown boxes cover (the pointing-game hit rate of a
  uniformly random point) and the share the boxes cover (the energy share of a uniform map).

Rates are means over images; 95% intervals are percentile bootstrap intervals resampling *patients* (all of a
patient's images together), :data:`N_BOOT` resamples, seeded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

#: Pixels each box is grown by on every side for the pointing game.
GROW = 15
#: Bootstrap resamples of the intervals.
N_BOOT = 2000
#: The columns ``findings.csv`` must have.
FINDINGS_COLUMNS: tuple[str, ...] = ("path", "kind", "x0", "y0", "x1", "y1")
#: The metrics, in the order they are shown.
METRICS: tuple[str, ...] = ("pointing_game", "pointing_baseline", "energy_share", "energy_baseline")

Box = tuple[int, int, int, int]


def _mask(shape: tuple[int, int], boxes: Sequence[Box], grow: int = 0) -> np.ndarray:
    """Boolean (H, W) mask of the union of ``boxes`` (x0, y0, x1, y1 inclusive) grown by ``grow``, clipped."""
    mask = np.zeros(shape, dtype=bool)
    height, width = shape
    for x0, y0, x1, y1 in boxes:
        left, top = max(0, min(x0, x1) - grow), max(0, min(y0, y1) - grow)
        right, bottom = min(width - 1, max(x0, x1) + grow), min(height - 1, max(y0, y1) + grow)
        if left <= right and top <= bottom:
            mask[top : bottom + 1, left : right + 1] = True
    return mask


def pointing_hit(heat: np.ndarray, boxes: Sequence[Box], grow: int = GROW) -> bool:
    """Whether the maximum of ``heat`` (H, W) lies inside one of ``boxes`` grown by ``grow`` px (module doc)."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(heat.max(initial=0.0))
    inside = _mask(heat.shape, boxes, grow)
    return bool(top > 0 and inside.any() and float(heat[inside].max()) >= top)


def energy_share(heat: np.ndarray, boxes: Sequence[Box]) -> float:
    """The share of the map's positive mass inside ``boxes`` (0 for an all-zero map)."""
    heat = np.maximum(np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    total = float(heat.sum())
    if total <= 0:
        return 0.0
    return float(heat[_mask(heat.shape, boxes)].sum()) / total


def area_share(shape: tuple[int, int], boxes: Sequence[Box], grow: int = 0) -> float:
    """The share of an (H, W) image the boxes (grown by ``grow``) cover: a random baseline."""
    return float(_mask(shape, boxes, grow).mean())


def image_scores(heat: np.ndarray, boxes: Sequence[Box], grow: int = GROW) -> dict[str, float]:
    """The four per-image figures of :data:`METRICS` for one map and its image's boxes."""
    shape = tuple(np.shape(heat))
    return {
        "pointing_game": float(pointing_hit(heat, boxes, grow)),
        "pointing_baseline": area_share(shape, boxes, grow),
        "energy_share": energy_share(heat, boxes),
        "energy_baseline": area_share(shape, boxes),
    }


def bootstrap_ci(values: np.ndarray, groups: Sequence[str], n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean of ``values`` resampling ``groups`` (patients) with replacement."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return [float("nan"), float("nan")]
    keys, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(keys))
    counts = np.bincount(index, minlength=len(keys)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), (n_boot, len(keys)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


_PATIENT = re.compile(r"patient[^/\\]*", re.IGNORECASE)


def patient_of(path: str) -> str:
    """The patient of an image path (its ``patient...`` folder; else its study folder's parent)."""
    found = _PATIENT.findall(str(path).replace("\\", "/"))
    if found:
        return found[-1]
    parts = PurePosixPath(str(path).replace("\\", "/")).parts
    return "/".join(parts[-4:-2]) if len(parts) >= 4 else str(path)


def path_key(path: str, depth: int) -> str:
    """The last ``depth`` components of ``path`` (``/``-separated): the suffix images are matched on."""
    return "/".join(PurePosixPath(str(path).replace("\\", "/")).parts[-depth:])


@dataclass(frozen=True)
class Findings:
    """The boxes of ``findings.csv`` by image: ``boxes[key]`` (key: :func:`path_key` of depth 5 and 4)."""

    boxes: Mapping[str, tuple[Box, ...]]
    rows: int

    @classmethod
    def from_frame(cls, frame: Any) -> Findings:
        """From the rows of ``findings.csv``; ``ValueError`` naming the missing columns."""
        missing = [c for c in FINDINGS_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"missing column(s) {', '.join(missing)}")
        boxes: dict[str, list[Box]] = {}
        for row in frame.itertuples(index=False):
            box = (int(row.x0), int(row.y0), int(row.x1), int(row.y1))
            for depth in (5, 4):
                boxes.setdefault(f"{depth}:{path_key(str(row.path), depth)}", []).append(box)
        return cls({key: tuple(found) for key, found in boxes.items()}, len(frame))

    def of(self, path: str) -> tuple[Box, ...]:
        """The boxes of the image at ``path`` (matched on its last 5, else 4, path components); () if none."""
        for depth in (5, 4):
            found = self.boxes.get(f"{depth}:{path_key(path, depth)}")
            if found:
                return found
        return ()


def summarise(scores: Mapping[str, Sequence[Mapping[str, float]]], patients: Mapping[str, Sequence[str]]) -> dict:
    """Per map source (``ensemble`` and each model): n images, n patients, and for each metric its mean and
    patient-bootstrap 95% interval."""
    table: dict[str, Any] = {}
    for source, rows in scores.items():
        groups = list(patients[source])
        entry: dict[str, Any] = {"images": len(rows), "patients": len(set(groups))}
        for metric in METRICS:
            values = np.array([row[metric] for row in rows], dtype=np.float64)
            mean = float(values.mean()) if len(values) else float("nan")
            entry[metric] = {"mean": mean, "ci95": bootstrap_ci(values, groups)}
        table[source] = entry
    return table


#: The file ``explain-eval`` (and ``score --findings``) writes.
EVAL_FILE = "explain_eval.json"
ENSEMBLE = "ensemble"


def read_findings(path: str | Path) -> Findings:
    """``findings.csv`` as :class:`Findings`; :class:`~mura_ens.errors.UsageError` (one line) when it is missing,
    unreadable or lacks a column."""
    import pandas as pd

    from ..errors import UsageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"findings file {path} does not exist")
    try:
        return Findings.from_frame(pd.read_csv(path))
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UsageError(f"cannot read findings file {path}: {str(exc).splitlines()[0]}") from None


def evaluate_heatmaps(heatmaps_dir: str | Path, findings: Findings, *, grow: int = GROW) -> dict[str, Any]:
    """Score the raw maps of a ``heatmaps/`` folder (its ``index.csv``, ``.npy`` and ``.models.npz`` files)
    against ``findings``: see the module doc. :class:`~mura_ens.errors.UsageError` when there is no index or no
    explained image has a finding."""
    import pandas as pd

    from ..errors import UsageError

    folder = Path(heatmaps_dir)
    index_path = folder / "index.csv"
    if not index_path.is_file():
        raise UsageError(f"no {index_path}: score with --explain all first (it writes the raw maps)")
    index = pd.read_csv(index_path, keep_default_na=False)
    if "npy" not in index.columns:
        raise UsageError(f"{index_path} has no raw maps (.npy): score again with this mura-ens and --explain all")
    index = index.loc[index["npy"].astype(str) != ""]
    scores: dict[str, list[dict[str, float]]] = {}
    patients: dict[str, list[str]] = {}
    for row in index.itertuples(index=False):
        boxes = findings.of(str(row.image))
        if not boxes:
            continue
        patient = patient_of(str(row.image))
        maps = {ENSEMBLE: np.load(_inside(folder, str(row.npy)))}
        with np.load(_inside(folder, str(row.models_npz))) as members:
            maps.update({name: members[name] for name in members.files})
        for source, heat in maps.items():
            scores.setdefault(source, []).append(image_scores(heat, boxes, grow))
            patients.setdefault(source, []).append(patient)
    if not scores:
        raise UsageError(
            f"none of the {len(index)} explained images of {index_path} has a row in the findings file "
            "(paths are matched on their last 5, else 4, components, e.g. valid/XR_WRIST/patient1/study1_positive/"
            "image1.png); were the abnormal studies explained (--explain all)?"
        )
    return {"grow_px": grow, "n_boot": N_BOOT, "findings_rows": findings.rows, "sources": summarise(scores, patients)}


def _inside(folder: Path, relative: str) -> Path:
    """A file named in ``index.csv`` (relative to the scored folder: ``heatmaps/<study>/<file>``) in ``folder``
    (the heatmaps folder, whatever its name: also a staged one)."""
    parts = PurePosixPath(relative).parts
    return folder.joinpath(*parts[1:]) if len(parts) > 1 else folder / relative


def explain_eval(scored_dir: str | Path, findings_csv: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """``mura-ens explain-eval``: score ``SCORED_DIR/heatmaps`` against ``findings_csv``; write the result as JSON
    to ``out`` (default ``SCORED_DIR/explain_eval.json``) and return it (with ``path``)."""
    from ..errors import UsageError
    from ..io import atomic_write_json

    scored = Path(scored_dir)
    if not scored.is_dir():
        raise UsageError(f"scored folder {scored} does not exist")
    result = evaluate_heatmaps(scored / "heatmaps", read_findings(findings_csv))
    target = Path(out) if out is not None else scored / EVAL_FILE
    if target.resolve() == Path(findings_csv).resolve():
        raise UsageError(f"--out {target} is the findings file: choose another path")
    atomic_write_json(target, result)
    return {**result, "path": str(target)}


def table_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per map source (the ensemble first): images, patients and each metric as ``mean [low, high]``."""
    sources = result["sources"]
    order = [ENSEMBLE, *sorted(name for name in sources if name != ENSEMBLE)]
    rows = []
    for name in order:
        entry = sources[name]
        row: dict[str, Any] = {"maps": name, "images": entry["images"], "patients": entry["patients"]}
        for metric in METRICS:
            low, high = entry[metric]["ci95"]
            row[metric] = f"{entry[metric]['mean']:.3f} [{low:.3f}, {high:.3f}]"
        rows.append(row)
    return rows
