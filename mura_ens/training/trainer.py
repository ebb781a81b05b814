"""``train()``: from a data source and a plugin to run folders with a trained, exported model.

One run folder per model (DESIGN.md "Model artifacts"; file names from
:mod:`mura_ens.run_folder`): ``history.tsv``, ``curves.png``, ``best.keras``,
``evaluation.json`` (test fold), ``card.json``, ``model.onnx`` (+
``parity_batch.npz``, the real images the ONNX parity check ran on). A
specialist family gives one run per body part present in the training fold.
A run is built in a hidden sibling folder and renamed into place once its
``card.json`` is written (:mod:`.atomic_run`); what training refuses and warns
about is :mod:`.checks`, the memory guard :mod:`.resources` (docs/failures.md).

Order of work, so that mistakes cost seconds, not epochs: options are checked
when the :class:`~mura_ens.training.options.TrainOptions` is made, plugin
parameters first in :func:`train`, then the data are scanned and split, then
each model is built (an offline ``--weights imagenet`` fails here) and only
then trained. One model goes through four steps: build and fit, evaluate,
export, card.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from .. import __version__, console
from ..data.manifest import manifest_table
from ..errors import PluginError, RunFailed, UsageError
from ..io import atomic_write_csv, atomic_write_json, write_errors_as_usage
from ..plugin import GENERALIST, SPECIALIST_FAMILY, WEIGHTS_CHOICES, check_plugin, resolve_params
from ..run_folder import (
    BEST_FILE,
    CURVES_FILE,
    EVALUATION_FILE,
    HELDOUT_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    TENSORBOARD_DIR,
    ModelMetadata,
    write_card,
)
from .atomic_run import PartialRun, building_run, check_run_name, choose_run_name, fingerprint
from .checks import (
    check_cache_path,
    check_loaded,
    check_out_path,
    check_train_fold,
    dropped_text,
    fold_warnings,
    used_rows,
    warn,
)
from .class_weights import class_weight_table, sample_weights
from .data import TrainingData, fold_counts, load_training_data, model_rows
from .export import export_model, plugin_feature_layer, save_parity_batch, write_explain
from .options import DEFAULT_LR, RunConfig, TrainOptions
from .reuse import reuse_line, run_identity, settle
from .run_names import NameSpec, option_defaults, run_name
from .strategy import (
    KERAS_MULTIWORKER_ISSUE,
    check_workers_agree,
    make_strategy,
    prepare_model,
    read_tf_config,
)

PARITY_IMAGES = 8
LR_FACTOR = 0.2
MIN_LR = 1e-7

Echo = Callable[[str], None]


@dataclass
class RunPlan:
    """One model to train: who builds it, which body parts it serves, its run name."""

    name: str
    plugin: str  # the plugin asked for (``specialists`` for a family member)
    builder: Any  # the plugin object whose build() makes the model
    builder_name: str
    base: str | None
    body_parts: tuple[str, ...]  # parts the model serves; () = all
    reuse: bool = False  # a finished run of the same configuration is at out/name (:mod:`.reuse`)
    replace: bool = False  # --overwrite: the new run replaces out/name when finished


@dataclass(frozen=True)
class _Job:
    """What every model of one ``train()`` call shares."""

    plans: list[RunPlan]
    hyper: dict[str, Any]
    config: RunConfig
    data: TrainingData
    setup: Any  # tf_runtime.DeviceSetup
    distribution: Any  # strategy.StrategySetup
    echo: Echo | None
    scan_seconds: float
    warm_start: Any = None  # warm_start.WarmStart (--init-from) or None
    tensorboard: bool = True  # write tensorboard/ logs


@dataclass(frozen=True)
class _Folds:
    """The rows of one model, split by fold, and their counts for the card."""

    rows: pd.DataFrame
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    counts: dict[str, dict[str, int]]


@dataclass(frozen=True)
class _Fitted:
    """What ``fit`` left behind: the epoch log, the best checkpoint, the images that failed to load."""

    log: Any  # callbacks.EpochLog
    checkpoint: Any  # callbacks.BestCheckpoint
    failures: Any  # pipeline.LoadFailures
    class_weights: dict
    seconds: float
    notes: tuple[str, ...] = ()  # warnings of the first epoch (dropped images, a one-class val fold)


@dataclass(frozen=True)
class _Evaluated:
    metrics: dict[str, dict]  # fold -> metrics.json structure
    split: str  # the fold evaluation.json holds
    notes: list[str]


@dataclass(frozen=True)
class _Exported:
    metadata: dict[str, str]  # the ONNX metadata_props
    report: dict[str, Any]  # card.json "export"


def train(
    plugin: str | Any,
    data: str | os.PathLike | pd.DataFrame,
    out: str | os.PathLike,
    options: TrainOptions | None = None,
    **overrides: Any,
) -> list[Path]:
    """Train ``plugin`` on ``data``, evaluate on the test fold, export to ONNX; return the run folders.

    Parameters
    ----------
    plugin : str or plugin object
        Registry name (``mura-ens plugins``) or a plugin object.
    data : path or DataFrame
        A MURA-layout folder, a folder with the official CSVs, a manifest CSV,
        or an in-memory manifest frame. MURA ``valid`` is the test fold;
        ``train`` is split by patient into train/val (``val_fraction``, ``seed``).
    out : path
        Parent folder of the run folders (created). Run names come from the parameters
        (:mod:`.run_names`) unless ``name`` is given. A finished run of the same
        configuration and data already there is reused (returned untouched) unless
        ``overwrite``; a run of another configuration is never overwritten: a derived
        name gets ``-2``, ``-3``, ..., an explicit ``name`` is an error (:mod:`.reuse`).
    options : TrainOptions, optional
        Epochs, batch size, image size, weights, plugin parameters, ... (see
        :class:`~mura_ens.training.options.TrainOptions`); default ``TrainOptions()``.
    **overrides
        :class:`TrainOptions` fields as keywords, a shorthand:
        ``train(p, d, o, epochs=3)`` is ``train(p, d, o, TrainOptions(epochs=3))``;
        given with ``options``, they replace those fields of it. An unknown
        keyword raises ``TypeError``.

    Returns
    -------
    list of Path
        The run folders written. In a multi-worker cluster
        (``strategy="multiworker"``) only the chief writes run folders and
        returns them; other workers return ``[]``.

    Raises
    ------
    UsageError
        Bad options, unknown plugin or parameter, unusable data (a training
        fold too small, of one class or unreadable: :mod:`.checks`), a step
        far above the available memory (:mod:`.resources`), offline
        ``--weights imagenet``; nothing of a failed run is left on disk; :class:`~mura_ens.training.export.ParityError`
        when the ONNX export disagrees with Keras.
    """
    if overrides:
        options = replace(options, **overrides) if options is not None else TrainOptions(**overrides)
    options = options if options is not None else TrainOptions()
    started = time.perf_counter()
    _check_paths_first(data, out, options)
    with write_errors_as_usage(str(out)):  # a full or read-only disk: one line (the unfinished run is deleted)
        job = _prepare(_plugin_object(plugin), data, options, Path(out).absolute())
        runs = _train_all(job, Path(out).absolute())
    if job.echo:
        if job.distribution is None or job.distribution.is_chief:
            job.echo(f"done in {time.perf_counter() - started:.1f} s: {len(runs)} run folder(s)")
        else:
            job.echo(f"done in {time.perf_counter() - started:.1f} s; the chief writes the run folder(s)")
    return runs


def _train_all(job: _Job, out: Path) -> list[Path]:
    """Train every planned run not reused; return the run folders (reused ones included)."""
    runs: list[Path] = []
    for plan in job.plans:
        if plan.reuse:  # a finished run of this configuration: nothing is built, nothing touched
            runs.append(out / plan.name)
            continue
        if job.distribution.is_chief:
            run = _train_one(plan, job, out)
            if run is not None:
                runs.append(run)
            continue
        # A non-chief worker trains in step with the chief but keeps nothing: its callbacks write
        # (Keras checkpoints must run on every worker) into a scratch folder removed afterwards.
        with tempfile.TemporaryDirectory(prefix="mura-ens-worker-") as scratch:
            _train_one(plan, job, Path(scratch))
    return runs


def _check_paths_first(data: str | os.PathLike | pd.DataFrame, out: str | os.PathLike, options: TrainOptions) -> None:
    """What needs no scan, before anything is read or created: ``--name`` is a plain folder name, ``--out`` is
    a writable folder (or can be made) and not one of the paths training reads (``--data``, ``--cache``, ...)."""
    from ..io import check_writable_folder, refuse_input_as_output

    if options.name is not None:
        check_run_name(options.name)
    check_out_path(out)
    check_writable_folder(out)
    read = [options.cache, options.init_from]
    if not isinstance(data, pd.DataFrame):
        read.append(data)
    if options.weights not in (None, "none", "imagenet"):
        read.append(options.weights)
    refuse_input_as_output([out], read)


def _prepare(plugin: Any, data: str | os.PathLike | pd.DataFrame, options: TrainOptions, out: Path) -> _Job:
    """Resolve the plugin, its parameters and defaults, scan and split the data, plan the runs, settle what
    is already under ``out`` (reuse), set up devices (unless every run is reused)."""
    echo: Echo | None = console.echo if options.progress else None
    cluster_task = read_tf_config() if options.strategy == "multiworker" else None
    if echo and cluster_task is not None:
        echo = _prefixed(echo, f"[{cluster_task.label}] ")
    builder, base_name, hyper = _resolve_builder(plugin, options.base, cast(Mapping[str, Any], options.params))
    warm_start, hyper, config = _model_settings(options, builder, hyper)
    check_cache_path(config.cache)  # before anything is created
    scan_start = time.perf_counter()
    training_data = load_training_data(data, val_fraction=options.val_fraction, seed=options.seed)
    scan_seconds = time.perf_counter() - scan_start
    stem = _derived_name(plugin, builder, base_name, hyper, config, warm_start)
    plans = plan_runs(
        plugin, builder, base_name, training_data, body_part=options.body_part, name=options.name, stem=stem
    )
    for plan in plans:  # every model's folds are usable, or nothing is trained
        _plan_rows(plan, training_data, max_images=config.max_images, seed=config.seed)
    if options.strategy != "multiworker":  # workers could see --out differently: a cluster always trains
        plans = _settle_runs(plans, out, training_data, hyper, config, options, echo)
    if all(plan.reuse for plan in plans):  # nothing to train: no devices, no TensorFlow
        return _Job(
            plans=plans,
            hyper=hyper,
            config=config,
            data=training_data,
            setup=None,
            distribution=None,
            echo=echo,
            scan_seconds=scan_seconds,
            warm_start=warm_start,
        )

    from .tf_runtime import device_setup

    setup = device_setup(mixed_precision=options.mixed_precision, xla=options.xla)
    distribution = make_strategy(options.strategy, gpus=setup.gpus, task=cluster_task)
    if echo:
        _echo_setup(echo, training_data, setup, distribution, config)
    return _Job(
        plans=plans,
        hyper=hyper,
        config=config,
        data=training_data,
        setup=setup,
        distribution=distribution,
        echo=echo,
        scan_seconds=scan_seconds,
        warm_start=warm_start,
        tensorboard=_tensorboard_wanted(options.tensorboard, echo),
    )


def _derived_name(plugin: Any, builder: Any, base: str | None, hyper: dict, config: RunConfig, warm_start) -> str:
    """The run name from the parameters (:mod:`.run_names`); a family's runs add their body part to it."""
    default_lr = warm_start.fine_tune_lr(None) if warm_start is not None else DEFAULT_LR
    spec = NameSpec(
        plugin=plugin.name,
        base=base,
        image_size=config.image_size,
        params=hyper,
        defaults=dict(getattr(builder, "defaults", {}) or {}),
        weights=config.weights,
        default_weights=resolve_weights(None, default=getattr(builder, "default_weights", "none")),
        options=config.as_dict(),
        option_defaults=option_defaults(default_lr),
        class_weights=config.class_weights,
        augment=config.augment,
    )
    return run_name(spec)


