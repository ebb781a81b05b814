"""What training refuses and what it warns about, decided from the rows and the images that loaded (no TensorFlow).

Refusals (:class:`~mura_ens.errors.UsageError`: one line, exit code 2, no run folder kept):

- before anything is built: a training fold with fewer than :data:`MIN_TRAIN_IMAGES` images or
  with one class only (:func:`check_train_fold`); ``--out`` or ``--cache`` naming a file
  (:func:`check_out_path`, :func:`check_cache_path`);
- after the first epoch, when every image has been read once (:func:`check_loaded`): a training
  fold with no readable image, fewer than :data:`MIN_TRAIN_IMAGES` readable ones or readable
  images of one class only, and a validation fold with no readable image.

Warnings (:class:`TrainingWarning`, one line each; ``mura-ens train`` prints them on stderr as
``mura-ens: warning: ...``; every one is also a note in ``card.json``): a validation fold of one
class (its AUC and kappa are undefined; early stopping, the learning-rate schedule and
``best.keras`` follow ``val_loss`` only, as always), patients both in the training data and in
the test set (MURA ``valid``), images dropped per fold because they could not be loaded.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd

from .. import console
from ..errors import UsageError

#: The fewest training images (that load) a run accepts: a floor against training on nothing, not a recommendation.
MIN_TRAIN_IMAGES = 4
#: Patient ids shown in the leak warning.
SHOWN_PATIENTS = 3


class TrainingWarning(UserWarning):
    """Something about a training run the user must hear about; also recorded in ``card.json`` ``notes``."""


@contextlib.contextmanager
def training_warnings_as_lines() -> Iterator[None]:
    """Inside the block, show each warning at once as one ``mura-ens: warning: ...`` line on stderr
    (:func:`mura_ens.console.warning_line`; every :class:`TrainingWarning`, even repeated). Used by
    ``mura-ens train``, the demo and :func:`mura_ens.train`."""
    with console.warnings_as_lines():
        warnings.simplefilter("always", TrainingWarning)
        yield


def warn(notes: list[str], text: str) -> None:
    """Emit ``text`` as a :class:`TrainingWarning` and keep it in ``notes`` (the card's)."""
    notes.append(text)
    warnings.warn(text, TrainingWarning, stacklevel=2)


def check_out_path(out: str | os.PathLike) -> None:
    """``--out`` must be a folder (made when missing), never a file: checked before anything is created."""
    path = Path(out)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"--out {path}: {folder} is a file, not a folder")
            return


def check_cache_path(cache: str | os.PathLike | None) -> None:
    """``--cache`` must be a folder (made when missing), never a file: checked before anything is created."""
    if not cache:
        return
    path = Path(cache)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--cache {path} is a file; it must be a folder (created when missing)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--cache {path}: {parent} is a file, not a folder")
            break


def _classes(rows: pd.DataFrame) -> str:
    """``'abnormal'``, ``'normal'``, ``'both'`` or ``'none'``: the labels present in ``rows``."""
    labels = set(pd.to_numeric(rows["label"]).dropna().astype(int).tolist())
    return {frozenset(): "none", frozenset({1}): "abnormal", frozenset({0}): "normal"}.get(frozenset(labels), "both")


def _too_few(name: str, n: int, what: str) -> UsageError:
    return UsageError(
        f"{name}: the training fold has {n} {what} image(s), fewer than the minimum of {MIN_TRAIN_IMAGES}: "
        "use more data, a larger --max-images or a smaller --val-fraction"
    )


def _one_class(name: str, rows: pd.DataFrame, what: str) -> UsageError:
    studies = rows["study"].nunique()
    return UsageError(
        f"{name}: the training fold has {_classes(rows)} {what} images only ({len(rows)} images, {studies} studies): "
        "a classifier needs abnormal and normal examples"
    )


def check_train_fold(name: str, train: pd.DataFrame) -> None:
    """Refuse a training fold that is too small or of one class (from the manifest, before any image is read)."""
    if len(train) < MIN_TRAIN_IMAGES:
        raise _too_few(name, len(train), "listed")
    if _classes(train) != "both":
        raise _one_class(name, train, "labelled")


