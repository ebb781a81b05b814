"""``score()``: the whole scoring run, from an input folder/manifest to its output files.

The run in named steps: ``_prepare`` (check the input and the output folder,
resolve providers, load and check the models, scan the input) ->
``_open_journal`` (the ``--resume`` journal) -> ``_run_batches`` (plan batches
of whole studies, stream them through the backend, journal each finished one)
-> ``_tables`` (image table -> study table, the ensemble) -> ``_metrics``
(``metrics.json``, :func:`mura_ens.metrics.build_metrics`)
-> ``_draw_heatmaps`` (``--explain K``: ``heatmaps/`` staged, :mod:`~mura_ens.scoring.heatmaps`, always in
this process and never journalled) -> ``_write_outputs`` (the report rendered first, then ``images.csv``,
``studies.csv``, ``models.json``, ``metrics.json``, the heatmaps folder renamed into place, ``report.html``:
nothing is replaced until everything that can fail but a write has run) -> drop the journal. Every file is
written atomically.

What the run does is a :class:`ScoreSettings` (validated once, when it is
made); where batches run is a backend object the caller builds
(:func:`~mura_ens.scoring.backends.make_backend`).

``--ensemble fitted``: ``_prepare`` loads the ensemble file and checks its
members against the models found (name and sha256; a mismatch is a one-line
:class:`UsageError` before any image is decoded) and warns
(:class:`FittingOverlapWarning`) when studies being scored were in its
fitting set. The ensemble's ``pred`` uses the file's per-part thresholds, and
so do the ensemble's metrics (:class:`mura_ens.metrics.PartThresholds`); the
models' own metrics keep the run's scalar threshold, and the plain
``body_part`` mean is reported beside it under ``baselines``.

Every input file is a row of ``images.csv``: scored (``ok``), with the reason
it could not be (``unreadable``, ``truncated``, ``no_model_for_body_part``, ...)
or with the scan's skip reason (``appledouble``, ...). Every study is a row of
``studies.csv``.
"""

from __future__ import annotations

import numbers
import os
import platform
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..explain.explainer import MAP_METHODS
from ..io import atomic_write_csv, atomic_write_json, file_sha256, refuse_input_as_output
from ..metrics import DEFAULT_BOOTSTRAP, BootstrapSettings, EnsembleInfo
from ..pseudonym import key_for
from .backends import Backend, make_backend
from .ensemble import (
    FITTED,
    check_ensemble,
    check_ensemble_name,
    check_threshold,
    image_probabilities,
    resolve_threshold,
    study_table,
)
from .journal import Journal, open_journal, run_fingerprint
from .lock import OutputLock
from .models import PRECISIONS, ModelSpec, load_models
from .progress import progress_bar, wants_progress
from .runner import OK, TTAS, ImageTask, RunnerConfig, plan_batches
from .sessions import SessionConfig, default_intra_op_threads, get_session, resolve_providers, usable_cpus

if TYPE_CHECKING:  # pandas is imported lazily at run time
    import pandas as pd

    from ..fitting.ensemble import FittedEnsemble
    from ..pseudonym import Pseudonymizer
    from .heatmaps import HeatmapOutput

IMAGES_FILE = "images.csv"
STUDIES_FILE = "studies.csv"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
#: The models of the run (name, path, sha256, metadata): what ``mura-ens fit-ensemble`` reads to name its members.
MODELS_FILE = "models.json"


class FittingMismatchWarning(UserWarning):
    """A fitted ensemble applied (``--allow-mismatch``) to scores of another precision or TTA than it was fitted on."""


class FittingOverlapWarning(UserWarning):
    """Studies being scored were in the fitted ensemble's fitting set: their metrics are optimistic."""


def default_workers() -> int:
    """Decode threads: one per usable CPU, at most 4 (decoding is a small share of the work)."""
    return max(1, min(4, usable_cpus()))


