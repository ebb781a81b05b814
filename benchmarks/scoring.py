"""Scoring speed: Keras vs ONNX Runtime fp32 vs int8, raw and end to end; int8 accuracy on a trained model.

    python benchmarks/scoring.py [--quick] [--models densenet201,resnet50,custom_cnn] [--repeats N]

For each model (built by its registry plugin, ``weights=None``, 256 px, and
exported by the project's own ``mura_ens.training.export.export_model``;
int8 by ``mura_ens.onnx.quantize.quantize_model`` calibrated on images of the
benchmark folder), at batch size 16:

- ``keras_predict`` / ``keras_function``: ``model.predict`` and a compiled
  ``tf.function`` on preloaded tensors; ``keras`` is the better of the two
  (the baseline every ratio uses);
- ``ort_fp32`` / ``ort_int8``: ``session.run`` on the same tensors, with the
  session ``mura-ens score`` builds (``mura_ens.scoring.sessions``);
- ``e2e_fp32`` / ``e2e_int8``: ``mura-ens score`` processes (PNG decode +
  resize, inference, study aggregation, metrics, CSV files and report) on
  folders of MURA-like 512-px PNGs, grayscale and RGB. The figure is the
  streaming rate, ``(n_large - n_small) / (t_large - t_small)`` from a small
  and a large folder: the cost of every further image, without the fixed
  start-up (Python imports, model load; printed as ``e2e_*_fixed_s``, and
  measured on its own by ``startup.py``). ``e2e_*_process_img_s`` is the
  whole process on the large folder, start-up included.

All of these (four raw measures, four end-to-end runs: fp32/int8 x small/large
folder) are alternated in the same rounds (``--repeats``, default 3), so a
slow spell of a shared machine hits every side; each figure is the median of
its rounds.

Ratios: ``ort_fp32_vs_keras``, ``ort_int8_vs_keras``, ``e2e_fp32_vs_raw_fp32``,
``e2e_int8_vs_keras`` per model (``RATIO <ratio>[<model>] <value>``).

int8 accuracy: random weights say nothing about int8 rounding (FACTS.md), so
a ``custom_cnn`` (``--accuracy-plugin custom_cnn,densenet201`` adds a
DenseNet201, trained from scratch at 64 px for 5 epochs, ~6 min on 2 cores)
is trained on synthetic MURA (60 studies per body part) by the real ``mura-ens train``,
quantized with calibration on its training images (``quantize_run``), and
the fp32 and int8 models are compared on the synthetic test split:
``int8_study_auc_diff`` / ``int8_study_kappa_diff`` (int8 minus fp32; goals
|AUC diff| <= 0.01, |kappa diff| <= 0.02), also written to the run's card.json.
"""

from __future__ import annotations

import functools
import gc
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    alternate,
    base_parser,
    header,
    make_png_folder,
    median,
    mura_ens_command,
    note,
    rate,
    ratio,
    result,
    run_measured,
    safe_ratio,
    work_dir,
)

GOALS = {
    ("ort_fp32_vs_keras", "densenet201"): 1.2,
    ("ort_fp32_vs_keras", "resnet50"): 2.0,
    ("e2e_fp32_vs_raw_fp32", None): 0.90,
    ("e2e_int8_vs_keras", "densenet201"): 2.5,
}


def goal_of(name: str, model: str) -> float | None:
    return GOALS.get((name, model), GOALS.get((name, None)))


def load_images(paths, size: int, policy: str = "stretch"):
    import numpy as np

    from mura_ens.data.images import load_image

    return np.stack([load_image(p, size, policy) for p in paths])


def build_and_export(
    name: str, size: int, folder: Path, parity_images, calibration_images
) -> tuple[object, Path, Path]:
    """The Keras model of plugin ``name``, its ONNX export (project exporter) and its int8 model."""
    from mura_ens.onnx.quantize import quantize_model
    from mura_ens.plugin import resolve_params
    from mura_ens.registry import get_plugin
    from mura_ens.run_folder import ModelMetadata
    from mura_ens.training.export import export_model
    from mura_ens.training.tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    keras.backend.clear_session()
    plugin = get_plugin(name)
    model = plugin.build({"image_size": size, "weights": None, **resolve_params(plugin)})
    fp32 = folder / name / "model.onnx"
    metadata = ModelMetadata(plugin=name, model_name=name, body_parts=(), input_size=size, resize_policy="stretch")
    tick = time.perf_counter()
    info = export_model(model, fp32, metadata=metadata, parity_images=parity_images.astype("float32"))
    note(
        f"{name}: exported in {time.perf_counter() - tick:.1f} s, ONNX vs Keras max |diff| {info['onnx_max_abs_diff']:.2g}"
    )
    int8 = folder / name / "model.int8.onnx"
    q = quantize_model(fp32, int8, calibration_images)
    note(f"{name}: int8 in {q.seconds:.1f} s ({q.calibration_images} calibration images, rewrite {q.graph_rewrite})")
    return model, fp32, int8


