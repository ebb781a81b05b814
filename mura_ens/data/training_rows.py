"""From a data source to the rows a training run uses (numpy and pandas; no TensorFlow).

The manifest comes from :func:`~mura_ens.data.manifest.scan_source`, folds from
the patient-grouped split (:func:`~mura_ens.data.split.assign_folds`: train/val
from MURA ``train``, test from MURA ``valid``). This module restricts rows to
body parts, caps the number of images per fold and hashes the manifest for the
model card. Training (:mod:`mura_ens.training.data`, which re-exports these
names) and int8 calibration (:mod:`mura_ens.onnx.quantize`, re-deriving a run's
folds from ``card.json``) share it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import BODY_PARTS
from ..errors import ManifestError, UsageError

FOLDS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class TrainingData:
    """Labelled manifest rows with a ``fold`` column, and where they came from."""

    frame: pd.DataFrame
    source: str
    manifest_sha256: str
    n_manifest_rows: int
    n_unlabelled: int
    n_skipped: int
    split_seed: int
    val_fraction: float
    notes: list[str] = field(default_factory=list)

    def parts_in(self, fold: str = "train") -> list[str]:
        """Body parts (sorted, known ones only) present in ``fold``."""
        parts = self.frame.loc[self.frame["fold"] == fold, "body_part"]
        return sorted(p for p in set(parts.tolist()) if p in BODY_PARTS)


def load_training_data(source, *, val_fraction: float = 0.2, seed: int = 0) -> TrainingData:
    """Scan ``source`` (MURA folder, folder with official CSVs, manifest CSV or a manifest DataFrame) and split it.

    Rows without a label cannot be trained on and are left out (counted).
    """
    from .split import assign_folds

    if isinstance(source, pd.DataFrame):
        from .layout import manifest_frame
        from .manifest import validate_manifest

        problems = validate_manifest(source, "<DataFrame>")
        if problems:
            raise ManifestError("<DataFrame>", problems)
        manifest = manifest_frame(source)
        skipped = 0
        source_name = "<DataFrame>"
    else:
        from .manifest import scan_source

        scan = scan_source(source)
        manifest = scan.manifest
        skipped = len(scan.skipped) if scan.skipped is not None else 0
        source_name = str(Path(source).absolute())
    digest = manifest_sha256(manifest)
    labelled = manifest.loc[manifest["label"].notna()].copy()
    notes = []
    n_unlabelled = len(manifest) - len(labelled)
    if n_unlabelled:
        notes.append(f"{n_unlabelled} image(s) without a label left out")
    if labelled.empty:
        raise UsageError(f"no labelled images in {source_name}")
    labelled["label"] = labelled["label"].astype("int64")
    folds = assign_folds(labelled, val_fraction=val_fraction, seed=seed)
    return TrainingData(
        frame=folds.reset_index(drop=True),
        source=source_name,
        manifest_sha256=digest,
        n_manifest_rows=len(manifest),
        n_unlabelled=n_unlabelled,
        n_skipped=skipped,
        split_seed=seed,
        val_fraction=val_fraction,
        notes=notes,
    )


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """SHA-256 of the manifest rows, independent of where the data sit and of row order.

    Paths are taken relative to their common folder, rows are sorted, and
    the columns path, study, patient, body_part, label, split are written as
    tab-separated UTF-8 lines.
    """
    paths = manifest["path"].astype(str).tolist()
    if paths:
        try:
            root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
        except ValueError:  # mixed drives / relative and absolute
            root = ""
        if root and os.path.isfile(root):
            root = os.path.dirname(root)
        rel = [os.path.relpath(p, root).replace(os.sep, "/") if root else p for p in paths]
    else:
        rel = []
    columns = [rel]
    for column in ("study", "patient", "body_part", "label", "split"):
        values = manifest[column] if column in manifest.columns else pd.Series([""] * len(manifest))
        columns.append(["" if pd.isna(v) else str(v) for v in values.tolist()])
    lines = sorted("\t".join(row) for row in zip(*columns))
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def select_parts(frame: pd.DataFrame, parts: tuple[str, ...] | list[str] | None) -> pd.DataFrame:
    """Rows whose body part is in ``parts`` (all rows when ``parts`` is empty or None)."""
    if not parts:
        return frame
    return frame.loc[frame["body_part"].isin(list(parts))]


def limit_images(frame: pd.DataFrame, max_images: int | None, *, seed: int = 0) -> pd.DataFrame:
    """At most ``max_images`` images per fold, taking whole studies in a seeded random order.

    A study larger than what is left is skipped, except that a fold always
    keeps at least its first study in that order.
    """
    if max_images is None:
        return frame
    if max_images < 1:
        raise UsageError(f"max_images must be >= 1, got {max_images}")
    rng = np.random.default_rng(seed)
    keep = []
    for fold in FOLDS:
        rows = frame.loc[frame["fold"] == fold]
        if rows.empty:
            continue
        sizes = rows.groupby("study", sort=True).size()
        order = rng.permutation(len(sizes))
        chosen: list[str] = []
        total = 0
        for index in order:
            study, size = sizes.index[index], int(sizes.iloc[index])
            if total + size <= max_images or not chosen:
                chosen.append(study)
                total += size
            if total >= max_images:
                break
        keep.append(rows.loc[rows["study"].isin(chosen)])
    return pd.concat(keep) if keep else frame.iloc[:0]


def model_rows(
    frame: pd.DataFrame, body_parts: tuple[str, ...] | list[str] | None, max_images: int | None, *, seed: int = 0
) -> pd.DataFrame:
    """The rows (with ``fold``) one model of a run uses: its body parts, then the ``max_images`` cap.

    The one definition of a run's folds: training uses it, and int8 calibration re-derives
    the same rows from ``card.json`` with it.
    """
    return limit_images(select_parts(frame, tuple(body_parts or ())), max_images, seed=seed)