@dataclass(frozen=True)
class ScoreSettings:
    """What a scoring run does, checked once when it is made (a bad value is a one-line :class:`UsageError`).

    Attributes
    ----------
    ensemble
        ``body_part`` (mean over the models serving the study's part), ``mean``
        (mean over the generalists) or ``fitted`` (the weights, calibrators and
        per-part thresholds of ``ensemble_file``); see :mod:`~mura_ens.scoring.ensemble`.
    batch_size
        Images per ``session.run``; batches of whole studies of about this size
        are the unit of work and of the resume journal.
    workers
        Decode threads of the local backend (default :func:`default_workers`).
    threshold
        Decision threshold in [0, 1]; default: the models' metadata threshold if
        they agree, else 0.5. With ``fitted`` it applies to the models' own
        metrics and the ``body_part`` baseline; the ensemble uses the file's thresholds.
    resume
        Continue the unfinished run journalled in the output folder instead of replacing it.
    providers
        onnxruntime execution providers (``cpu``, ``cuda``, full names; a tuple or a
        comma list); default CUDA when available, else CPU. Whether this machine has
        them is checked when the run starts.
    precision
        ``fp32`` or ``int8``: which file of a run folder to use.
    bootstrap
        The bootstrap intervals of ``metrics.json``.
    tta
        Test-time augmentation: ``none``, or ``flip`` (an image's probability is the
        mean over it and its horizontal mirror; :mod:`~mura_ens.scoring.runner`).
    ensemble_file
        The ``ensemble.json`` of ``mura-ens fit-ensemble``: required with
        ``ensemble="fitted"``, refused with any other ensemble.
    explain
        ``K`` > 0: heatmap overlays of the K studies of highest probability (and,
        with labels, the K worst false positives and false negatives) under
        ``heatmaps/`` and in the report (:mod:`~mura_ens.scoring.heatmaps`); 0: none;
        ``"all"``: every labelled abnormal study too, plus K = 5 of each group.
    explain_method
        How a heatmap is made from the feature map and its gradient: ``xgradcam`` (default),
        ``hirescam`` or ``gradcam`` (:data:`mura_ens.explain.MAP_METHODS`).
    findings
        A ``findings.csv`` (ground-truth boxes): the heatmaps are scored against it
        (:mod:`mura_ens.explain.evaluate`): ``explain_eval.json`` and a report table. Needs ``explain``.
    labels
        A labels CSV joined onto the input (``label`` + ``study`` or ``path``;
        :func:`mura_ens.data.labels.join_labels`): how a DICOM folder gets labels.
    pseudonymize, pseudonym_key
        Replace patient ids (and DICOM study UIDs) by keyed hashes in every output
        file (:mod:`mura_ens.pseudonym`); the key defaults to ``$MURA_ENS_PSEUDONYM_KEY``.
    """

    ensemble: str = "body_part"
    batch_size: int = 32
    workers: int | None = None
    threshold: float | None = None
    resume: bool = False
    providers: tuple[str, ...] | None = None
    precision: str = "fp32"
    bootstrap: BootstrapSettings = DEFAULT_BOOTSTRAP
    tta: str = "none"
    ensemble_file: str | os.PathLike | None = None
    explain: int | str = 0
    explain_method: str = "xgradcam"
    findings: str | os.PathLike | None = None
    labels: str | os.PathLike | None = None
    pseudonymize: bool = False
    pseudonym_key: str | None = field(default=None, repr=False)
    allow_mismatch: bool = False

    def __post_init__(self) -> None:
        check_ensemble_name(self.ensemble)
        if not _is_count(self.batch_size):
            raise UsageError(f"--batch-size must be an integer >= 1, got {self.batch_size!r}")
        if self.workers is not None and not _is_count(self.workers):
            raise UsageError(f"--workers must be an integer >= 1, got {self.workers!r}")
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_threshold(self.threshold))
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if isinstance(self.providers, str):
            object.__setattr__(self, "providers", (self.providers,))
        elif self.providers is not None:
            if not isinstance(self.providers, (list, tuple)) or not all(isinstance(p, str) for p in self.providers):
                raise UsageError(
                    "providers must be a name, a comma list or a list of names (str), e.g. 'cpu' or ['cuda', 'cpu'];"
                    f" got {type(self.providers).__name__} {self.providers!r}"
                )
            object.__setattr__(self, "providers", tuple(self.providers))
        if not isinstance(self.bootstrap, BootstrapSettings):
            raise UsageError(f"bootstrap must be a BootstrapSettings, got {self.bootstrap!r}")
        if self.tta not in TTAS:
            raise UsageError(f"unknown --tta {self.tta!r}; choose one of {', '.join(TTAS)}")
        if self.explain != 0 and self.explain != "all" and not _is_count(self.explain):
            raise UsageError(f"--explain must be an integer >= 0 (studies per group) or all, got {self.explain!r}")
        if self.explain_method not in MAP_METHODS:
            raise UsageError(
                f"unknown --explain-method {self.explain_method!r}; choose one of {', '.join(MAP_METHODS)}"
            )
        if self.findings is not None:
            if not self.explain:
                raise UsageError("--findings scores heatmaps: give --explain all (or --explain K) too")
            if not Path(self.findings).is_file():
                raise UsageError(f"findings file {self.findings} does not exist")
            object.__setattr__(self, "findings", Path(self.findings))
        self._check_ensemble_file()
        if self.labels is not None:
            object.__setattr__(self, "labels", Path(self.labels))
        key_for(self.pseudonymize, self.pseudonym_key)  # no key: a one-line error now, before any work

    def _check_ensemble_file(self) -> None:
        if self.ensemble == FITTED and self.ensemble_file is None:
            raise UsageError("--ensemble fitted needs --ensemble-file ENSEMBLE.json (written by mura-ens fit-ensemble)")
        if self.ensemble != FITTED and self.ensemble_file is not None:
            raise UsageError(
                f"--ensemble-file is only used with --ensemble fitted, not with --ensemble {self.ensemble}"
            )
        if self.ensemble_file is not None:
            object.__setattr__(self, "ensemble_file", Path(self.ensemble_file))

    @property
    def decode_workers(self) -> int:
        """``workers``, or :func:`default_workers` when not given."""
        return default_workers() if self.workers is None else self.workers


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


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
    tta: str = "none"
    ensemble_file: Path | None = None
    #: Studies without one of the seven body parts, by the ``XR_*`` folder they are in
    #: (:func:`mura_ens.data.layout.unknown_parts`; ``""``: no body-part folder).
    unknown_parts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _FittedFile:
    """The fitted ensemble of a ``--ensemble fitted`` run and where it came from."""

    ensemble: FittedEnsemble
    path: Path
    sha256: str
    overlap: int  # studies being scored that were in its fitting set
    mismatch: tuple[str, ...] = ()  # how this run's precision / TTA differ from the fit's (``allow_mismatch``)


