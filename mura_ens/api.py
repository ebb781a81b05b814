"""The public Python API: what the ``mura-ens`` commands run, callable from a script or a notebook.

Every function here is re-exported at the package top (``mura_ens.train``,
``mura_ens.score``, ...) and imported lazily, so ``import mura_ens`` stays fast
and TensorFlow-free: only :func:`train` and :func:`export` (without
``quantize`` alone) load TensorFlow, when called. Keyword arguments are named
like the CLI options (``--batch-size`` -> ``batch_size``); they are gathered
into the settings objects (:class:`~mura_ens.training.options.TrainOptions`,
:class:`~mura_ens.scoring.score.ScoreSettings`,
:class:`~mura_ens.fitting.FitSettings`,
:class:`~mura_ens.metrics.BootstrapSettings`), which check every value when made:
a bad value raises a one-line :class:`~mura_ens.errors.UsageError`.
The functions return data: :class:`~mura_ens.runs.Run` objects, DataFrames, dicts.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .console import one_line_warnings
from .errors import MissingExtraError, UsageError
from .runs import Run, load_run

if TYPE_CHECKING:  # heavy modules are imported inside the functions
    import pandas as pd
    from _typeshed import DataclassInstance

    from .fitting import FitSettings, FittedEnsemble
    from .metrics import BootstrapSettings
    from .onnx.quantize import QuantizedRun
    from .plugin import Plugin
    from .scoring.backends import Backend
    from .scoring.score import ScoreResult, ScoreSettings
    from .training.export import ExportedRun
    from .training.options import TrainOptions

PathLike = str | os.PathLike
#: What ``export(..., quantize=...)`` accepts.
QUANTIZE_MODES: tuple[str, ...] = ("int8",)
#: The modules of the [train] extra, looked up (not imported) before training starts.
TRAIN_MODULES: tuple[str, ...] = ("tensorflow", "keras", "tf2onnx")
#: CLI spellings accepted by :func:`train` besides the :class:`TrainOptions` field names.
_TRAIN_ALIASES = {"param": "params"}
#: A settings dataclass that :func:`train_options` and :func:`score_settings` fill from keywords.
_Settings = TypeVar("_Settings", bound="DataclassInstance")


def list_plugins() -> list[dict[str, Any]]:
    """The model plugins found through the ``mura_ens.plugins`` entry points, one dict each.

    Keys: ``name``, ``kind``, ``body_parts``, ``input_size``, ``weights``,
    ``distribution``, ``version``, ``status`` (``ok`` or ``broken: <why>``),
    ``description`` — the rows of ``mura-ens plugins --json``.

    >>> [p["name"] for p in mura_ens.list_plugins() if p["status"] == "ok"]  # doctest: +SKIP
    ['custom_cnn', 'densenet201', 'resnet50', 'specialists']
    """
    from .registry import plugin_rows

    return plugin_rows()


def train(
    plugin: str | Plugin,
    data: PathLike | pd.DataFrame,
    out: PathLike,
    options: TrainOptions | None = None,
    **overrides: Any,
) -> list[Run]:
    """Train a plugin's model(s) on ``data``, evaluate on the test fold, export ``model.onnx``; return the runs.

    Parameters
    ----------
    plugin
        A plugin name (see :func:`list_plugins`) or a plugin object.
    data
        A MURA-layout folder, a folder with the official CSVs, a manifest CSV or a manifest DataFrame.
    out
        The folder receiving one run folder per model.
    options
        A :class:`~mura_ens.training.options.TrainOptions`; default ``TrainOptions()``.
    **overrides
        ``TrainOptions`` fields as keywords, named like the ``mura-ens train`` options:
        ``epochs``, ``batch_size``, ``image_size``, ``weights``, ``params`` (or ``param``:
        ``["cells=3"]``), ``max_images``, ``body_part``, ``base``, ``name``, ``overwrite``,
        ``tensorboard``, ``progress``, ...; with ``options`` they replace its fields.

    Returns
    -------
    list of Run
        One :class:`~mura_ens.runs.Run` per model (a specialist family gives one per body part). Runs are
        named after their parameters unless ``name`` is given; a finished run of the same configuration
        and data already in ``out`` is returned as it is, untouched, unless ``overwrite=True``
        (docs/runs.md).

    Raises
    ------
    MissingExtraError
        TensorFlow (the ``[train]`` extra) is not installed: an ``ImportError`` whose
        message is the ``pip install 'mura-ens[train]'`` line.
    UsageError
        A bad option, plugin or parameter, unusable data.

    >>> runs = mura_ens.train("custom_cnn", "data/MURA-v1.1", "runs", epochs=3, image_size=48)  # doctest: +SKIP
    """
    options = train_options(options, **overrides)
    require_train_extra()
    from .training.checks import training_warnings_as_lines
    from .training.trainer import train as train_models

    with training_warnings_as_lines():  # one "mura-ens: warning: ..." line each, no file:line (notebooks too)
        return [load_run(path) for path in train_models(plugin, data, out, options)]


def train_options(options: TrainOptions | None = None, **overrides: Any) -> TrainOptions:
    """``options`` with ``overrides`` applied (CLI spellings accepted: ``param``, ``quiet``); checked on construction.

    An unknown keyword raises ``TypeError`` naming it.
    """
    from .training.options import TrainOptions

    fields = {_TRAIN_ALIASES.get(key, key): value for key, value in overrides.items()}
    if "quiet" in fields:
        fields["progress"] = not fields.pop("quiet")
    return _overridden(TrainOptions, options, fields, "train")


def require_train_extra() -> None:
    """Raise :class:`~mura_ens.errors.MissingExtraError` when a module of the ``[train]`` extra is not installed.

    Looks the modules up without importing them (so an error comes before the
    data scan); a broken installation is caught when TensorFlow is imported.
    """
    for name in TRAIN_MODULES:
        if _not_installed(name):
            raise MissingExtraError(f"training and export ({name} is not installed)", "train")


def _not_installed(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is None
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` did to one run folder.

    ``onnx``: the re-exported ``model.onnx`` (path, metadata, the card's
    ``export`` section), or None when it was kept; ``int8``: the quantized
    ``model.int8.onnx`` (path, the card's ``int8`` section, its agreement with
    fp32), or None without ``quantize``.
    """

    run_dir: Path
    onnx: ExportedRun | None = None
    int8: QuantizedRun | None = None

    @property
    def paths(self) -> list[Path]:
        """The model files written."""
        return [done.path for done in (self.onnx, self.int8) if done is not None]