def raw_measures(model, fp32: Path, int8: Path, tensors, *, min_seconds: float) -> dict:
    """Callables returning images/s of Keras (predict, tf.function), ORT fp32 and ORT int8 on one preloaded batch.

    The ORT sessions are the ones ``mura-ens score`` builds
    (:func:`mura_ens.scoring.sessions.get_session`, same options and threads).
    """
    from mura_ens.scoring.models import load_model_spec
    from mura_ens.scoring.score import default_workers
    from mura_ens.scoring.sessions import SessionConfig, default_intra_op_threads, get_session
    from mura_ens.training.tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    batch = tensors.astype("float32")
    n = len(batch)
    config = SessionConfig(
        providers=("CPUExecutionProvider",), intra_op_threads=default_intra_op_threads(default_workers())
    )
    sessions = {}
    for key, path in (("fp32", fp32), ("int8", int8)):
        spec = load_model_spec(path)
        sessions[key] = (get_session(spec, config), spec.input_name)
    compiled = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    tensor = tf.constant(batch)

    def keras_predict():
        model.predict(batch, batch_size=n, verbose=0)

    def keras_function():
        compiled(tensor).numpy()

    def ort(key):
        session, input_name = sessions[key]
        return lambda: session.run(None, {input_name: batch})

    runs = {
        "keras_predict": keras_predict,
        "keras_function": keras_function,
        "ort_fp32": ort("fp32"),
        "ort_int8": ort("int8"),
    }
    for run in runs.values():  # warm-up: tracing, arenas, first-call allocations
        run()
    return {key: (lambda r=run: rate(r, n, min_seconds=min_seconds)) for key, run in runs.items()}


def e2e_measures(name: str, fp32: Path, int8: Path, folders: dict[int, Path], work: Path, *, batch_size: int) -> dict:
    """Callables running one ``mura-ens score`` process each (fp32/int8 x small/large folder), returning seconds."""
    cli = mura_ens_command()
    small, large = sorted(folders)

    def command(path: Path, key: str, n: int) -> list[str]:
        out = work / "e2e-out" / f"{name}-{key}-{n}"
        return [
            *cli,
            "score",
            str(folders[n]),
            "--model",
            str(path),
            "--out",
            str(out),
            "--batch-size",
            str(batch_size),
            "--no-progress",
        ]

    note(f"{name}: e2e command: {' '.join(command(fp32, 'fp32', large))}")
    return {
        f"e2e_{key}_{n}": functools.partial(_first_measure, command(path, key, n))
        for key, path in (("fp32", fp32), ("int8", int8))
        for n in (small, large)
    }


def _first_measure(cmd: list[str]):
    return run_measured(cmd)[0]