@dataclass
class _Run:
    """A prepared run: checked paths and settings, loaded models, the scanned input."""

    input_path: Path
    out: Path
    settings: ScoreSettings
    models: list[ModelSpec]
    threshold: float
    providers: tuple[str, ...]
    manifest: pd.DataFrame  # the scan's images, index 0..n-1 (a row's index is its task index)
    skipped: pd.DataFrame  # the scan's skipped files, with their studies
    fitted: _FittedFile | None = None
    private: Pseudonymizer | None = None  # --pseudonymize

    def hide(self, obj: Any) -> Any:
        """``obj`` (text, table, rows, JSON) as the output files show it: patient ids pseudonymized with ``--pseudonymize``."""
        return self.private(obj) if self.private is not None else obj

    @property
    def config(self) -> RunnerConfig:
        """What each batch needs besides its images."""
        settings = self.settings
        session = SessionConfig(
            providers=self.providers, intra_op_threads=default_intra_op_threads(settings.decode_workers)
        )
        return RunnerConfig(
            models=tuple(self.models), session=session, batch_size=settings.batch_size, tta=settings.tta
        )

    @property
    def fitted_ensemble(self) -> FittedEnsemble | None:
        """The ``fitted`` ensemble, or None for the other ensembles."""
        return self.fitted.ensemble if self.fitted is not None else None


def score(
    input: str | os.PathLike,
    out: str | os.PathLike,
    *,
    models_dir: str | os.PathLike | None = None,
    model_files: Iterable[str | os.PathLike] = (),
    settings: ScoreSettings | None = None,
    backend: Backend | None = None,
    progress: bool | None = None,
) -> ScoreResult:
    """Score every image of ``input`` with every applicable ONNX model and write the outputs to ``out``.

    Parameters
    ----------
    input
        A MURA-layout folder (any depth), a folder holding the official CSVs,
        or a manifest CSV (:func:`mura_ens.data.manifest.scan_source`).
    out
        Output folder (created), locked for the run (:class:`~mura_ens.scoring.lock.OutputLock`).
    models_dir, model_files
        Where the models are: every ``*.onnx`` under ``models_dir`` and/or the
        given files (:func:`~mura_ens.scoring.models.discover_model_files`).
    settings
        Ensemble (and its file), batch size, threshold, resume, providers,
        precision, bootstrap, test-time augmentation (default ``ScoreSettings()``).
    backend
        Where batches run (:func:`~mura_ens.scoring.backends.make_backend`: ``local``
        or ``dask``; the output files are the same); default the local backend with
        ``settings.decode_workers`` decode threads.
    progress
        Draw a progress bar; default only when stderr is a terminal.

    Raises
    ------
    UsageError
        A missing input, no models, a model with the wrong input, a manifest
        missing columns, an ensemble file whose members are not the models
        found, an ONNX Runtime error while a model runs, an output folder that
        cannot be created or written (:class:`~mura_ens.io.OutputError`) or that
        another run holds (:class:`~mura_ens.scoring.lock.OutputLocked`, naming
        its PID; checked before any model is loaded). Bad *images* never
        raise: they get a status in ``images.csv`` (``model_error`` when a model
        gives one a NaN or a value outside [0, 1]).
    """
    settings = settings if settings is not None else ScoreSettings()
    input_path, out_path = Path(input), Path(out)
    _check_paths(input_path, out_path)
    model_files = list(model_files)
    outputs = [out_path, *(out_path / name for name in (IMAGES_FILE, STUDIES_FILE, METRICS_FILE, MODELS_FILE))]
    outputs.append(out_path / REPORT_FILE)
    read = (input_path, settings.labels, settings.ensemble_file, models_dir, *model_files)
    refuse_input_as_output(outputs, read)
    with OutputLock(out_path) as lock:  # one run per output folder, from before the first model load
        run = _prepare(input_path, out_path, models_dir, model_files, settings)
        if backend is None:
            backend = make_backend("local", workers=settings.decode_workers)
        return _score_prepared(run, backend, progress, lock.notes)