def check_quantize(quantize: str | None) -> None:
    """One-line :class:`~mura_ens.errors.UsageError` unless ``quantize`` is None or one of :data:`QUANTIZE_MODES`."""
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise UsageError(f"unknown --quantize {quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")


@one_line_warnings
def export(
    run_dir: PathLike,
    *,
    quantize: str | None = None,
    calibration_images: int = 200,
    data: PathLike | None = None,
    reexport: bool = False,
) -> ExportResult:
    """Re-export a finished run's ``best.keras`` to ``model.onnx`` (parity-checked), or quantize it.

    Without ``quantize``: convert ``RUN_DIR/best.keras`` (needs TensorFlow).
    With ``quantize="int8"``: write ``model.int8.onnx`` from ``model.onnx`` by
    ONNX Runtime static quantization, calibrated on ``calibration_images``
    training images (found at the card's data source, or ``data`` when it
    moved), and record its agreement with fp32 in ``card.json``; no TensorFlow,
    unless ``reexport`` (re-export first) or ``model.onnx`` is missing.
    An unfinished run (no ``card.json``) is refused with one line.

    >>> mura_ens.export("runs/custom_cnn", quantize="int8").int8.agreement  # doctest: +SKIP
    """
    from .run_folder import MODEL_FILE

    check_quantize(quantize)
    from .training.export import require_finished_run

    run_dir = require_finished_run(Path(run_dir))  # a run being built or killed is never exported nor quantized
    exported = int8 = None
    if quantize is None or reexport or not (run_dir / MODEL_FILE).exists():
        from .training.export import export_run

        exported = export_run(run_dir)
    if quantize == "int8":
        from .onnx.quantize import quantize_run

        int8 = quantize_run(run_dir, calibration_images=calibration_images, data=data)
    return ExportResult(run_dir=run_dir, onnx=exported, int8=int8)