def _settle_runs(
    plans: list[RunPlan], out: Path, data: TrainingData, hyper: dict, config: RunConfig, options: TrainOptions, echo
) -> list[RunPlan]:
    """Each plan as :func:`.reuse.settle` decides: reused (said), replacing its folder, or built beside."""
    settled = []
    for plan in plans:
        identity = run_identity(_config_section(plan, hyper, config), data.manifest_sha256)
        decision = settle(out, plan.name, identity, explicit=options.name is not None, overwrite=options.overwrite)
        if echo and decision.note:
            echo(decision.note)
        if echo and decision.reuse:
            echo(reuse_line(out / decision.name))
        settled.append(replace(plan, name=decision.name, reuse=decision.reuse, replace=decision.replace))
    return settled


def _tensorboard_wanted(wanted: bool, echo: Echo | None) -> bool:
    """``wanted``, unless the tensorboard package is missing (then said once)."""
    if not wanted:
        return False
    from .tensorboard_logs import tensorboard_missing

    why = tensorboard_missing()
    if why and echo:
        echo(f"note: {why}")
    return why is None


def _model_settings(
    options: TrainOptions, builder: Any, hyper: dict[str, Any]
) -> tuple[Any, dict[str, Any], RunConfig]:
    """(the warm start or None, the hyper-parameters, the RunConfig) of every model of the call.

    With ``--init-from`` (:mod:`.warm_start`): the run is checked (finished, same plugin and input
    size, no ``--weights``), its parameters are the defaults, its input size the size, and the learning
    rate defaults to the fine-tuning rate.
    """
    if not options.init_from:
        config = options.run_config(
            image_size=options.image_size or builder.default_input_size,
            weights=resolve_weights(options.weights, default=getattr(builder, "default_weights", "none")),
        )
        return None, hyper, config
    from .warm_start import start_from

    source = start_from(
        options.init_from, builder_name=builder.name, image_size=options.image_size, weights=options.weights
    )
    hyper = resolve_params(builder, source.hyper_overrides(options.params))
    config = options.run_config(image_size=source.input_size, weights=None, default_lr=source.fine_tune_lr(None))
    return source, hyper, config