def measure_model(
    name: str,
    model,
    fp32: Path,
    int8: Path,
    tensors,
    folders: dict[int, Path] | None,
    work: Path,
    *,
    repeats: int,
    min_seconds: float,
    batch_size: int,
) -> tuple[dict, dict | None]:
    """Raw and end-to-end figures of one model, every measure alternated with every other in the same rounds.

    End to end, each round scores a small and a large folder with each
    model. The streaming rate is ``(n_large - n_small) / (t_large - t_small)``:
    what every further image costs (decode, resize, inference, its share of
    aggregation, metrics, CSV and report) without the fixed start-up
    (imports, model load), reported as ``fixed``; ``process`` is
    ``n_large / t_large``, the whole process on the large folder.
    """
    measures = raw_measures(model, fp32, int8, tensors, min_seconds=min_seconds)
    if folders:
        measures.update(e2e_measures(name, fp32, int8, folders, work, batch_size=batch_size))
    values = alternate(measures, repeats)
    raw_keys = ("keras_predict", "keras_function", "ort_fp32", "ort_int8")
    raw = {key: median(values[key]) for key in raw_keys}
    raw["keras"] = max(raw["keras_predict"], raw["keras_function"])
    note(f"{name}: raw images/s per round " + "; ".join(f"{k} {[round(x, 1) for x in values[k]]}" for k in raw_keys))
    from mura_ens.scoring.sessions import clear_sessions

    clear_sessions()
    if not folders:
        return raw, None
    small, large = sorted(folders)
    e2e: dict = {"images": large}
    for key in ("fp32", "int8"):
        pairs = list(zip(values[f"e2e_{key}_{small}"], values[f"e2e_{key}_{large}"]))
        streaming = [
            (large - small) / (t_large - t_small) if t_large > t_small else float("nan") for t_small, t_large in pairs
        ]
        e2e[key] = median(streaming)
        e2e[f"{key}_process"] = median([large / t_large for _, t_large in pairs])
        e2e[f"{key}_fixed"] = median([t_large - large / r for (_, t_large), r in zip(pairs, streaming)])
        note(
            f"{name}: e2e {key} seconds per round: {small} images {[round(t, 1) for t, _ in pairs]}, "
            f"{large} images {[round(t, 1) for _, t in pairs]}"
        )
    return raw, e2e


def report_model(name: str, raw: dict, e2e: dict | None) -> dict:
    for key in ("keras_predict", "keras_function", "keras", "ort_fp32", "ort_int8"):
        result(f"{key}_img_s[{name}]", raw[key], "images/s")
    ratios = {
        "ort_fp32_vs_keras": safe_ratio(raw["ort_fp32"], raw["keras"]),
        "ort_int8_vs_keras": safe_ratio(raw["ort_int8"], raw["keras"]),
    }
    if e2e:
        for key in ("fp32", "int8"):
            result(f"e2e_{key}_img_s[{name}]", e2e[key], "images/s, mura-ens score streaming rate")
            result(
                f"e2e_{key}_process_img_s[{name}]",
                e2e[f"{key}_process"],
                f"images/s, whole mura-ens score process on {e2e['images']} images",
            )
            result(f"e2e_{key}_fixed_s[{name}]", e2e[f"{key}_fixed"], "s, start-up + model load, once per process")
        ratios["e2e_fp32_vs_raw_fp32"] = safe_ratio(e2e["fp32"], raw["ort_fp32"])
        ratios["e2e_int8_vs_raw_int8"] = safe_ratio(e2e["int8"], raw["ort_int8"])
        ratios["e2e_int8_vs_keras"] = safe_ratio(e2e["int8"], raw["keras"])
        ratios["e2e_process_int8_vs_keras"] = safe_ratio(e2e["int8_process"], raw["keras"])
    for key, value in ratios.items():
        goal = goal_of(key, name)
        ratio(f"{key}[{name}]", value, goal=f">= {goal}" if goal else "")
    return ratios


# --------------------------------------------------------------------------- int8 accuracy


#: How each plugin is trained for the int8 accuracy check (64 px, from scratch): --param list, epochs.
TRAINING = {
    "custom_cnn": (["--param", "cells=4", "--param", "starting_filters=16"], 12),
    "densenet201": (["--param", "trainable_after=0"], 5),
    "resnet50": (["--param", "trainable_after=0"], 5),
}


def train_and_quantize(work: Path, *, quick: bool, plugin: str) -> dict:
    """Train ``plugin`` on synthetic MURA with ``mura-ens train``, quantize the run, return its card's int8 agreement."""
    from mura_ens.data.synth import make_synthetic_mura

    data = work / "synth"
    studies = 6 if quick else 60
    root = data / "MURA-v1.1"
    stamp = data / "made.json"
    wanted = {"studies_per_part": studies, "size": 64, "seed": 0}
    if not stamp.exists() or json.loads(stamp.read_text()) != wanted:
        make_synthetic_mura(data, studies_per_part=studies, size=64, seed=0, overwrite=True)
        stamp.write_text(json.dumps(wanted))
    runs = work / "runs" / plugin
    shutil.rmtree(runs, ignore_errors=True)
    params, epochs = TRAINING.get(plugin, ([], 5))
    command = [
        *mura_ens_command(),
        "train",
        "--plugin",
        plugin,
        "--data",
        str(root),
        "--out",
        str(runs),
        "--epochs",
        "1" if quick else str(epochs),
        "--patience",
        "15",
        "--image-size",
        "64",
        "--batch-size",
        "16",
        "--weights",
        "none",
        "--seed",
        "0",
        *params,
    ]
    note(f"int8 accuracy: {' '.join(command)}")
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mura-ens train failed:\n{done.stderr[-3000:]}")
    run_dir = next(p.parent for p in sorted(runs.rglob("card.json")))
    note(f"int8 accuracy: trained {run_dir.name} in {time.perf_counter() - tick:.0f} s")
    from mura_ens.onnx.quantize import quantize_run

    quantize_run(run_dir, calibration_images=200, seed=0)
    card = json.loads((run_dir / "card.json").read_text())
    agreement = card["int8"]["agreement"]
    agreement["run_dir"] = str(run_dir)
    return agreement