def _score_prepared(run: _Run, backend: Backend, progress: bool | None, notes: list[str]) -> ScoreResult:
    """The run once prepared (and its output folder locked): journal, batches, tables, metrics, files."""
    from ..data.layout import unknown_parts

    journal, done_rows, journal_notes = _open_journal(run)
    notes = [*notes, *journal_notes]
    try:
        scored = _run_batches(run, backend, journal, done_rows, progress)
    finally:
        journal.close()
    images, studies = _tables(run, scored)
    metrics = _metrics(run, images, studies)
    images = images.drop(columns=["counted"])
    unknown = unknown_parts(images)
    shown = run.hide(images), run.hide(studies), run.hide(metrics)  # what the files say (--pseudonymize)
    written = _write_outputs(run, shown, backend.name, unknown, _draw_heatmaps(run, images, studies, notes), notes)
    journal.remove()
    settings = run.settings
    return ScoreResult(
        images=shown[0],
        studies=shown[1],
        metrics=shown[2],
        models=list(run.models),
        ensemble=settings.ensemble,
        threshold=run.threshold,
        providers=run.providers,
        out=run.out,
        paths=written,
        n_resumed_images=len(done_rows),
        notes=notes,
        tta=settings.tta,
        ensemble_file=run.fitted.path if run.fitted is not None else None,
        unknown_parts=unknown,
    )


def _check_paths(input_path: Path, out: Path) -> None:
    """The checks that need nothing loaded: the input exists, ``--out`` is not a file."""
    if not input_path.exists():
        raise UsageError(f"input not found: {input_path}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder, got a file: {out}")


def _prepare(
    input_path: Path,
    out: Path,
    models_dir: str | os.PathLike[str] | None,
    model_files: Iterable[str | os.PathLike[str]],
    settings: ScoreSettings,
) -> _Run:
    """Resolve providers and threshold, load the models (each session once), scan the input."""
    from ..data.manifest import scan_source

    providers = resolve_providers(settings.providers)
    models = load_models(models_dir, model_files, precision=settings.precision)
    check_ensemble(settings.ensemble, models)
    fitted = _load_fitted(settings.ensemble_file, models, settings) if settings.ensemble == FITTED else None
    threshold = resolve_threshold(models, settings.threshold)
    scan = scan_source(input_path, labels=settings.labels)
    manifest = scan.manifest.reset_index(drop=True)
    if manifest.empty:
        raise UsageError(f"no images found in {input_path}{_skipped_text(scan.skipped)}")
    if fitted is not None:
        fitted = _with_overlap(fitted, manifest["study"])
    run = _Run(input_path, out, settings, models, threshold, providers, manifest, scan.skipped, fitted)
    run.private = _pseudonymizer(run, scan.identifiers)
    session = run.config.session
    for model in models:  # load every model once now: an unloadable one stops the run before any work
        get_session(model, session)
    return run


def _skipped_text(skipped: pd.DataFrame | None) -> str:
    """``: 3 files skipped: outside_study_folder 3 (image file not directly inside ...)``, or ""."""
    from ..data.layout import SKIP_REASONS

    if skipped is None or not len(skipped):
        return ""
    counts = skipped["reason"].value_counts().sort_index()
    reasons = "; ".join(f"{reason} {n} ({SKIP_REASONS.get(str(reason), reason)})" for reason, n in counts.items())
    return f": {len(skipped)} files skipped: {reasons}"