def _echo_setup(echo: Echo, data: TrainingData, setup, distribution, config: RunConfig) -> None:
    for note in (*data.notes, *setup.notes, *distribution.notes):
        echo(f"note: {note}")
    echo(
        f"device: {setup.device}{' ' + ','.join(setup.gpus) if setup.gpus else ''}"
        f", mixed precision {'on' if setup.mixed_precision else 'off'}, XLA {'on' if setup.xla else 'off'}"
    )
    echo(
        f"strategy: {distribution.name}, {distribution.replicas} replica(s)"
        + (f" on {distribution.workers} workers" if distribution.workers > 1 else "")
        + f", global batch {distribution.global_batch_size(config.batch_size)} ({config.batch_size} per replica)"
        + f", lr {config.lr:g}"
    )


def _prefixed(echo: Echo, prefix: str) -> Echo:
    return lambda message: echo(prefix + message)


# --------------------------------------------------------------------------- checks and plans


def _plugin_object(plugin: str | Any) -> Any:
    if isinstance(plugin, str):
        from ..registry import get_plugin

        return get_plugin(plugin)
    check_plugin(plugin)
    return plugin


def _resolve_builder(
    plugin: Any, base: str | None, params: Mapping[str, Any]
) -> tuple[Any, str | None, dict[str, Any]]:
    """(plugin that builds the model, base name or None, validated hyper-parameters).

    A specialist family builds nothing itself: its base plugin, looked up in the
    registry here, builds each body part's model.
    """
    overrides = dict(params)
    if getattr(plugin, "kind", GENERALIST) != SPECIALIST_FAMILY:
        if base is not None:
            raise PluginError(f"--base applies to specialist families only; {plugin.name} is a {plugin.kind}")
        return plugin, None, resolve_params(plugin, overrides)
    from ..registry import get_plugin

    base_name = base or overrides.pop("base", None) or plugin.defaults.get("base")
    if not base_name:
        raise PluginError(f"{plugin.name} needs a base plugin: --base NAME")
    builder = get_plugin(str(base_name))
    if getattr(builder, "kind", GENERALIST) == SPECIALIST_FAMILY:
        raise PluginError(f"base plugin {base_name!r} is itself a specialist family; choose a generalist")
    return builder, str(base_name), resolve_params(builder, overrides)