def fold_warnings(name: str, rows: pd.DataFrame) -> list[str]:
    """Warnings about a model's rows before training: a one-class validation fold, a patient leak into test."""
    texts = []
    val = rows.loc[rows["fold"] == "val"]
    if len(val) and _classes(val) != "both":
        texts.append(one_class_val_text(name, val))
    train_patients = set(rows.loc[rows["fold"].isin(["train", "val"]), "patient"].astype(str))
    test_patients = set(rows.loc[rows["fold"] == "test", "patient"].astype(str))
    leaked = sorted((train_patients & test_patients) - {""})
    if leaked:
        shown = ", ".join(leaked[:SHOWN_PATIENTS]) + (", ..." if len(leaked) > SHOWN_PATIENTS else "")
        texts.append(
            f"{name}: {len(leaked)} patient(s) are both in the training data (train/val) and in the test set "
            f"(MURA valid), e.g. {shown}: the test metrics are optimistic (a leak)"
        )
    return texts


def one_class_val_text(name: str, val: pd.DataFrame, *, readable: bool = False) -> str:
    """The warning about a validation fold of one class (``readable``: once unreadable images were dropped)."""
    which = "readable images of the validation fold are" if readable else "validation fold has"
    kind = _classes(val)
    body = f"all {kind}" if readable else f"{kind} studies only"
    return (
        f"{name}: the {which} {body} ({val['study'].nunique()} studies, {len(val)} images): val AUC and kappa are "
        "undefined (n/a); early stopping, the learning-rate schedule and best.keras follow val_loss only"
    )


def _failed_rows(rows: pd.DataFrame, failed: Mapping[str, str]) -> pd.Series:
    return rows["path"].astype(str).isin(set(failed))


def used_rows(rows: pd.DataFrame, failed: Mapping[str, str]) -> pd.DataFrame:
    """``rows`` without the images that could not be loaded (``failed``: path -> status)."""
    return rows.loc[~_failed_rows(rows, failed)]


def _reasons(rows: pd.DataFrame, failed: Mapping[str, str]) -> tuple[int, str]:
    """How many of ``rows`` failed to load, and why (``1 truncated, 2 unreadable``)."""
    mask = _failed_rows(rows, failed)
    counts = pd.Series([failed[p] for p in rows.loc[mask, "path"].astype(str)], dtype=object).value_counts()
    return int(mask.sum()), ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def dropped_text(name: str, fold: str, rows: pd.DataFrame, failed: Mapping[str, str]) -> str | None:
    """``<name>: <fold>: dropped 2 of 40 image(s) that could not be loaded (1 truncated, 1 empty_file)``, or None."""
    n, reasons = _reasons(rows, failed)
    if not n:
        return None
    return f"{name}: {fold}: dropped {n} of {len(rows)} image(s) that could not be loaded ({reasons})"


def check_loaded(name: str, train: pd.DataFrame, val: pd.DataFrame, failed: Mapping[str, str]) -> list[str]:
    """After the first epoch: refuse unusable folds, else return the warnings (dropped images, one-class val)."""
    ok_train, ok_val = used_rows(train, failed), used_rows(val, failed)
    if ok_train.empty:
        _, reasons = _reasons(train, failed)
        raise UsageError(
            f"{name}: no readable training image: none of the {len(train)} image(s) of the train fold "
            f"could be loaded ({reasons}); nothing was kept"
        )
    if len(ok_train) < MIN_TRAIN_IMAGES:
        raise _too_few(name, len(ok_train), "readable")
    if _classes(ok_train) != "both":
        raise _one_class(name, ok_train, "readable")
    if ok_val.empty:
        raise UsageError(
            f"{name}: no readable validation image ({len(val)} listed, none could be loaded): "
            "early stopping needs at least one; nothing was kept"
        )
    texts = [t for t in (dropped_text(name, f, r, failed) for f, r in (("train", train), ("val", val))) if t]
    if _classes(val) == "both" and _classes(ok_val) != "both":
        texts.append(one_class_val_text(name, ok_val, readable=True))
    return texts