@one_line_warnings
def score(
    input: PathLike,
    out: PathLike,
    *,
    models: PathLike | None = None,
    model: PathLike | Iterable[PathLike] | None = None,
    settings: ScoreSettings | None = None,
    backend: str | Backend = "local",
    progress: bool | None = None,
    **options: Any,
) -> ScoreResult:
    """Score every image of ``input`` with every applicable ONNX model; write the tables, metrics and report to ``out``.

    Parameters
    ----------
    input
        A MURA-layout folder (any depth), a folder with the official CSVs, or a manifest CSV.
    out
        The output folder: ``images.csv``, ``studies.csv``, ``models.json``, ``metrics.json`` (labelled input)
        and ``report.html``.
    models, model
        Every ``*.onnx`` under the folder ``models`` and/or the model file(s) ``model``.
    settings
        A :class:`~mura_ens.scoring.score.ScoreSettings`; default ``ScoreSettings()``.
    backend
        ``local`` (this machine), ``dask`` (needs the ``[dask]`` extra), or a backend object.
    progress
        A progress bar; default only when stderr is a terminal.
    **options
        ``ScoreSettings`` fields named like the ``mura-ens score`` options: ``ensemble``
        (``body_part`` | ``mean`` | ``fitted``), ``ensemble_file``, ``allow_mismatch`` (apply it to another
        precision / TTA than it was fitted on, with a warning), ``tta``, ``batch_size``, ``workers``,
        ``threshold``, ``resume``, ``providers``, ``precision``, ``bootstrap`` (a
        :class:`~mura_ens.metrics.BootstrapSettings` or a number of resamples), ``explain`` (K: heatmaps
        of the K most abnormal studies and, with labels, the K worst false positives and negatives under
        ``heatmaps/``; ``"all"``: every labelled abnormal study too), ``findings`` (a ``findings.csv``: the
        heatmaps scored against its boxes, ``heatmaps/explain_eval.json``), ``labels`` (a labels CSV joined by study or path, e.g. for a DICOM folder),
        ``pseudonymize`` and ``pseudonym_key`` (patient ids replaced by keyed hashes in every output); and,
        with ``backend="dask"``, ``scheduler`` and ``ship_models``.

    Returns
    -------
    ScoreResult
        ``images`` and ``studies`` (DataFrames: the rows of the two CSVs), ``metrics`` (the
        ``metrics.json`` dict, None without labels), ``models``, ``threshold``, ``paths`` (the
        files written), ``notes``. See :func:`mura_ens.metrics_table` and :func:`mura_ens.roc_figure`.

    >>> result = mura_ens.score("data/MURA-v1.1/valid", "results", models="runs")  # doctest: +SKIP
    >>> result.studies[["study", "prob", "pred"]].head()  # doctest: +SKIP
    """
    from .scoring.backends import make_backend
    from .scoring.score import score as run_scoring

    input, out, models = (
        path_arg("input", input, optional=False),
        path_arg("out", out, optional=False),
        path_arg("models", models, hint="; give model files as model=[...]"),
    )
    files = path_list("model", model)
    scheduler, ship_models = options.pop("scheduler", None), options.pop("ship_models", False)
    settings = score_settings(settings, **options)
    if isinstance(backend, str):
        backend = make_backend(
            backend,
            workers=settings.decode_workers,
            scheduler=scheduler,
            ship_models=ship_models,
            cluster_workers=settings.workers,
        )
    elif scheduler is not None or ship_models:
        raise UsageError(
            "scheduler and ship_models are options of a backend named by its name, not of a backend object"
        )
    return run_scoring(
        input, out, models_dir=models, model_files=files, settings=settings, backend=backend, progress=progress
    )


def path_arg(name: str, value: Any, *, optional: bool = True, hint: str = "") -> Any:
    """``value`` when it is a path (``str`` or ``os.PathLike``; None when ``optional``), else one
    :class:`~mura_ens.errors.UsageError` naming the argument, the accepted types and the type given."""
    if (value is None and optional) or isinstance(value, (str, os.PathLike)):
        return value
    accepted = "a path (str or os.PathLike)" + (" or None" if optional else "")
    raise UsageError(f"{name} must be {accepted}, got {type(value).__name__} {_short_repr(value)}{hint}")