def _load_fitted(
    path: str | os.PathLike[str] | None, models: Sequence[ModelSpec], settings: ScoreSettings
) -> _FittedFile:
    """Read ``ensemble.json``; check that its members are exactly the models found (name and sha256) and that
    this run scores as the fitting set was scored (precision, TTA: refused unless ``allow_mismatch``)."""
    from ..fitting.ensemble import FittedEnsemble

    if path is None:
        raise UsageError("--ensemble fitted needs --ensemble-file ensemble.json")
    ensemble = FittedEnsemble.load(path)
    try:
        ensemble.check_members({m.name: m.sha256 for m in models})
    except UsageError as exc:
        raise UsageError(f"{exc} (ensemble file {path})") from None
    mismatch = ensemble.scoring_mismatches(settings.precision, settings.tta)
    if mismatch and not settings.allow_mismatch:
        raise UsageError(
            f"{path} was fitted on scores of another kind: this run uses {' and '.join(mismatch)}; "
            "score as it was fitted, or pass --allow-mismatch"
        )
    if mismatch:
        warnings.warn(
            f"--allow-mismatch: applying {path} with {' and '.join(mismatch)}", FittingMismatchWarning, stacklevel=3
        )
    digest = file_sha256(path)
    return _FittedFile(ensemble=ensemble, path=Path(path), sha256=digest, overlap=0, mismatch=tuple(mismatch))


def _with_overlap(fitted: _FittedFile, studies: pd.Series) -> _FittedFile:
    """``fitted`` with its overlap counted; a :class:`FittingOverlapWarning` when studies overlap its fitting set."""
    from dataclasses import replace

    keys = studies.astype("string").fillna("").unique().tolist()
    overlap = fitted.ensemble.overlap(keys)
    if overlap:
        warnings.warn(
            f"{overlap} of the {len(keys)} studies being scored were in the fitting set of {fitted.path}: "
            "their metrics are optimistic (score a set the ensemble was not fitted on)",
            FittingOverlapWarning,
            stacklevel=3,
        )
    return replace(fitted, overlap=overlap)


def _open_journal(run: _Run) -> tuple[Journal, list[dict], list[str]]:
    """The run's journal in ``out``, the rows an interrupted run already scored, and notes for the user."""
    settings = run.settings
    fingerprint = run.hide(
        run_fingerprint(run.input_path, run.manifest, run.models, precision=settings.precision, tta=settings.tta)
    )
    return open_journal(run.out, fingerprint, resume=run.settings.resume)


def _run_batches(
    run: _Run, backend: Backend, journal: Journal, done_rows: list[dict], progress: bool | None
) -> ScoredRows:
    """Score every image not already journalled, batch by batch through ``backend``, journalling each batch."""
    manifest = run.manifest
    _check_journal_rows(done_rows, manifest, run.hide)
    done = {row["index"] for row in done_rows}
    scored = ScoredRows(len(manifest), run.models)
    scored.add(done_rows)
    paths = manifest["path"].to_numpy(dtype=object)
    studies = manifest["study"].to_numpy(dtype=object)
    parts = manifest["body_part"].to_numpy(dtype=object)
    tasks = [
        ImageTask(index=i, path=paths[i], study=studies[i], body_part=parts[i])
        for i in range(len(manifest))
        if i not in done
    ]
    batches = plan_batches(tasks, run.settings.batch_size)
    with progress_bar(
        wants_progress(progress),
        total_images=len(manifest),
        total_studies=manifest["study"].nunique(),
        done_images=len(done),
        done_studies=len({studies[i] for i in done}),
    ) as advance:
        for number, rows in backend.map(batches, run.config):
            journal.append(number, run.hide(rows))  # the journal is an output file too
            scored.add(rows)
            advance(len(rows), len({studies[r["index"]] for r in rows}))
    return scored


def _tables(run: _Run, scored: ScoredRows) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The image table (with its internal ``counted`` column) and the study table of the run's ensemble."""
    ensemble, fitted = run.settings.ensemble, run.fitted_ensemble
    images = image_table(run.manifest, run.skipped, scored, run.models, ensemble=ensemble, fitted=fitted)
    studies = study_table(images, run.models, ensemble=ensemble, threshold=run.threshold, fitted=fitted)
    return images, studies