def resolve_weights(weights: str | os.PathLike | None, *, default: str = "none") -> str | None:
    """``None`` (random init), ``"imagenet"`` or an absolute path to an existing weights file."""
    value = default if weights is None else weights
    text = str(value)
    if text.lower() == "none":
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    path = Path(text).expanduser()
    if not path.is_file():
        raise UsageError(
            f"--weights {text!r}: no such file (expected {' or '.join(WEIGHTS_CHOICES)} or a .h5/.weights.h5 path)"
        )
    return str(path.absolute())


def plan_runs(
    plugin: Any,
    builder: Any,
    base: str | None,
    data: TrainingData,
    *,
    body_part: str | None = None,
    name: str | None = None,
    stem: str | None = None,
) -> list[RunPlan]:
    """The models one ``train`` call makes: one, or one per body part for a specialist family.

    Names: ``name`` (``--name``) as given, else ``stem`` (the name derived from the parameters) else the
    plugin's name, plus ``-<body part>`` (each part of a family; a generalist's ``body_part``).
    """
    serves = tuple(getattr(builder, "body_parts", ()) or ())
    if body_part is not None:
        if serves and body_part not in serves:
            raise UsageError(f"plugin {builder.name} serves {', '.join(serves)}, not {body_part}")
        serves = (body_part,)
    present = data.parts_in("train")
    if getattr(plugin, "kind", GENERALIST) == SPECIALIST_FAMILY:
        parts = [p for p in present if not serves or p in serves]
        if not parts:
            wanted = ", ".join(serves) if serves else "any body part"
            raise UsageError(f"no training images of {wanted} in {data.source}")
        prefix = name or stem or f"{plugin.name}-{base}"
        return [
            RunPlan(
                name=f"{prefix}-{part}",
                plugin=plugin.name,
                builder=builder,
                builder_name=builder.name,
                base=base,
                body_parts=(part,),
            )
            for part in parts
        ]
    if serves and not any(p in present for p in serves):
        raise UsageError(f"no training images of {', '.join(serves)} in {data.source}")
    default_name = (stem or plugin.name) + (f"-{body_part}" if body_part else "")
    return [
        RunPlan(
            name=name or default_name,
            plugin=plugin.name,
            builder=builder,
            builder_name=builder.name,
            base=None,
            body_parts=serves,
        )
    ]


def new_run_dir(out: Path, name: str) -> Path:
    """``out/name``, or ``out/name-2``, ``-3``, ... when that is taken (:func:`.atomic_run.choose_run_name`); created.

    Training itself builds a run in a hidden sibling and renames it to this name when finished
    (:func:`.atomic_run.building_run`).
    """
    candidate = choose_run_name(out, name)
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


# --------------------------------------------------------------------------- one run


def build_model(plugin: Any, config: Mapping[str, Any], *, plugin_name: str | None = None, log=None):
    """``plugin.build(config)`` with build failures turned into one-line :class:`UsageError`\\ s.

    An ImageNet download that fails (Keras raises a plain ``Exception``
    "URL fetch failure on https://storage.googleapis.com/..." after about
    2 s offline) becomes a message naming ``--weights none`` and
    ``--weights PATH``. The model must map (N, S, S, 3) to (N, 1). What the
    build prints (Keras' "Downloading data from ...") goes to the text stream
    ``log`` (default: discarded), never to stdout, which carries results.
    """
    name = plugin_name or getattr(plugin, "name", "?")
    try:
        with contextlib.redirect_stdout(log if log is not None else io.StringIO()):
            model = plugin.build(dict(config))
    except UsageError:
        raise
    except Exception as exc:
        if config.get("weights") == "imagenet" and _is_download_failure(exc):
            raise UsageError(
                f"cannot download the ImageNet weights for {name} (no network?): "
                "use --weights none (random init) or --weights PATH (a local .h5/.weights.h5 file)"
            ) from exc
        weights = config.get("weights")
        if weights not in (None, "none", "imagenet"):
            raise PluginError(
                f"plugin {name} failed to build its model with --weights {weights} (saved from another "
                f"architecture or other --param values?): {type(exc).__name__}: {_one_line(exc)}"
            ) from exc
        raise PluginError(f"plugin {name} failed to build its model: {type(exc).__name__}: {_one_line(exc)}") from exc
    size = int(config["image_size"])
    in_shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    out_shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else None
    if in_shape is None or tuple(in_shape[1:]) != (size, size, 3) or out_shape is None or tuple(out_shape[1:]) != (1,):
        raise PluginError(
            f"plugin {name} built a model with input {in_shape} and output {out_shape}; "
            f"expected (None, {size}, {size}, 3) -> (None, 1)"
        )
    return model


def _one_line(exc: BaseException, limit: int = 4000) -> str:
    """The whole message of ``exc`` on one line: tensor values dumped by Keras left out, cut only past ``limit``."""
    text = re.sub(r", value=\[.*?\]>", ">", str(exc), flags=re.S)  # `<Variable path=..., value=[[...]]>`
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"


def _is_download_failure(exc: BaseException) -> bool:
    import urllib.error

    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if "URL fetch failure" in str(current) or isinstance(
            current, (urllib.error.URLError, ConnectionError, TimeoutError)
        ):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _plan_rows(plan: RunPlan, data: TrainingData, *, max_images: int | None, seed: int) -> pd.DataFrame:
    """The manifest rows (with ``fold``) one model uses; raises when it has no train or no val rows."""
    rows = model_rows(data.frame, plan.body_parts, max_images, seed=seed)
    train_rows = rows.loc[rows["fold"] == "train"]
    if train_rows.empty:
        raise UsageError(f"{plan.name}: no training images after the split")
    check_train_fold(plan.name, train_rows)  # a minimum of images, both classes
    if not (rows["fold"] == "val").any():
        raise UsageError(
            f"{plan.name}: no validation images after the patient-grouped split "
            f"({train_rows['patient'].nunique()} training patients); use more data or a larger --val-fraction"
        )
    return rows