def path_list(name: str, value: Any) -> list[Any]:
    """``value`` as a list of paths: None, one path, or a list/tuple of paths; anything else is one
    :class:`~mura_ens.errors.UsageError` naming the argument and the accepted types."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return list(value)
    bad = (
        next((v for v in value if not isinstance(v, (str, os.PathLike))), value)
        if isinstance(value, (list, tuple))
        else value
    )
    raise UsageError(
        f"{name} must be a path (str or os.PathLike) or a list of paths, got {type(value).__name__} "
        f"{_short_repr(value)}" + (f" holding a {type(bad).__name__}" if bad is not value else "")
    )


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def score_settings(settings: ScoreSettings | None = None, **options: Any) -> ScoreSettings:
    """``settings`` (default ``ScoreSettings()``) with ``options`` applied; ``bootstrap`` may be a number of resamples."""
    from .scoring.score import ScoreSettings

    if "bootstrap" in options:
        options["bootstrap"] = bootstrap_settings(options["bootstrap"])
    return _overridden(ScoreSettings, settings, options, "score")


def _overridden(cls: type[_Settings], base: _Settings | None, fields: dict[str, Any], call: str) -> _Settings:
    """``base`` (default ``cls()``) with ``fields`` replaced, checked on construction; ``TypeError`` names unknown keys."""
    unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
    if unknown:
        raise TypeError(f"{call}() got unknown option(s): {', '.join(unknown)}")
    if base is None:
        return cls(**fields)
    return replace(base, **fields) if fields else base


def bootstrap_settings(bootstrap: BootstrapSettings | int, seed: int = 0) -> BootstrapSettings:
    """A :class:`~mura_ens.metrics.BootstrapSettings`: given, or ``bootstrap`` resamples (0 = none) with ``seed``."""
    from .metrics import BootstrapSettings

    if isinstance(bootstrap, BootstrapSettings):
        return bootstrap
    return BootstrapSettings(n_resamples=bootstrap, seed=seed)


@one_line_warnings
def evaluate(
    predictions: PathLike,
    *,
    threshold: float | None = None,
    ensemble_file: PathLike | None = None,
    prob_column: str = "prob",
    bootstrap: BootstrapSettings | int = 1000,
    seed: int = 0,
    out: PathLike | None = None,
) -> dict[str, Any]:
    """Metrics (the ``metrics.json`` structure) of a labelled ``studies.csv`` or ``images.csv``.

    Predictions are ``prob_column > threshold`` (default 0.5), or, with
    ``ensemble_file``, ``> `` the fitted ensemble's per-part thresholds (what
    ``score --ensemble fitted`` predicted with); not both. ``bootstrap``: a
    :class:`~mura_ens.metrics.BootstrapSettings`, or the number of resamples of
    the 95% intervals (0 = none) drawn with ``seed``. With ``out`` the metrics
    are also written there (JSON). Groups with one class get ``auc: None`` and
    an :class:`~mura_ens.metrics.UndefinedMetricWarning`.

    >>> mura_ens.metrics_table(mura_ens.evaluate("results/studies.csv")).loc["study"]  # doctest: +SKIP
    """
    from .predictions import evaluate_file, fitted_thresholds

    settings = bootstrap_settings(bootstrap, seed)
    if ensemble_file is not None and threshold is not None:
        raise UsageError("give --threshold or --ensemble-file, not both")
    cut = (
        fitted_thresholds(Path(ensemble_file))
        if ensemble_file is not None
        else (0.5 if threshold is None else threshold)
    )
    metrics = evaluate_file(Path(predictions), threshold=cut, prob_column=prob_column, bootstrap=settings)
    if out is not None:
        from .io import atomic_write_json

        atomic_write_json(out, metrics)
    return metrics


@one_line_warnings
def fit_ensemble(
    scored_dir: PathLike,
    out: PathLike | None = None,
    *,
    models: PathLike | None = None,
    model: PathLike | Iterable[PathLike] | None = None,
    settings: FitSettings | None = None,
    **options: Any,
) -> FittedEnsemble:
    """Fit per body part member weights, an optional calibrator and a threshold on a labelled ``score`` output.

    ``scored_dir`` is the ``out`` folder of :func:`score` on a labelled set not
    used for training; the members, their sha256, the precision and the TTA come from its
    ``models.json``; ``models`` / ``model`` only cross-check them (a model that differs
    from what the folder was scored with is a one-line :class:`UsageError`). ``options``:
    :class:`~mura_ens.fitting.FitSettings` fields named like the
    ``mura-ens fit-ensemble`` options (``calibrate``, ``threshold_rule``,
    ``threshold``, ``shrinkage``, ``threshold_shrinkage`` (None = auto),
    ``min_studies``, ``folds``, ``seed``). With ``out`` the ensemble is
    saved there (``ensemble.json``, for ``score(..., ensemble="fitted", ensemble_file=out)``).

    >>> fitted = mura_ens.fit_ensemble("tuning", "ensemble.json", calibrate="platt")  # doctest: +SKIP
    """
    from .fitting import FitSettings, fit_scored_dir
    from .fitting.scored import MODELS_FILE
    from .io import refuse_input_as_output
    from .scoring.models import load_models

    files = path_list("model", model)
    scored_dir, out = path_arg("scored_dir", scored_dir, optional=False), path_arg("out", out)
    models = path_arg("models", models)
    if out is not None and Path(out).is_dir():
        raise UsageError(f"--out must be a file, got a folder: {out}")
    scored = Path(scored_dir)
    tables = [scored / name for name in ("studies.csv", "images.csv", "metrics.json", MODELS_FILE)]
    refuse_input_as_output([out], [scored, *tables, models, *files])
    if "folds" in options:
        options["cv_folds"] = options.pop("folds")
    if settings is None:
        settings = FitSettings(**options)
    elif options:
        settings = replace(settings, **options)
    given = load_models(models, files) if models is not None or files else None  # only cross-checked
    fitted = fit_scored_dir(scored_dir, settings, given_models=given, whole_folder=models is not None)
    if out is not None:
        fitted.save(out)
    return fitted