def _metrics(run: _Run, images: pd.DataFrame, studies: pd.DataFrame) -> dict | None:
    """``metrics.json`` (None when the input has no labels).

    Top level: the ensemble, at study level on the rows of ``studies.csv`` and
    at image level on the counted rows of ``images.csv``; ``models``: each
    model's own column on the body parts it serves. All at the run's threshold,
    except a fitted ensemble's own predictions (its per-part thresholds); a
    fitted run adds the plain ``body_part`` mean under ``baselines``. The
    one-class groups' warnings are folded into one.
    """
    from ..metrics import ModelColumn, build_metrics, fold_undefined_warnings

    if not bool(run.manifest["label"].notna().any()):
        return None
    members = [ModelColumn(m.name, m.column, m.body_parts) for m in run.models]
    info = _ensemble_info(run)
    if info.baselines:
        studies, images = _with_plain_mean(run, images, studies)
    images = images.loc[images["counted"]]
    with fold_undefined_warnings():
        return build_metrics(
            studies,
            images,
            threshold=run.threshold,
            bootstrap=run.settings.bootstrap,
            ensemble=info,
            models=members,
        )


#: Column of the plain ``body_part`` mean while a fitted run's metrics are computed (never written).
_PLAIN_MEAN_COLUMN = "baseline__body_part"


def _ensemble_info(run: _Run) -> EnsembleInfo:
    """How ``metrics.json`` describes the ensemble: name, per-part thresholds, ensemble file, TTA, baselines."""
    from ..metrics import ModelColumn, PartThresholds

    details: dict = {}
    thresholds = baselines = None
    if run.fitted is not None:
        fitted = run.fitted.ensemble
        thresholds = PartThresholds({p: m.threshold for p, m in fitted.parts.items()}, fitted.global_threshold)
        details["ensemble_file"] = {
            "path": str(run.fitted.path.resolve()),
            "sha256": run.fitted.sha256,
            "overlapping_studies": run.fitted.overlap,
        }
        if run.fitted.mismatch:
            details["ensemble_file"]["warnings"] = _mismatch_warnings(run.fitted)
        baselines = (ModelColumn("body_part", _PLAIN_MEAN_COLUMN),)
    if run.settings.tta != "none":
        details["tta"] = run.settings.tta
    return EnsembleInfo(run.settings.ensemble, thresholds=thresholds, details=details, baselines=baselines or ())