# --------------------------------------------------------------------------- one run


def _train_one(plan: RunPlan, job: _Job, out: Path) -> Path | None:
    """Build and fit, evaluate, export, write the card: one run folder under ``out`` (``None`` off the chief).

    The run is built in a hidden sibling folder and renamed to its name only once ``model.onnx`` passed
    its parity check and ``card.json`` is written (:mod:`.atomic_run`); a run that fails leaves nothing.
    """
    from .tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    timings: dict[str, float] = {"scan_and_split": round(job.scan_seconds, 3)}
    folds = _fold_rows(plan, job)
    notes: list[str] = []  # warnings, also kept in card.json
    for text in fold_warnings(plan.name, folds.rows):
        warn(notes, text)
    tick = time.perf_counter()
    model = _build_compiled(plan, job)
    _check_memory(model, plan, job, notes)
    timings["build"] = round(time.perf_counter() - tick, 3)
    key = fingerprint(_run_fingerprint(plan, folds.rows, job.config, job.hyper))
    with building_run(out, plan.name, config_fingerprint=key, echo=job.echo, replace=plan.replace) as run:
        if job.echo and job.distribution.is_chief:
            job.echo(f"run folder: {run.final} (built in {run.work.name} until it is finished)")
        fitted = _fit(model, run.work, folds, job, name=plan.name)
        timings["fit"] = fitted.seconds
        if not job.distribution.is_chief:  # the chief evaluates, exports and writes the card
            keras.backend.clear_session()
            return None
        card = _finish(model, plan, run, folds, fitted, job, timings, notes)
        write_card(run.work, card)  # last: a run is finished once its card is there
        run.commit()
    keras.backend.clear_session()
    return run.final


def _finish(
    model, plan: RunPlan, run: PartialRun, folds: _Folds, fitted: _Fitted, job: _Job, timings: dict, notes: list
) -> dict[str, Any]:
    """Keep the best weights, evaluate and export them (in ``run.work``); return the content of card.json."""
    from .export import float32_model, load_best_model, save_inference_model
    from .schematic import write_schematic
    from .tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    notes = [*notes, *fitted.notes, *_keep_best(model, run.work, plan, fitted, job.config)]
    # Evaluate and export exactly what best.keras holds, in float32 (what ONNX scoring computes).
    keras.mixed_precision.set_global_policy("float32")
    loaded = load_best_model(run.work / BEST_FILE)
    save_inference_model(loaded, run.work / BEST_FILE)  # architecture + weights; the optimizer state is dropped
    best = float32_model(loaded)
    tick = time.perf_counter()
    evaluated = _evaluate(best, plan, run.work, folds, fitted.failures, job)
    timings["evaluate"] = round(time.perf_counter() - tick, 3)
    atomic_write_csv(run.work / HELDOUT_FILE, manifest_table(folds.val))  # a labelled tuning set for score
    exported = _export(best, plan, run.work, folds, job, name=run.name)
    timings["export"] = exported.report["seconds"]
    schematic = write_schematic(best, run.work)  # model.txt, and model.png when Graphviz is there
    return {
        **_card_header(plan, run.final, job, exported),
        "data": _card_data(job.data, folds, fitted),
        "training": _card_training(job, fitted),
        **_card_warm_start(job),
        "metrics": dict(evaluated.metrics),
        "evaluated_on": evaluated.split,
        "export": exported.report,
        "schematic": schematic,
        "versions": library_versions(plan.builder),
        "timings": timings,
        "notes": notes + evaluated.notes,
    }


def _check_memory(model, plan: RunPlan, job: _Job, notes: list[str]) -> None:
    """Refuse, or warn about, a training step far above the available memory (:mod:`.resources`)."""
    from .resources import check_training_memory, estimate_training_memory

    config = job.config
    estimate = estimate_training_memory(
        model,
        batch_size=config.batch_size,
        image_size=config.image_size,
        replicas=job.distribution.replicas,
        mixed_precision=job.setup.mixed_precision,
    )
    text = check_training_memory(
        plan.name, estimate, on_gpu=bool(job.setup.gpus), batch_size=config.batch_size, image_size=config.image_size
    )
    if text:
        warn(notes, text)


def _fold_rows(plan: RunPlan, job: _Job) -> _Folds:
    """The model's rows by fold (echoed); every worker of a cluster must have the same."""
    rows = _plan_rows(plan, job.data, max_images=job.config.max_images, seed=job.config.seed)
    folds = _Folds(
        rows=rows,
        train=rows.loc[rows["fold"] == "train"],
        val=rows.loc[rows["fold"] == "val"],
        test=rows.loc[rows["fold"] == "test"],
        counts=fold_counts(rows),
    )
    if job.echo:
        job.echo(
            f"{plan.name}: "
            + "; ".join(
                f"{fold} {c['images']} images / {c['studies']} studies ({c['abnormal_studies']} abnormal)"
                for fold, c in folds.counts.items()
            )
        )
    check_workers_agree(
        job.distribution,
        _run_fingerprint(plan, rows, job.config, job.hyper),
        what=f"the images, split or options of {plan.name}",
    )
    return folds


