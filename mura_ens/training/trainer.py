"""``train()``: from a data source and a plugin to run folders with a trained, exported model.

One run folder per model (DESIGN.md "Model artifacts"):
``history.tsv``, ``curves.png``, ``best.keras``, ``evaluation.json`` (test
fold), ``card.json``, ``model.onnx`` (+ ``parity_batch.npz``, the real images
the ONNX parity check ran on). A specialist family gives one run per body
part present in the training fold.

Order of work, so that mistakes cost seconds, not epochs: options and
plugin parameters are checked first, then the data are scanned and split,
then each model is built (an offline ``--weights imagenet`` fails here) and
only then trained.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__, console
from ..constants import BODY_PARTS
from ..errors import PluginError, RunFailed, UsageError
from ..io import atomic_write_json
from ..plugin import GENERALIST, SPECIALIST_FAMILY, WEIGHTS_CHOICES, check_plugin, parse_param_strings, resolve_params
from .class_weights import class_weight_table, sample_weights
from .data import TrainingData, fold_counts, limit_images, load_training_data, select_parts
from .export import (
    BEST_FILE,
    CARD_FILE,
    MODEL_FILE,
    export_model,
    onnx_metadata,
    save_parity_batch,
)
from .strategy import (
    KERAS_MULTIWORKER_ISSUE,
    check_strategy,
    check_workers_agree,
    make_strategy,
    prepare_model,
    read_tf_config,
)

THRESHOLD = 0.5
PARITY_IMAGES = 8
LR_FACTOR = 0.2
MIN_LR = 1e-7
EVALUATION_FILE = "evaluation.json"
HISTORY_FILE = "history.tsv"
CURVES_FILE = "curves.png"


@dataclass
class RunPlan:
    """One model to train: who builds it, which body parts it serves, its run name."""

    name: str
    plugin: str  # the plugin asked for (``specialists`` for a family member)
    builder: Any  # the plugin object whose build() makes the model
    builder_name: str
    base: str | None
    body_parts: tuple[str, ...]  # parts the model serves; () = all


def train(
    plugin: str | Any,
    data: str | os.PathLike | pd.DataFrame,
    out: str | os.PathLike,
    *,
    body_part: str | None = None,
    epochs: int = 100,
    patience: int = 10,
    batch_size: int = 32,
    image_size: int | None = None,
    lr: float = 1e-3,
    weights: str | os.PathLike | None = None,
    class_weights: bool = True,
    augment: bool = True,
    max_images: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    params: Mapping[str, Any] | Iterable[str] | None = None,
    base: str | None = None,
    name: str | None = None,
    mixed_precision: bool | None = None,
    xla: bool | None = None,
    progress: bool = True,
    resize_policy: str = "stretch",
    strategy: str = "auto",
    cache: str | os.PathLike | None = None,
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
        Parent folder of the run folders (created). An existing run folder
        is never overwritten: ``-2``, ``-3``, ... is appended to the name.
    body_part : str, optional
        Train on (and tag the model with) one body part only.
    epochs, patience : int
        Maximum epochs; early stopping patience on ``val_loss`` (best weights
        restored). The learning rate drops by 0.2 after ``max(1, patience // 2)``
        epochs without improvement.
    batch_size, image_size, lr : int, int, float
        Batch size *per replica* (a step takes ``batch_size x replicas``
        images); square input side (default: the plugin's); Adam's rate,
        used as given whatever the number of replicas.
    weights : str or path, optional
        ``"imagenet"``, ``"none"`` or a local ``.h5`` / ``.weights.h5`` file
        (default: the plugin's ``default_weights``).
    class_weights : bool
        Weight the loss with the MURA paper's per-body-part class weights
        computed on the training fold.
    augment : bool
        Random flips and rotations (+-30 degrees) on training batches.
    max_images : int, optional
        At most this many images per fold (whole studies, seeded): for quick runs.
    params : dict or list of "key=value"
        Plugin hyper-parameters (validated against the plugin's defaults).
    base : str, optional
        Base plugin of a specialist family (default: the family's ``base``).
    name : str, optional
        Run name (default: the plugin name, plus the body part).
    mixed_precision, xla : bool, optional
        Default: on when a GPU is present; always off on CPU.
    progress : bool
        Print data, device and one line per epoch on stderr.
    resize_policy : str
        ``stretch`` (MURA paper) or ``pad``; recorded in the ONNX metadata so
        scoring resizes the same way.
    strategy : str
        ``auto`` (several GPUs: ``mirrored``, else ``one``), ``one``,
        ``mirrored`` or ``multiworker`` (``TF_CONFIG``); see
        :mod:`mura_ens.training.strategy`. In a multi-worker cluster only the
        chief writes run folders and returns them; other workers return ``[]``.
    cache : path, optional
        Folder of a decoded-image cache (:mod:`mura_ens.training.cache`):
        the first epoch stores each resized image there (memory-mapped uint8),
        later epochs and later runs on the same files read pixels instead of
        decoding PNGs.

    Returns
    -------
    list of Path
        The run folders written.

    Raises
    ------
    UsageError
        Bad options, unknown plugin or parameter, unusable data, offline
        ``--weights imagenet``; :class:`~mura_ens.training.export.ParityError`
        when the ONNX export disagrees with Keras.
    """
    echo: Callable[[str], None] | None = console.echo if progress else None
    started = time.perf_counter()
    plugin_obj = _plugin_object(plugin)
    _check_options(
        body_part=body_part,
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        image_size=image_size,
        lr=lr,
        max_images=max_images,
        val_fraction=val_fraction,
        resize_policy=resize_policy,
    )
    strategy = check_strategy(strategy)
    cluster_task = read_tf_config() if strategy == "multiworker" else None
    if echo and cluster_task is not None:
        echo = _prefixed(echo, f"[{cluster_task.label}] ")
    builder, base_name, hyper = _resolve_builder(plugin_obj, base, params)
    image_size = int(image_size or builder.default_input_size)
    weights_value = resolve_weights(weights, default=getattr(builder, "default_weights", "none"))

    scan_start = time.perf_counter()
    training_data = load_training_data(data, val_fraction=val_fraction, seed=seed)
    scan_seconds = time.perf_counter() - scan_start
    plans = plan_runs(plugin_obj, builder, base_name, training_data, body_part=body_part, name=name)
    for plan in plans:  # every model's folds are usable, or nothing is trained
        _plan_rows(plan, training_data, max_images=max_images, seed=seed)

    from .tf_runtime import device_setup

    setup = device_setup(mixed_precision=mixed_precision, xla=xla)
    distribution = make_strategy(strategy, gpus=setup.gpus, task=cluster_task)
    if echo:
        for note in (*training_data.notes, *setup.notes, *distribution.notes):
            echo(f"note: {note}")
        echo(
            f"device: {setup.device}{' ' + ','.join(setup.gpus) if setup.gpus else ''}"
            f", mixed precision {'on' if setup.mixed_precision else 'off'}, XLA {'on' if setup.xla else 'off'}"
        )
        echo(
            f"strategy: {distribution.name}, {distribution.replicas} replica(s)"
            + (f" on {distribution.workers} workers" if distribution.workers > 1 else "")
            + f", global batch {distribution.global_batch_size(batch_size)} ({batch_size} per replica), lr {lr:g}"
        )
    options = {
        "epochs": epochs,
        "patience": patience,
        "batch_size": batch_size,
        "image_size": image_size,
        "lr": lr,
        "weights": weights_value,
        "class_weights": class_weights,
        "augment": augment,
        "max_images": max_images,
        "seed": seed,
        "val_fraction": val_fraction,
        "resize_policy": resize_policy,
        "threshold": THRESHOLD,
        "strategy": strategy,
        "cache": str(cache) if cache else None,
    }
    runs = []
    for plan in plans:
        if distribution.is_chief:
            runs.append(
                _train_one(
                    plan,
                    training_data,
                    Path(out).absolute(),
                    hyper=hyper,
                    options=options,
                    setup=setup,
                    echo=echo,
                    scan_seconds=scan_seconds,
                    distribution=distribution,
                )
            )
            continue
        # A non-chief worker trains in step with the chief but keeps nothing: its callbacks write
        # (Keras checkpoints must run on every worker) into a scratch folder removed afterwards.
        with tempfile.TemporaryDirectory(prefix="mura-ens-worker-") as scratch:
            _train_one(
                plan,
                training_data,
                Path(scratch),
                hyper=hyper,
                options=options,
                setup=setup,
                echo=echo,
                scan_seconds=scan_seconds,
                distribution=distribution,
            )
    if echo:
        if distribution.is_chief:
            echo(f"done in {time.perf_counter() - started:.1f} s: {len(runs)} run folder(s)")
        else:
            echo(f"done in {time.perf_counter() - started:.1f} s; the chief writes the run folder(s)")
    return runs


