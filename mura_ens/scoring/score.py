"""``score()``: the whole scoring run, from an input folder/manifest to the four output files.

Flow: scan the input (manifest + skipped files) -> load and validate the
models -> plan batches of whole studies -> stream them through a backend,
journalling each finished batch -> image table -> study table (ensemble) ->
metrics -> ``images.csv``, ``studies.csv``, ``metrics.json``, ``report.html``
(each written atomically) -> drop the journal.

Every input file is a row of ``images.csv``: scored (``ok``), with the reason
it could not be (``unreadable``, ``truncated``, ``no_model_for_body_part``, ...)
or with the scan's skip reason (``appledouble``, ...). Every study is a row of
``studies.csv``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..io import atomic_write_csv, atomic_write_json
from .backends import make_backend
from .ensemble import check_ensemble, image_probabilities, resolve_threshold, study_table
from .journal import open_journal, run_fingerprint
from .models import ModelSpec, load_models
from .progress import progress_bar, wants_progress
from .runner import ImageTask, RunnerConfig, plan_batches
from .sessions import SessionConfig, default_intra_op_threads, get_session, resolve_providers, usable_cpus

if TYPE_CHECKING:  # pandas is imported lazily at run time
    import pandas as pd

IMAGES_FILE = "images.csv"
STUDIES_FILE = "studies.csv"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"

#: Test-only: seconds to sleep after each finished batch, so that a test can
#: interrupt a run of a few dozen tiny images mid-way. Never set it otherwise.
TEST_BATCH_DELAY_ENV = "MURA_ENS_TEST_BATCH_DELAY_S"

#: Bootstrap settings of metrics.json (the same as ``mura-ens evaluate``'s defaults).
N_BOOTSTRAP = 1000
CI = 0.95
BOOTSTRAP_SEED = 0


@dataclass
class ScoreResult:
    """What a scoring run produced: the two tables, the metrics and where the files are."""

    images: pd.DataFrame  # the rows of images.csv
    studies: pd.DataFrame  # the rows of studies.csv
    metrics: dict | None
    models: list[ModelSpec]
    ensemble: str
    threshold: float
    providers: tuple[str, ...]
    out: Path
    paths: dict[str, Path]
    n_resumed_images: int = 0
    notes: list[str] = field(default_factory=list)


def default_workers() -> int:
    """Decode threads: one per usable CPU, at most 4 (decoding is a small share of the work)."""
    return max(1, min(4, usable_cpus()))


def score(
    input: str | os.PathLike,
    *,
    models_dir: str | os.PathLike | None = None,
    model_files: Iterable[str | os.PathLike] = (),
    ensemble: str = "body_part",
    out: str | os.PathLike,
    batch_size: int = 32,
    workers: int | None = None,
    threshold: float | None = None,
    resume: bool = False,
    providers: str | Sequence[str] | None = None,
    precision: str = "fp32",
    progress: bool | None = None,
    backend: str = "local",
    scheduler: str | None = None,
    ship_models: bool = False,
) -> ScoreResult:
    """Score every image of ``input`` with every applicable ONNX model and write the outputs to ``out``.

    Parameters
    ----------
    input
        A MURA-layout folder (any depth), a folder holding the official CSVs,
        or a manifest CSV (:func:`mura_ens.data.manifest.scan_source`).
    models_dir, model_files
        Where the models are: every ``*.onnx`` under ``models_dir`` and/or the
        given files (:func:`~mura_ens.scoring.models.discover_model_files`).
    ensemble
        ``body_part`` (mean over the models serving the study's part) or
        ``mean`` (mean over the generalists); see :mod:`~mura_ens.scoring.ensemble`.
    out
        Output folder (created).
    batch_size
        Images per ``session.run``; batches of whole studies of about this size
        are the unit of work and of the resume journal.
    workers
        Decode threads (default :func:`default_workers`); with ``backend="dask"``
        and no scheduler, the worker processes of the in-process LocalCluster
        (default: one per CPU).
    threshold
        Decision threshold; default: the models' metadata threshold if they
        agree, else 0.5.
    resume
        Continue the unfinished run journalled in ``out`` instead of replacing it.
    providers
        onnxruntime execution providers (``cpu``, ``cuda``, full names; list or
        comma list); default CUDA when available, else CPU.
    precision
        ``fp32`` or ``int8``: which file of a run folder to use.
    progress
        Draw a progress bar; default only when stderr is a terminal.
    backend
        ``local`` (this machine) or ``dask`` (a Dask cluster, see
        :mod:`~mura_ens.scoring.dask_backend`); the output files are the same.
    scheduler
        ``dask`` only: the scheduler's address or scheduler file (default
        ``$DASK_SCHEDULER_ADDRESS``; with neither, a LocalCluster is started).
    ship_models
        ``dask`` only: send the models' bytes to the workers instead of
        relying on them seeing the model files at the same paths.

    Raises
    ------
    UsageError
        A missing input, no models, a model with the wrong input, a manifest
        missing columns, an unknown option value. Bad *images* never raise:
        they get a status in ``images.csv``.
    """
    input_path = Path(input)
    if not input_path.exists():
        raise UsageError(f"input not found: {input_path}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder, got a file: {out}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    requested_workers = workers
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")

    chosen_providers = resolve_providers(providers)
    models = load_models(models_dir, model_files, precision=precision)
    check_ensemble(ensemble, models)
    decision_threshold = resolve_threshold(models, threshold)
    runner_backend = make_backend(
        backend, workers=workers, scheduler=scheduler, ship_models=ship_models, cluster_workers=requested_workers
    )

    from ..data.manifest import scan_source

    scan = scan_source(input_path)
    manifest = scan.manifest.reset_index(drop=True)
    if manifest.empty:
        skipped = len(scan.skipped)
        raise UsageError(f"no images found in {input_path}" + (f" ({skipped} files skipped)" if skipped else ""))

    session = SessionConfig(providers=chosen_providers, intra_op_threads=default_intra_op_threads(workers))
    config = RunnerConfig(models=tuple(models), session=session, batch_size=batch_size)
    for model in models:  # load every model once now: an unloadable one stops the run before any work
        get_session(model, session)

    out.mkdir(parents=True, exist_ok=True)
    fingerprint = run_fingerprint(input_path, manifest, models, precision=precision)
    journal, done_rows, notes = open_journal(out, fingerprint, resume=resume)
    try:
        _check_journal_rows(done_rows, manifest)
        done = {row["index"] for row in done_rows}
        n_resumed = len(done_rows)
        scored = ScoredRows(len(manifest), models)
        scored.add(done_rows)
        del done_rows
        paths = manifest["path"].to_numpy(dtype=object)
        studies_col = manifest["study"].to_numpy(dtype=object)
        parts = manifest["body_part"].to_numpy(dtype=object)
        tasks = [
            ImageTask(index=i, path=paths[i], study=studies_col[i], body_part=parts[i])
            for i in range(len(manifest))
            if i not in done
        ]
        batches = plan_batches(tasks, batch_size)
        delay = float(os.environ.get(TEST_BATCH_DELAY_ENV, "0") or 0)
        n_studies_total = manifest["study"].nunique()
        n_studies_done = len({studies_col[i] for i in done})
        with progress_bar(
            wants_progress(progress),
            total_images=len(manifest),
            total_studies=n_studies_total,
            done_images=len(done),
            done_studies=n_studies_done,
        ) as advance:
            for number, rows in runner_backend.map(batches, config):
                journal.append(number, rows)
                scored.add(rows)
                advance(len(rows), len({studies_col[r["index"]] for r in rows}))
                if delay:
                    time.sleep(delay)
    finally:
        journal.close()

    images = image_table(manifest, scan.skipped, scored, models, method=ensemble)
    studies = study_table(images, models, method=ensemble, threshold=decision_threshold)
    has_labels = bool(manifest["label"].notna().any())
    metrics = (
        scoring_metrics(images, studies, models, threshold=decision_threshold, ensemble=ensemble)
        if has_labels
        else None
    )

    written: dict[str, Path] = {}
    images_out = images.drop(columns=["counted"])
    written["images"] = atomic_write_csv(out / IMAGES_FILE, images_out)
    written["studies"] = atomic_write_csv(out / STUDIES_FILE, studies)
    if metrics is not None:
        written["metrics"] = atomic_write_json(out / METRICS_FILE, metrics)
    elif (out / METRICS_FILE).exists():
        (out / METRICS_FILE).unlink()  # a stale file from an earlier run would be mistaken for this one's
        notes.append(f"no labels in the input: removed the earlier {out / METRICS_FILE}")

    from ..report import write_report

    failed = images_out.loc[images_out["status"] != "ok", ["path", "study", "body_part", "status", "error"]]
    model_info = [_model_info(m) for m in models]
    provenance = _provenance(
        input_path,
        out,
        models,
        ensemble=ensemble,
        threshold=decision_threshold,
        precision=precision,
        backend=backend,
        providers=chosen_providers,
        batch_size=batch_size,
        workers=workers,
        n_images=len(manifest),
        n_skipped=len(scan.skipped),
    )
    written["report"] = write_report(
        out / REPORT_FILE,
        studies=studies,
        images=images_out,
        metrics=metrics,
        models=model_info,
        provenance=provenance,
        failed=failed,
    )
    journal.remove()
    return ScoreResult(
        images=images_out,
        studies=studies,
        metrics=metrics,
        models=list(models),
        ensemble=ensemble,
        threshold=decision_threshold,
        providers=chosen_providers,
        out=out,
        paths=written,
        n_resumed_images=n_resumed,
        notes=notes,
    )


class ScoredRows:
    """The runner's rows of a run, kept as arrays indexed by manifest row (not as dicts).

    Memory per image is a few pointers and one float per model, so a run of
    millions of images does not hold millions of dicts.
    """

    def __init__(self, n_images: int, models: Sequence[ModelSpec]):
        import numpy as np

        self.status = np.full(n_images, "", dtype=object)
        self.error = np.full(n_images, "", dtype=object)
        self.probs = {m.column: np.full(n_images, np.nan) for m in models}

    def add(self, rows: Iterable[dict]) -> None:
        """Record runner rows (``index``, ``status``, ``error``, ``prob__<model>``...)."""
        for row in rows:
            i = row["index"]
            self.status[i] = row["status"]
            self.error[i] = row.get("error", "")
            for column, values in self.probs.items():
                value = row.get(column)
                if value is not None:
                    values[i] = value


def image_table(manifest, skipped, scored: ScoredRows, models: Sequence[ModelSpec], *, method: str):
    """The rows of ``images.csv`` (plus an internal ``counted`` column), in input order.

    Manifest images first, in manifest order, with the runner's status,
    error and per-model probabilities; then the files the scan skipped, with
    their skip reason as status (``counted`` False: they are listed, not
    counted as images of a study). A skipped file inside a known study folder
    carries that study's key, patient, body part and label.
    """
    import numpy as np
    import pandas as pd

    from ..data.layout import SKIP_REASONS, parse_study_dir

    status, error, probs = scored.status, scored.error, scored.probs
    if (status == "").any():  # pragma: no cover - a bug, not a user error
        raise RuntimeError(f"{int((status == '').sum())} images were never scored")

    frame = manifest[["path", "study", "patient", "body_part"]].copy()
    frame["label"] = manifest["label"].astype("Int64")
    for column, values in probs.items():
        frame[column] = values
    frame["status"] = pd.array(status.tolist(), dtype="str")
    frame["error"] = pd.array(error.tolist(), dtype="str")
    frame["counted"] = True

    if len(skipped):
        folders = manifest.assign(folder=manifest["path"].map(os.path.dirname)).drop_duplicates("folder")
        by_folder = {r.folder: r for r in folders.itertuples(index=False)}
        extra = []
        for path, reason in zip(skipped["path"], skipped["reason"]):
            known = by_folder.get(path if reason == "empty_study" else os.path.dirname(path))
            info = (
                None
                if known
                else parse_study_dir(Path(path if reason == "empty_study" else os.path.dirname(path)).parts)
            )
            extra.append(
                {
                    "path": path,
                    "study": known.study if known else (info.key if info else ""),
                    "patient": known.patient if known else (info.patient if info else ""),
                    "body_part": known.body_part if known else (info.body_part if info else ""),
                    "label": known.label if known else (info.label if info else pd.NA),
                    "status": reason,
                    "error": SKIP_REASONS.get(reason, ""),
                    "counted": False,
                }
            )
        extra_frame = pd.DataFrame(extra)
        extra_frame["label"] = extra_frame["label"].astype("Int64")
        for column in probs:
            extra_frame[column] = np.nan
        frame = pd.concat([frame, extra_frame[frame.columns]], ignore_index=True)

    frame.insert(frame.columns.get_loc("status"), "prob", image_probabilities(frame, models, method=method))
    for column in ("path", "study", "patient", "body_part", "status", "error"):
        frame[column] = frame[column].astype("str")
    return frame


def scoring_metrics(images, studies, models: Sequence[ModelSpec], *, threshold: float, ensemble: str) -> dict:
    """The ``metrics.json`` of a scoring run (docs/INTERNALS.md).

    Top level: the ensemble, at study level on the rows of ``studies.csv`` and
    at image level on the counted rows of ``images.csv`` (rows without a
    probability or a label are excluded and counted in ``n_excluded``).
    ``models``: the same for each model's own column, restricted to the body
    parts it serves. All at the run's threshold.
    """
    import warnings

    from ..metrics import UndefinedMetricWarning

    images = images.loc[images["counted"]] if "counted" in images.columns else images
    options = dict(threshold=threshold, n_bootstrap=N_BOOTSTRAP, ci=CI, seed=BOOTSTRAP_SEED)
    # One warning per one-class group would be dozens of lines (levels x models x parts): collect them into one.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        result = _all_metrics(images, studies, models, options, ensemble)
    undefined = []
    for w in caught:
        if issubclass(w.category, UndefinedMetricWarning):
            undefined.append(str(w.message).split(":")[0])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if undefined:
        shown = "; ".join(undefined[:6]) + (f"; ... {len(undefined) - 6} more" if len(undefined) > 6 else "")
        warnings.warn(
            f"ROC AUC is undefined (only one class) in {len(undefined)} groups, null in metrics.json: {shown}",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    return result


def _all_metrics(images, studies, models, options: dict, ensemble: str) -> dict:
    from ..metrics import grouped_metrics

    threshold = options["threshold"]
    result = {
        "threshold": float(threshold),
        "ensemble": ensemble,
        "bootstrap": {"n_resamples": N_BOOTSTRAP, "ci": CI, "seed": BOOTSTRAP_SEED},
        "study": grouped_metrics(studies, prob_col="prob", name="study", **options),
        "image": grouped_metrics(images, prob_col="prob", name="image", **options),
        "models": {},
    }
    for m in models:
        s = studies if m.is_generalist else studies.loc[studies["body_part"].isin(m.body_parts)]
        i = images if m.is_generalist else images.loc[images["body_part"].isin(m.body_parts)]
        result["models"][m.name] = {
            "study": grouped_metrics(s, prob_col=m.column, name=f"{m.name} study", **options),
            "image": grouped_metrics(i, prob_col=m.column, name=f"{m.name} image", **options),
        }
    return result


def _check_journal_rows(rows: list[dict], manifest) -> None:
    paths = manifest["path"].to_numpy(dtype=object)
    for row in rows:
        i = row.get("index")
        if not isinstance(i, int) or not 0 <= i < len(paths) or paths[i] != row.get("path"):
            raise UsageError("--resume: the journal does not match the input's images; rerun without --resume")


def _model_info(model: ModelSpec) -> dict:
    """A model's provenance: its metadata, and its run's card.json when one sits beside it."""
    import json

    info = model.describe()
    info["card"] = None
    card = Path(model.path).parent / "card.json"
    if card.is_file():
        try:
            info["card"] = json.loads(card.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            info["card_error"] = f"{card}: {exc}"
    return info


def _provenance(input_path: Path, out: Path, models, **options) -> dict:
    """Input and options of the run for the report (which adds library versions itself).

    No clock time here: a resumed run describes itself exactly as an uninterrupted one.
    """
    return {
        "command": "mura-ens score",
        "input": str(input_path.resolve()),
        "out": str(out.resolve()),
        "models": ", ".join(m.name for m in models),
        **{k: (", ".join(v) if isinstance(v, tuple) else v) for k, v in options.items()},
        "platform": f"{platform.system()} {platform.machine()}",
    }