def _build_compiled(plan: RunPlan, job: _Job):
    """The plugin's model, seeded, built and compiled under the run's strategy."""
    from .keras_metrics import training_metrics
    from .tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    # Build first: an unusable plugin or offline ImageNet weights fail before any data are decoded.
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("mixed_float16" if job.setup.mixed_precision else "float32")
    keras.utils.set_random_seed(job.config.seed)
    config = {"image_size": job.config.image_size, "weights": job.config.weights, **job.hyper}
    with job.distribution.scope():  # variables of the model and the optimizer are mirrored over the replicas
        model = build_model(plan.builder, config, plugin_name=plan.builder_name, log=sys.stderr if job.echo else None)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=job.config.lr),
            loss=keras.losses.BinaryCrossentropy(),
            metrics=training_metrics(),
            jit_compile=job.setup.xla,
        )
    if job.warm_start is not None:  # --init-from: fine-tune from that run's best weights
        job.warm_start.load_into(model)
        if job.echo:
            job.echo(f"{plan.name}: starting from the weights of {job.warm_start.run_dir}, lr {job.config.lr:g}")
    prepare_model(model, job.distribution)
    return model


def _fit(model, run_dir: Path, folds: _Folds, job: _Job, *, name: str) -> _Fitted:
    """Class weights, the streams, the callbacks (history.tsv, best.keras), then ``model.fit``.

    After the first epoch, when every train/val image has been read once, unusable folds stop the
    run and dropped images are warned about (:func:`.checks.check_loaded`).
    """
    from .callbacks import BestCheckpoint, EpochLog
    from .pipeline import LoadFailures

    config, echo = job.config, job.echo
    table = class_weight_table(folds.train) if config.class_weights else {}
    if config.class_weights:
        w_train, w_val = sample_weights(folds.train, table), sample_weights(folds.val, table)
    else:
        w_train, w_val = np.ones(len(folds.train), np.float32), np.ones(len(folds.val), np.float32)
    failures = LoadFailures()
    train_ds, val_ds = fit_datasets(
        folds.train, w_train, folds.val, w_val, config=config, distribution=job.distribution, failures=failures
    )

    notes: list[str] = []

    def check_first_epoch() -> None:
        for text in check_loaded(name, folds.train, folds.val, failures.as_dict()):
            warn(notes, text)

    checkpoint = BestCheckpoint(run_dir / BEST_FILE)
    log = EpochLog(run_dir / HISTORY_FILE, config.epochs, echo=echo, on_first_epoch=check_first_epoch)
    tick = time.perf_counter()
    logs = run_dir / TENSORBOARD_DIR if job.tensorboard else None
    callbacks = _callbacks(config.patience, checkpoint, log, logs)
    if echo is not None and job.distribution.is_chief and console.interactive():  # a step bar inside each epoch
        from .callbacks import StepProgress

        batch = job.distribution.global_batch_size(config.batch_size)
        callbacks.insert(callbacks.index(log), StepProgress(-(-len(folds.train) // batch), config.epochs, batch))
    _run_fit(model, train_ds, val_ds, callbacks=callbacks, job=job)
    return _Fitted(
        log=log,
        checkpoint=checkpoint,
        failures=failures,
        class_weights=table,
        seconds=round(time.perf_counter() - tick, 3),
        notes=tuple(notes),
    )


def _callbacks(patience: int, checkpoint, log, tensorboard_dir: Path | None = None) -> list:
    """The run's callbacks; TensorBoard (when ``tensorboard_dir``) first, so that it logs each epoch's own lr."""
    from .tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    first = []
    if tensorboard_dir is not None:
        from .tensorboard_logs import tensorboard_callback

        first.append(tensorboard_callback(tensorboard_dir))
    return [
        *first,
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=LR_FACTOR, patience=max(1, patience // 2), min_lr=MIN_LR, verbose=0
        ),
        checkpoint,
        log,
    ]


def _run_fit(model, train_ds, val_ds, *, callbacks: list, job: _Job) -> None:
    from .tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    with warnings.catch_warnings():
        # The pipeline filters unreadable images, so Keras cannot know the number of
        # steps in epoch 1 and warns when the data end; that end is expected.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        try:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=job.config.epochs,
                verbose=0,
                callbacks=callbacks,
                shuffle=False,
            )  # the tf.data pipeline shuffles
        except (ValueError, TypeError) as exc:
            if job.distribution.name != "multiworker":
                raise
            detail = " ".join(str(exc).split())
            detail = detail if len(detail) <= 160 else detail[:157] + "..."
            raise RunFailed(
                f"multiworker training failed inside Keras {keras.__version__} model.fit "
                f"({type(exc).__name__}: {detail}); Keras 3 with MultiWorkerMirroredStrategy is an upstream "
                f"problem ({KERAS_MULTIWORKER_ISSUE}): train with --strategy mirrored on one machine instead"
            ) from exc


def _keep_best(model, run_dir: Path, plan: RunPlan, fitted: _Fitted, config: RunConfig) -> list[str]:
    """Make sure best.keras exists, draw curves.png; return the card notes this adds."""
    from .history import plot_curves

    notes: list[str] = []
    if not (run_dir / BEST_FILE).exists():  # val_loss never finite: keep the last weights
        notes.append("val_loss was never finite; best.keras holds the last epoch")
        model.save(run_dir / BEST_FILE)
    plot_curves(fitted.log.rows, run_dir / CURVES_FILE, title=plan.name, weighted_loss=bool(config.class_weights))
    return notes


def _evaluate(best, plan: RunPlan, run_dir: Path, folds: _Folds, failures, job: _Job) -> _Evaluated:
    """Metrics of ``best`` on val and test; writes evaluation.json (test, else val) and echoes its study line.

    Test images that fail to load are warned about; a test fold none of whose images loads is left out.
    """
    metrics, fold_notes = {}, []
    for fold, fold_rows in (("val", folds.val), ("test", folds.test)):
        if fold_rows.empty:
            continue
        result, warned = evaluate_fold(best, fold_rows, job.config, failures)
        fold_notes += [f"{fold}: {n}" for n in warned]
        dropped = dropped_text(plan.name, fold, fold_rows, failures.as_dict()) if fold == "test" else None
        if dropped:  # train/val drops were warned about after the first epoch
            warn(fold_notes, dropped)
        if not used_rows(fold_rows, failures.as_dict()).empty:
            metrics[fold] = result
    split = "test" if "test" in metrics else "val"
    missing = "no test images (MURA valid split)" if folds.test.empty else "no test image could be loaded"
    notes = [] if split == "test" else [f"{missing}: evaluation.json holds the validation fold"]
    atomic_write_json(run_dir / EVALUATION_FILE, {"model_name": plan.name, "split": split, **metrics[split]})
    if job.echo:
        from ..metrics import format_metric

        study = metrics[split]["study"]["overall"]
        shown = " ".join(f"{key} {format_metric(study[key])}" for key in ("kappa", "auc", "accuracy"))
        job.echo(f"{split} (study level, n={study['n']}): {shown}")
    return _Evaluated(metrics=metrics, split=split, notes=notes + fold_notes)


def _export(best, plan: RunPlan, run_dir: Path, folds: _Folds, job: _Job, *, name: str) -> _Exported:
    """model.onnx with its metadata (model name ``name``), checked against Keras on up to 8 real test/val
    images (kept in the run)."""
    from .pipeline import load_batch

    config = job.config
    parity_images, parity_paths = load_batch(
        pd.concat([folds.test, folds.val])["path"].tolist(),
        image_size=config.image_size,
        resize_policy=config.resize_policy,
        limit=PARITY_IMAGES,
    )
    if not len(parity_images):
        raise UsageError(f"{plan.name}: no readable val/test image for the ONNX parity check")
    save_parity_batch(run_dir, parity_images, parity_paths)
    metadata = _onnx_props(plan, name, config)
    report = export_model(best, run_dir / MODEL_FILE, metadata=metadata, parity_images=parity_images)
    report["parity_paths"] = parity_paths
    report["path"] = str(run_dir.parent / name / MODEL_FILE)  # where it is once the run is finished
    layer = config.explain_layer or plugin_feature_layer(plan.builder)
    source = "option" if config.explain_layer else "plugin"
    report["explain"] = write_explain(best, run_dir, parity_images, feature_layer=layer, source=source)
    if job.echo:
        job.echo(f"exported {name}/{MODEL_FILE} (ONNX vs Keras max |diff| {report['onnx_max_abs_diff']:.2g})")
    return _Exported(metadata=metadata, report=report)


def _onnx_props(plan: RunPlan, model_name: str, config: RunConfig) -> dict[str, str]:
    """The model's ONNX ``metadata_props``: the standard ones, then ``base_plugin`` for a family member."""
    return ModelMetadata(
        plugin=plan.plugin,
        model_name=model_name,
        body_parts=tuple(plan.body_parts),
        input_size=config.image_size,
        resize_policy=config.resize_policy,
        threshold=config.threshold,
        extra={"base_plugin": plan.base} if plan.base else {},
    ).to_onnx_props()


# --------------------------------------------------------------------------- card.json


def _card_header(plan: RunPlan, run_dir: Path, job: _Job, exported: _Exported) -> dict[str, Any]:
    """The model's identity, what it expects, and the full config of the run."""
    return {
        "model_name": run_dir.name,
        "plugin": plan.plugin,
        "base_plugin": plan.base,
        "builder": plan.builder_name,
        "kind": SPECIALIST_FAMILY if plan.base else GENERALIST,
        "body_parts": list(plan.body_parts),
        "input_size": job.config.image_size,
        "resize_policy": job.config.resize_policy,
        "threshold": job.config.threshold,
        "onnx_max_abs_diff": exported.report["onnx_max_abs_diff"],
        "onnx_metadata": exported.metadata,
        "config": _config_section(plan, job.hyper, job.config),
    }


def _config_section(plan: RunPlan, hyper: Mapping[str, Any], config: RunConfig) -> dict[str, Any]:
    """card.json ``config``: the full configuration of one model (also what :mod:`.reuse` compares)."""
    return {
        "plugin": plan.plugin,
        "base": plan.base,
        "body_parts": list(plan.body_parts),
        "params": dict(hyper),
        **config.as_dict(),
    }


def _card_data(data: TrainingData, folds: _Folds, fitted: _Fitted) -> dict[str, Any]:
    """Where the data came from; ``folds`` counts the images actually used (those that loaded)."""
    failed = fitted.failures.as_dict()
    used = fold_counts(used_rows(folds.rows, failed))
    return {
        "source": data.source,
        "manifest_sha256": data.manifest_sha256,
        "manifest_images": data.n_manifest_rows,
        "unlabelled_images_left_out": data.n_unlabelled,
        "skipped_files": data.n_skipped,
        "split_seed": data.split_seed,
        "val_fraction": data.val_fraction,
        "folds": used,
        "images_dropped": {fold: folds.counts[fold]["images"] - used[fold]["images"] for fold in used},
        "class_weights": fitted.class_weights,
        "images_not_loaded": failed,
    }


def _card_training(job: _Job, fitted: _Fitted) -> dict[str, Any]:
    history = fitted.log.rows
    best = fitted.checkpoint.best
    return {
        "epochs_run": len(history),
        "best_epoch": fitted.checkpoint.best_epoch or (len(history) if history else 0),
        "best_val_loss": best if math.isfinite(best) else None,
        "stopped_early": len(history) < job.config.epochs,
        "device": job.setup.device,
        "gpus": list(job.setup.gpus),
        "mixed_precision": job.setup.mixed_precision,
        "xla": job.setup.xla,
        "tensorboard": TENSORBOARD_DIR if job.tensorboard else None,
        **job.distribution.card(per_replica_batch_size=job.config.batch_size, learning_rate=job.config.lr),
        "history": history,
    }


def _card_warm_start(job: _Job) -> dict[str, Any]:
    """``{"init_from": ...}`` (where the starting weights came from) for a warm-started run, else nothing."""
    if job.warm_start is None:
        return {}
    lr_given = job.config.lr != job.warm_start.fine_tune_lr(None)
    return {"init_from": job.warm_start.card_section(lr=job.config.lr, lr_given=lr_given)}


# --------------------------------------------------------------------------- pieces used by other modules and tests


def fit_datasets(
    train_rows: pd.DataFrame,
    train_weights,
    val_rows: pd.DataFrame,
    val_weights,
    *,
    config: RunConfig,
    distribution,
    failures,
) -> tuple[Any, Any]:
    """The training and validation streams ``fit`` reads, for the run's strategy.

    Batches have the global size (``batch_size`` x replicas); ``fit`` splits
    each over the replicas. In a multi-worker cluster every worker reads the
    same seeded stream and keeps its share of each batch (``DATA``
    sharding), so the parallel decode must keep the stream's order: with a
    free order, workers would see some images twice and others not at all.
    """
    from .pipeline import StreamSettings, training_dataset

    cache = None
    if config.cache:
        from .cache import ImageCache

        paths = list(dict.fromkeys([*train_rows["path"].astype(str), *val_rows["path"].astype(str)]))
        cache = ImageCache.open(config.cache, paths, image_size=config.image_size, resize_policy=config.resize_policy)
    stream = StreamSettings(
        image_size=config.image_size,
        resize_policy=config.resize_policy,
        batch_size=distribution.global_batch_size(config.batch_size),
        seed=config.seed,
        deterministic=True,  # seeded runs are reproducible; multi-worker sharding needs it too
        cache=cache,
    )
    train_ds = training_dataset(
        train_rows, train_weights, stream, failures=failures, shuffle=True, augment=config.augment
    )
    val_ds = training_dataset(val_rows, val_weights, stream, failures=failures, shuffle=False, augment=False)
    dataset_options = distribution.dataset_options()
    if dataset_options is not None:
        train_ds, val_ds = train_ds.with_options(dataset_options), val_ds.with_options(dataset_options)
    return train_ds, val_ds


def _run_fingerprint(plan: RunPlan, rows: pd.DataFrame, config: RunConfig, hyper: Mapping[str, Any]) -> str:
    """What every worker of a cluster must agree on: the rows in order (by study key and file name,
    not by mount point), their labels and folds, the options and the hyper-parameters."""
    names = rows["path"].map(lambda path: os.path.basename(str(path)))
    table = pd.DataFrame(
        {
            "study": rows["study"].astype(str),
            "name": names,
            "label": rows["label"].astype(str),
            "fold": rows["fold"].astype(str),
        }
    )
    return json.dumps(
        {
            "plan": plan.name,
            "builder": plan.builder_name,
            "options": config.as_dict(),
            "hyper": dict(hyper),
            "rows": table.to_csv(index=False),
        },
        sort_keys=True,
        default=str,
    )


def evaluate_fold(model, rows: pd.DataFrame, config: RunConfig, failures) -> tuple[dict, list[str]]:
    """metrics.json structure (image and study level) of ``model`` on ``rows``, and metric warnings."""
    from ..metrics import BootstrapSettings, evaluate_predictions
    from .pipeline import predict_paths

    prob, ok = predict_paths(
        model,
        rows["path"].tolist(),
        image_size=config.image_size,
        resize_policy=config.resize_policy,
        batch_size=config.batch_size,
        failures=failures,
    )
    failed = failures.as_dict()
    frame = rows.loc[:, ["path", "study", "patient", "body_part", "label"]].copy()
    frame["prob"] = prob
    frame["status"] = [
        "ok" if good else failed.get(path, "unreadable") for path, good in zip(frame["path"], ok, strict=True)
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = evaluate_predictions(frame, threshold=config.threshold, bootstrap=BootstrapSettings(seed=config.seed))
    return metrics, sorted({str(w.message) for w in caught})


def library_versions(plugin: Any = None) -> dict[str, str | None]:
    """Versions of Python, mura-ens, the ML stack and the plugin's distribution."""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version(), "mura_ens": __version__}
    for package in (
        "tensorflow",
        "keras",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
        "pandas",
        "pillow",
        "scikit-learn",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if plugin is not None:
        from ..registry import plugin_entry

        try:
            entry = plugin_entry(getattr(plugin, "name", ""))
        except PluginError:  # a plugin object passed directly, not registered
            entry = None
        if entry is not None and entry.distribution:
            versions[f"plugin:{entry.name}"] = f"{entry.distribution} {entry.version}".strip()
    return versions