def _prefixed(echo: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda message: echo(prefix + message)


# --------------------------------------------------------------------------- checks and plans


def _plugin_object(plugin: str | Any) -> Any:
    if isinstance(plugin, str):
        from ..registry import get_plugin

        return get_plugin(plugin)
    check_plugin(plugin)
    return plugin


def _check_options(**o) -> None:
    if o["body_part"] is not None and o["body_part"] not in BODY_PARTS:
        raise UsageError(f"unknown body part {o['body_part']!r}; expected one of {', '.join(BODY_PARTS)}")
    for key in ("epochs", "batch_size"):
        if int(o[key]) < 1:
            raise UsageError(f"{key.replace('_', '-')} must be >= 1, got {o[key]}")
    if int(o["patience"]) < 0:
        raise UsageError(f"patience must be >= 0, got {o['patience']}")
    if o["image_size"] is not None and int(o["image_size"]) < 16:
        raise UsageError(f"image-size must be >= 16, got {o['image_size']}")
    if not (float(o["lr"]) > 0 and math.isfinite(float(o["lr"]))):
        raise UsageError(f"lr must be a positive number, got {o['lr']}")
    if o["max_images"] is not None and int(o["max_images"]) < 1:
        raise UsageError(f"max-images must be >= 1, got {o['max_images']}")
    if not 0.0 < float(o["val_fraction"]) < 1.0:
        raise UsageError(f"val-fraction must be between 0 and 1 (exclusive), got {o['val_fraction']}")
    from ..data.images import check_policy

    check_policy(o["resize_policy"])


def _resolve_builder(plugin: Any, base: str | None, params) -> tuple[Any, str | None, dict[str, Any]]:
    """(plugin that builds the model, base name or None, validated hyper-parameters)."""
    if params is None:
        overrides: dict[str, Any] = {}
    elif isinstance(params, Mapping):
        overrides = dict(params)
    else:
        overrides = parse_param_strings(params)
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
) -> list[RunPlan]:
    """The models one ``train`` call makes: one, or one per body part for a specialist family."""
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
        prefix = name or f"{plugin.name}-{base}"
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
    default_name = plugin.name + (f"-{body_part}" if body_part else "")
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
    """``out/name``, or ``out/name-2``, ``-3``, ... when that exists and is not empty; created."""
    if not name or any(ch in name for ch in "/\\") or name in (".", ".."):
        raise UsageError(f"bad run name {name!r}: it must be a plain folder name")
    candidate, number = out / name, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        number += 1
        candidate = out / f"{name}-{number}"
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
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PluginError(f"plugin {name} failed to build its model: {type(exc).__name__}: {detail}") from exc
    size = int(config["image_size"])
    in_shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    out_shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else None
    if in_shape is None or tuple(in_shape[1:]) != (size, size, 3) or out_shape is None or tuple(out_shape[1:]) != (1,):
        raise PluginError(
            f"plugin {name} built a model with input {in_shape} and output {out_shape}; "
            f"expected (None, {size}, {size}, 3) -> (None, 1)"
        )
    return model