def report_accuracy(plugin: str, agreement: dict) -> None:
    study = agreement["study"]
    result(f"int8_eval_studies[{plugin}]", agreement["n_studies"], f"{agreement['fold']} split of synthetic MURA")
    for precision in ("fp32", "int8"):
        result(f"study_auc_{precision}[{plugin}]", study[precision]["auc"])
        result(f"study_kappa_{precision}[{plugin}]", study[precision]["kappa"])
    result(f"int8_study_auc_diff[{plugin}]", agreement["study_auc_diff"], "goal |diff| <= 0.01")
    result(f"int8_study_kappa_diff[{plugin}]", agreement["study_kappa_diff"], "goal |diff| <= 0.02")
    result(f"int8_image_max_abs_prob_diff[{plugin}]", agreement["image_max_abs_prob_diff"])
    result(f"int8_image_mean_abs_prob_diff[{plugin}]", agreement["image_mean_abs_prob_diff"])
    result(f"int8_study_prediction_agreement[{plugin}]", agreement["study_prediction_agreement"])
    note(f"int8 agreement recorded in {agreement['run_dir']}/card.json")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default=None,
        help="comma list of plugins (default densenet201,resnet50,custom_cnn); none: only the accuracy check",
    )
    parser.add_argument("--image-size", type=int, default=None, help="model input side (default 256)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--e2e-images", type=int, default=None, help="PNGs scored end to end (default 640)")
    parser.add_argument("--min-seconds", type=float, default=None, help="minimum time per raw measurement (default 2)")
    parser.add_argument(
        "--accuracy-plugin",
        default="custom_cnn",
        help="comma list of plugins trained (64 px) for the int8 accuracy check; densenet201 adds ~6 min",
    )
    parser.add_argument("--skip-accuracy", action="store_true", help="no training / int8 accuracy check")
    parser.add_argument("--skip-e2e", action="store_true", help="no end-to-end runs")
    args = parser.parse_args(argv)
    quick = args.quick
    models = (args.models or ("custom_cnn" if quick else "densenet201,resnet50,custom_cnn")).split(",")
    models = [] if models == ["none"] else models
    size = args.image_size or (64 if quick else 256)
    repeats = args.repeats or (1 if quick else 3)
    e2e_images = args.e2e_images or (64 if quick else 640)
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.0 if quick else 2.0)
    header("scoring.py", args)
    work = work_dir(args, "scoring")
    small_images = max(args.batch_size, e2e_images // 8)
    folders = {n: make_png_folder(work / f"pngs{n}", n, distinct=min(n, 320)) for n in (small_images, e2e_images)}
    folder = folders[e2e_images]
    pngs = sorted(folder.rglob("*.png"))
    note(f"{len(pngs)} PNGs (512 px) in {folder}; models at {size} px, batch {args.batch_size}")
    tensors = load_images(pngs[: args.batch_size], size)
    calibration = load_images(pngs[: 8 if quick else 64], size)

    from mura_ens.training.tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    models_dir = work / "models"
    for name in models:
        model, fp32, int8 = build_and_export(name, size, models_dir, tensors[:4], calibration)
        raw, e2e = measure_model(
            name,
            model,
            fp32,
            int8,
            tensors,
            None if args.skip_e2e else folders,
            work,
            repeats=repeats,
            min_seconds=min_seconds,
            batch_size=args.batch_size,
        )
        del model
        keras.backend.clear_session()
        gc.collect()
        report_model(name, raw, e2e)
    if not args.skip_accuracy:
        for plugin in args.accuracy_plugin.split(","):
            report_accuracy(plugin, train_and_quantize(work, quick=quick, plugin=plugin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