def _with_plain_mean(run: _Run, images: pd.DataFrame, studies: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Copies of the tables with the ``body_part`` ensemble's probability in :data:`_PLAIN_MEAN_COLUMN`.

    ``images`` is the whole image table (``counted`` column included), so the
    study rows come out in the order of ``studies``.
    """
    plain_images = image_probabilities(images, run.models, ensemble="body_part")
    plain_studies = study_table(images, run.models, ensemble="body_part", threshold=run.threshold)["prob"]
    return (
        studies.assign(**{_PLAIN_MEAN_COLUMN: plain_studies.to_numpy()}),
        images.assign(**{_PLAIN_MEAN_COLUMN: plain_images}),
    )


def _models_record(run: _Run) -> dict:
    """``models.json``: how the run scored (``precision``, ``tta``) and each model (name, sha256, plugin, body parts,
    precision, path relative to ``--out``); what ``fit-ensemble`` binds its members to."""
    settings = run.settings

    def relative(path: str) -> str:
        if run.private is not None:  # --pseudonymize: no folder of this machine, "<run folder>/model.onnx"
            return str(run.private.text(str(path)))
        try:
            return os.path.relpath(path, run.out)
        except ValueError:  # another drive (Windows): keep it as it is
            return str(path)

    models = [{**m.describe(), "precision": settings.precision, "path": relative(m.path)} for m in run.models]
    return {"precision": settings.precision, "tta": settings.tta, "models": models}


def _write_tables(
    run: _Run, images: pd.DataFrame, studies: pd.DataFrame, metrics: dict | None, notes: list[str]
) -> dict[str, Path]:
    """``images.csv``, ``studies.csv``, ``models.json`` and ``metrics.json`` (a stale one removed when there are no labels)."""
    out = run.out
    written = {
        "images": atomic_write_csv(out / IMAGES_FILE, images),
        "studies": atomic_write_csv(out / STUDIES_FILE, studies),
        "models": atomic_write_json(out / MODELS_FILE, run.hide(_models_record(run))),
    }
    if metrics is not None:
        written["metrics"] = atomic_write_json(out / METRICS_FILE, metrics)
    elif (out / METRICS_FILE).exists():
        (out / METRICS_FILE).unlink()  # a stale file from an earlier run would be mistaken for this one's
        notes.append(f"no labels in the input: removed the earlier {out / METRICS_FILE}")
    return written


def _draw_heatmaps(run: _Run, images: pd.DataFrame, studies: pd.DataFrame, notes: list[str]) -> HeatmapOutput | None:
    """``--explain K``: overlays of the selected studies, staged beside ``heatmaps/`` (None without ``--explain``).

    Computed here, after the (possibly resumed) scoring, whatever the backend; with ``--pseudonymize`` every path,
    file name and error is pseudonymized as it is produced (:attr:`~.heatmaps.ExplainJob.hide`).
    """
    if not run.settings.explain:
        return None
    from .explain_select import ALL_K
    from .heatmaps import ExplainJob, write_heatmaps

    images, studies = _heatmap_tables(run, images, studies)
    job = ExplainJob(
        run.out,
        images,
        studies,
        tuple(run.models),
        run.settings.ensemble,
        ALL_K if run.settings.explain == "all" else int(run.settings.explain),
        run.fitted_ensemble,
        hide=run.private.text if run.private is not None else None,
        defer_install=True,
        every_abnormal=run.settings.explain == "all",
        method=run.settings.explain_method,
    )
    output = write_heatmaps(job)
    if run.settings.findings is not None:
        from .heatmaps import discard, score_findings

        try:
            score_findings(output, Path(run.settings.findings))
        except BaseException:  # no staged folder outlives a failure
            discard(output)
            raise
    notes.extend(output.notes)
    return output


def _write_outputs(
    run: _Run,
    shown: tuple[pd.DataFrame, pd.DataFrame, dict | None],
    backend: str,
    unknown: dict[str, int],
    heat: HeatmapOutput | None,
    notes: list[str],
) -> dict[str, Path]:
    """Write every output of the run, after everything that can fail but a write: the report is rendered and the
    heatmaps staged first, so a failure leaves the earlier outputs as they were (no new tables beside an old
    report); then the tables, the heatmaps folder (one rename) and the report. A staged folder never outlives a
    failure."""
    from ..io import atomic_write_text
    from .heatmaps import discard, install

    try:
        gallery = run.hide(heat.gallery) if heat is not None else None
        html = _render_report(run, shown, backend, unknown, gallery)
        written = _write_tables(run, *shown, notes)
        if heat is not None and heat.index is not None:
            install(heat)
            written["heatmaps"] = heat.index
        written["report"] = atomic_write_text(run.out / REPORT_FILE, html)
    except BaseException:
        discard(heat)
        raise
    return written


def _pseudonymizer(run: _Run, identifiers: Iterable[str] = ()) -> Pseudonymizer | None:
    """``--pseudonymize``: the input's patient ids, study UIDs (and what DICOM headers name: ``identifiers``)
    with their keyed pseudonyms, and the folders of this machine cut from paths (else None)."""
    settings = run.settings
    key = key_for(settings.pseudonymize, settings.pseudonym_key)
    if key is None:
        return None
    from ..pseudonym import Pseudonymizer, identifiers_of, path_roots

    source = run.input_path if run.input_path.is_dir() else run.input_path.parent
    images = [*run.manifest["path"], *run.skipped["path"]]
    outside = [p for p in images if not os.path.abspath(p).startswith(os.path.abspath(source) + os.sep)]
    models = [Path(m.path).parent.parent for m in run.models]  # a model's run folder name is kept
    extra = [settings.labels, settings.ensemble_file]
    roots = path_roots([source], outside, models, *([p] for p in extra if p is not None), [run.out])
    return Pseudonymizer(key, identifiers_of(run.manifest, run.skipped, extra=identifiers), roots)


def _heatmap_tables(run: _Run, images: pd.DataFrame, studies: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tables ``--explain`` reads: with ``--pseudonymize``, study keys and patients hidden (folder names
    come from the keys) but the real image paths (it decodes the images)."""
    if run.private is None:
        return images, studies
    ids = ("study", "patient")
    return run.private.frame(images, only=ids), run.private.frame(studies, only=ids)


def _render_report(run: _Run, tables: tuple, backend: str, unknown: dict[str, int], gallery: dict | None) -> str:
    """``report.html``'s text: the tables, the metrics as given, failed inputs, unknown body parts, heatmaps, and a
    compact provenance (names, sha256 and training-set hashes; no absolute path, no card.json content)."""
    from ..report import render_report

    images, studies, metrics = tables
    failed = images.loc[images["status"] != OK, ["path", "study", "body_part", "status", "error"]]
    provenance = run.hide(_provenance(run, backend))
    if unknown:  # absent otherwise: the report of an ordinary run is unchanged
        provenance["unknown_body_parts"] = unknown
    return render_report(
        studies=studies,
        images=images,
        metrics=metrics,
        models=run.hide([_model_info(m) for m in run.models]),
        provenance=provenance,
        failed=failed,
        heatmaps=gallery,
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


def image_table(
    manifest: pd.DataFrame,
    skipped: pd.DataFrame | None,
    scored: ScoredRows,
    models: Sequence[ModelSpec],
    *,
    ensemble: str,
    fitted: Any = None,
) -> pd.DataFrame:
    """The rows of ``images.csv`` (plus an internal ``counted`` column), in input order.

    Manifest images first, in manifest order, with the runner's status,
    error and per-model probabilities; then the files the scan skipped, with
    their skip reason as status and the study the scan found for them
    (:func:`mura_ens.data.layout.skipped_frame`; ``counted`` False: they are
    listed, not counted as images of a study).
    """
    import numpy as np
    import pandas as pd

    from ..data.layout import SKIP_REASONS

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

    if skipped is not None and len(skipped):
        extra = skipped[["path", "study", "patient", "body_part", "label", "reason"]].rename(
            columns={"reason": "status"}
        )
        extra = extra.assign(
            label=extra["label"].astype("Int64"),
            error=[SKIP_REASONS.get(reason, "") for reason in extra["status"]],
            counted=False,
            **{column: np.nan for column in probs},
        )
        frame = pd.concat([frame, extra[frame.columns]], ignore_index=True)

    ensemble_probs = image_probabilities(frame, models, ensemble=ensemble, fitted=fitted)
    frame.insert(list(frame.columns).index("status"), "prob", ensemble_probs)
    for column in ("path", "study", "patient", "body_part", "status", "error"):
        frame[column] = frame[column].astype("str")
    return frame


def _check_journal_rows(rows: list[dict], manifest: pd.DataFrame, hide: Any = None) -> None:
    paths = manifest["path"].to_numpy(dtype=object)
    for row in rows:
        i = row.get("index")
        if not isinstance(i, int) or not 0 <= i < len(paths) or (hide or str)(paths[i]) != row.get("path"):
            raise UsageError("--resume: the journal does not match the input's images; rerun without --resume")


def _model_info(model: ModelSpec) -> dict:
    """A model's provenance for the report, compact and free of paths of any machine: its name, its file relative
    to its run folder's parent, plugin, body parts, input size, resize policy, threshold, precision, sha256, and
    the sha256 of the training set (card.json ``data.manifest_sha256``) when its run's card is beside it. The
    card itself is never copied into the report (it names training images by path)."""
    import json

    from ..run_folder import CARD_FILE

    path = Path(model.path)
    info = {
        "name": model.name,
        "file": f"{path.parent.name}/{path.name}",
        "plugin": model.plugin,
        "body_parts": list(model.body_parts),
        "input_size": model.input_size,
        "resize_policy": model.resize_policy,
        "threshold": model.threshold,
        "quantization": model.metadata.get("quantization", ""),
        "sha256": model.sha256,
        "training_set_sha256": "",
    }
    try:
        card = json.loads((path.parent / CARD_FILE).read_text(encoding="utf-8"))
        digest = (card.get("data") or {}).get("manifest_sha256") if isinstance(card, dict) else None
        info["training_set_sha256"] = str(digest or "")
    except (OSError, ValueError, AttributeError):  # no card, or an unreadable one: the hash is unknown
        pass
    return info


def _provenance(run: _Run, backend: str) -> dict:
    """Input and options of the run for the report (which adds library versions itself).

    No clock time here: a resumed run describes itself exactly as an uninterrupted one.
    """
    settings = run.settings
    return {
        "command": "mura-ens score",
        "input": run.input_path.resolve().name,  # a name, never a folder of this machine
        "models": ", ".join(m.name for m in run.models),
        "ensemble": settings.ensemble,
        **_fitted_provenance(run),
        "threshold": run.threshold,
        "tta": settings.tta,
        "precision": settings.precision,
        "backend": backend,
        "providers": ", ".join(run.providers),
        "batch_size": settings.batch_size,
        "workers": settings.decode_workers,
        "n_images": len(run.manifest),
        "n_skipped": len(run.skipped),
        "platform": f"{platform.system()} {platform.machine()}",
    }


def _fitted_provenance(run: _Run) -> dict:
    """The ensemble file's path and sha256, and its content for the report's "Fitted ensemble" section."""
    if run.fitted is None:
        return {}
    return {
        "ensemble_file": run.fitted.path.name,
        "ensemble_file_sha256": run.fitted.sha256,
        "fitted_ensemble": {**run.fitted.ensemble.to_dict(), "applied_warnings": _mismatch_warnings(run.fitted)},
    }


def _mismatch_warnings(fitted: _FittedFile) -> list[str]:
    """What ``--allow-mismatch`` writes into metrics.json and the report."""
    return [
        f"applied with --allow-mismatch to {m}: the fitted weights and thresholds may not hold" for m in fitted.mismatch
    ]