def _is_download_failure(exc: BaseException) -> bool:
    import urllib.error

    seen = 0
    while exc is not None and seen < 10:
        if "URL fetch failure" in str(exc) or isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _plan_rows(plan: RunPlan, data: TrainingData, *, max_images: int | None, seed: int) -> pd.DataFrame:
    """The manifest rows (with ``fold``) one model uses; raises when it has no train or no val rows."""
    rows = limit_images(select_parts(data.frame, plan.body_parts), max_images, seed=seed)
    train_rows = rows.loc[rows["fold"] == "train"]
    if train_rows.empty:
        raise UsageError(f"{plan.name}: no training images after the split")
    if not (rows["fold"] == "val").any():
        raise UsageError(
            f"{plan.name}: no validation images after the patient-grouped split "
            f"({train_rows['patient'].nunique()} training patients); use more data or a larger --val-fraction"
        )
    return rows


def _train_one(
    plan: RunPlan, data: TrainingData, out: Path, *, hyper, options, setup, echo, scan_seconds, distribution
) -> Path | None:
    from .callbacks import BestCheckpoint, EpochLog
    from .export import float32_model, load_best_model
    from .history import plot_curves
    from .keras_metrics import training_metrics
    from .pipeline import LoadFailures
    from .tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    timings: dict[str, float] = {"scan_and_split": round(scan_seconds, 3)}
    rows = _plan_rows(plan, data, max_images=options["max_images"], seed=options["seed"])
    train_rows = rows.loc[rows["fold"] == "train"]
    val_rows = rows.loc[rows["fold"] == "val"]
    test_rows = rows.loc[rows["fold"] == "test"]
    counts = fold_counts(rows)
    if echo:
        echo(
            f"{plan.name}: "
            + "; ".join(
                f"{fold} {c['images']} images / {c['studies']} studies ({c['abnormal_studies']} abnormal)"
                for fold, c in counts.items()
            )
        )
    check_workers_agree(
        distribution, _run_fingerprint(plan, rows, options, hyper), what=f"the images, split or options of {plan.name}"
    )

    # Build first: an unusable plugin or offline ImageNet weights fail before any data are decoded.
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("mixed_float16" if setup.mixed_precision else "float32")
    keras.utils.set_random_seed(options["seed"])
    config = {"image_size": options["image_size"], "weights": options["weights"], **hyper}
    tick = time.perf_counter()
    with distribution.scope():  # variables of the model and the optimizer are mirrored over the replicas
        model = build_model(plan.builder, config, plugin_name=plan.builder_name, log=sys.stderr if echo else None)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=options["lr"]),
            loss=keras.losses.BinaryCrossentropy(),
            metrics=training_metrics(),
            jit_compile=setup.xla,
        )
    prepare_model(model, distribution)
    run_dir = new_run_dir(out, plan.name)
    if echo and distribution.is_chief:
        echo(f"run folder: {run_dir}")
    timings["build"] = round(time.perf_counter() - tick, 3)

    table = class_weight_table(train_rows) if options["class_weights"] else {}
    if options["class_weights"]:
        w_train, w_val = sample_weights(train_rows, table), sample_weights(val_rows, table)
    else:
        w_train, w_val = np.ones(len(train_rows), np.float32), np.ones(len(val_rows), np.float32)
    failures = LoadFailures()
    train_ds, val_ds = fit_datasets(
        train_rows, w_train, val_rows, w_val, options=options, distribution=distribution, failures=failures
    )

    def report_failures() -> None:
        if len(failures) and echo:
            reasons = ", ".join(f"{n} {status}" for status, n in sorted(failures.by_status().items()))
            echo(f"dropped {len(failures)} image(s) that could not be loaded ({reasons})")

    patience = int(options["patience"])
    checkpoint = BestCheckpoint(run_dir / BEST_FILE)
    log = EpochLog(run_dir / HISTORY_FILE, options["epochs"], echo=echo, on_first_epoch=report_failures)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=LR_FACTOR, patience=max(1, patience // 2), min_lr=MIN_LR, verbose=0
        ),
        checkpoint,
        log,
    ]
    tick = time.perf_counter()
    with warnings.catch_warnings():
        # The pipeline filters unreadable images, so Keras cannot know the number of
        # steps in epoch 1 and warns when the data end; that end is expected.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        try:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=options["epochs"],
                verbose=0,
                callbacks=callbacks,
                shuffle=False,
            )  # the tf.data pipeline shuffles
        except (ValueError, TypeError) as exc:
            if distribution.name != "multiworker":
                raise
            detail = " ".join(str(exc).split())
            detail = detail if len(detail) <= 160 else detail[:157] + "..."
            raise RunFailed(
                f"multiworker training failed inside Keras {keras.__version__} model.fit "
                f"({type(exc).__name__}: {detail}); Keras 3 with MultiWorkerMirroredStrategy is an upstream "
                f"problem ({KERAS_MULTIWORKER_ISSUE}): train with --strategy mirrored on one machine instead"
            ) from exc
    timings["fit"] = round(time.perf_counter() - tick, 3)
    if not distribution.is_chief:  # the chief evaluates, exports and writes the card
        keras.backend.clear_session()
        return None
    notes: list[str] = []
    if not (run_dir / BEST_FILE).exists():  # val_loss never finite: keep the last weights
        notes.append("val_loss was never finite; best.keras holds the last epoch")
        model.save(run_dir / BEST_FILE)
    plot_curves(log.rows, run_dir / CURVES_FILE, title=plan.name, weighted_loss=bool(options["class_weights"]))

    # Evaluate and export exactly what best.keras holds, in float32 (what ONNX scoring computes).
    keras.mixed_precision.set_global_policy("float32")
    best = float32_model(load_best_model(run_dir / BEST_FILE))
    tick = time.perf_counter()
    evaluations, eval_notes = {}, []
    for fold, fold_rows in (("val", val_rows), ("test", test_rows)):
        if fold_rows.empty:
            continue
        evaluations[fold], fold_notes = evaluate_fold(best, fold_rows, options, failures)
        eval_notes += [f"{fold}: {n}" for n in fold_notes]
    evaluated_on = "test" if "test" in evaluations else "val"
    if evaluated_on != "test":
        notes.append("no test images (MURA valid split): evaluation.json holds the validation fold")
    evaluation = {"model_name": plan.name, "split": evaluated_on, **evaluations[evaluated_on]}
    atomic_write_json(run_dir / EVALUATION_FILE, evaluation)
    timings["evaluate"] = round(time.perf_counter() - tick, 3)
    if echo:
        study = evaluation["study"]["overall"]
        echo(
            f"{evaluated_on} (study level, n={study['n']}): kappa {_fmt(study['kappa'])} "
            f"auc {_fmt(study['auc'])} accuracy {_fmt(study['accuracy'])}"
        )

    parity_source = pd.concat([test_rows, val_rows])["path"].tolist()
    from .pipeline import load_batch

    parity_images, parity_paths = load_batch(
        parity_source, image_size=options["image_size"], resize_policy=options["resize_policy"], limit=PARITY_IMAGES
    )
    if not len(parity_images):
        raise UsageError(f"{plan.name}: no readable val/test image for the ONNX parity check")
    save_parity_batch(run_dir, parity_images, parity_paths)
    metadata = onnx_metadata(
        plugin=plan.plugin,
        model_name=run_dir.name,
        body_parts=list(plan.body_parts),
        input_size=options["image_size"],
        resize_policy=options["resize_policy"],
        threshold=THRESHOLD,
        base_plugin=plan.base,
    )
    export = export_model(best, run_dir / MODEL_FILE, metadata=metadata, parity_images=parity_images)
    export["parity_paths"] = parity_paths
    timings["export"] = export["seconds"]
    if echo:
        echo(f"exported {run_dir / MODEL_FILE} (ONNX vs Keras max |diff| {export['onnx_max_abs_diff']:.2g})")

    history = log.rows
    best_epoch = checkpoint.best_epoch or (len(history) if history else 0)
    card = {
        "model_name": run_dir.name,
        "plugin": plan.plugin,
        "base_plugin": plan.base,
        "builder": plan.builder_name,
        "kind": SPECIALIST_FAMILY if plan.base else GENERALIST,
        "body_parts": list(plan.body_parts),
        "input_size": options["image_size"],
        "resize_policy": options["resize_policy"],
        "threshold": THRESHOLD,
        "onnx_max_abs_diff": export["onnx_max_abs_diff"],
        "onnx_metadata": metadata,
        "config": {
            "plugin": plan.plugin,
            "base": plan.base,
            "body_parts": list(plan.body_parts),
            "params": hyper,
            **options,
        },
        "data": {
            "source": data.source,
            "manifest_sha256": data.manifest_sha256,
            "manifest_images": data.n_manifest_rows,
            "unlabelled_images_left_out": data.n_unlabelled,
            "skipped_files": data.n_skipped,
            "split_seed": data.split_seed,
            "val_fraction": data.val_fraction,
            "folds": counts,
            "class_weights": table,
            "images_not_loaded": failures.as_dict(),
        },
        "training": {
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "best_val_loss": checkpoint.best if math.isfinite(checkpoint.best) else None,
            "stopped_early": len(history) < options["epochs"],
            "device": setup.device,
            "gpus": list(setup.gpus),
            "mixed_precision": setup.mixed_precision,
            "xla": setup.xla,
            **distribution.card(per_replica_batch_size=options["batch_size"], learning_rate=options["lr"]),
            "history": history,
        },
        "metrics": {fold: value for fold, value in evaluations.items()},
        "evaluated_on": evaluated_on,
        "export": export,
        "versions": library_versions(plan.builder),
        "timings": timings,
        "notes": notes + eval_notes,
    }
    atomic_write_json(run_dir / CARD_FILE, card)
    keras.backend.clear_session()
    return run_dir


def fit_datasets(
    train_rows: pd.DataFrame,
    train_weights,
    val_rows: pd.DataFrame,
    val_weights,
    *,
    options: Mapping[str, Any],
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
    from .pipeline import training_dataset

    cache = None
    if options.get("cache"):
        from .cache import ImageCache

        paths = list(dict.fromkeys([*train_rows["path"].astype(str), *val_rows["path"].astype(str)]))
        cache = ImageCache.open(
            options["cache"], paths, image_size=options["image_size"], resize_policy=options["resize_policy"]
        )
    common = dict(
        image_size=options["image_size"],
        resize_policy=options["resize_policy"],
        batch_size=distribution.global_batch_size(options["batch_size"]),
        failures=failures,
        deterministic=True if distribution.workers > 1 else None,
        cache=cache,
    )
    train_ds = training_dataset(
        train_rows, train_weights, shuffle=True, augment=options["augment"], seed=options["seed"], **common
    )
    val_ds = training_dataset(val_rows, val_weights, shuffle=False, augment=False, seed=options["seed"], **common)
    dataset_options = distribution.dataset_options()
    if dataset_options is not None:
        train_ds, val_ds = train_ds.with_options(dataset_options), val_ds.with_options(dataset_options)
    return train_ds, val_ds


def _run_fingerprint(plan: RunPlan, rows: pd.DataFrame, options: Mapping[str, Any], hyper: Mapping[str, Any]) -> str:
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
            "options": dict(options),
            "hyper": dict(hyper),
            "rows": table.to_csv(index=False),
        },
        sort_keys=True,
        default=str,
    )


def evaluate_fold(model, rows: pd.DataFrame, options: Mapping[str, Any], failures) -> tuple[dict, list[str]]:
    """metrics.json structure (image and study level) of ``model`` on ``rows``, and metric warnings."""
    from ..metrics import evaluate_predictions
    from .pipeline import predict_paths

    prob, ok = predict_paths(
        model,
        rows["path"].tolist(),
        image_size=options["image_size"],
        resize_policy=options["resize_policy"],
        batch_size=options["batch_size"],
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
        metrics = evaluate_predictions(frame, threshold=THRESHOLD, seed=int(options["seed"]))
    return metrics, sorted({str(w.message) for w in caught})


def library_versions(plugin: Any = None) -> dict[str, str]:
    """Versions of Python, mura-ens, the ML stack and the plugin's distribution."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "mura_ens": __version__}
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


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
