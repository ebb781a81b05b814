"""GPU figures for a lent machine: DenseNet201 training steps (mixed precision + XLA vs fp32), ONNX Runtime CUDA vs CPU.

    python benchmarks/gpu.py [--quick] [--repeats N] [--work DIR] [--batch-size 32] [--steps 50] [--warmup 5]
                             [--image-size 224] [--model densenet201] [--param KEY=VALUE ...] [--onnx PATH]
                             [--budget-s 420] [--cpu-smoke]

What it needs (it checks and says which are missing; every part that cannot run is skipped with a note):

- an NVIDIA GPU (``nvidia-smi`` or ``/dev/nvidia0``); without one it prints ``# no GPU ...`` and exits 0;
- training steps: ``tensorflow`` with CUDA (``pip install 'tensorflow[and-cuda]'``; Keras 3 comes with it)
  that lists a GPU device (``tf.config.list_physical_devices("GPU")``), and numpy;
- scoring: ``onnxruntime-gpu`` (``CUDAExecutionProvider`` in ``onnxruntime.get_available_providers()``),
  and a model: exported here (``tf2onnx`` + ``onnx``, the project's ``mura_ens.training.export.export_model``,
  run on the CPU device so that the parity check compares fp32 with fp32) or given with ``--onnx PATH``;
- this repository (the script puts it on ``sys.path``); the built-in plugins need not be installed
  (``plugins/<name>/`` is imported directly when the entry point is missing).

Figures (synthetic tensors, ``weights=None``, 224 px, batch 32 by default; the plugin's own defaults,
i.e. for DenseNet201 the layers after 606 trainable, as ``mura-ens train --plugin densenet201`` would):

- ``train_step_img_s[fp32]`` / ``train_step_img_s[mixed_xla]``: images/s of training steps (``fit`` on a
  repeated synthetic batch; Adam, binary cross-entropy, compiled as the trainer compiles) after ``--warmup``
  steps (tracing, XLA compilation), ``--steps`` timed steps per repeat; fp32 = ``float32`` policy without
  XLA, mixed_xla = ``mixed_float16`` policy and ``jit_compile=True``; ``train_mixed_xla_vs_fp32`` their ratio;
- ``ort_cuda_fp32_img_s`` / ``ort_cpu_fp32_img_s``: images/s of the fp32 ONNX model in the sessions
  ``mura-ens score`` builds (``mura_ens.scoring.sessions.get_session``) with ``--providers cuda`` and
  with the CPU path (all CPUs); ``ort_cuda_vs_cpu_fp32`` their ratio.

Scoring runs first, training last (its XLA compilation is the part of unknown length). The two sides
of each ratio are measured alternately in the same run. ``--budget-s`` (default 420 s) stops starting
new parts (export, scoring, each training model) once spent, so the whole script stays under 8 minutes.
``--cpu-smoke``: tiny sizes (``custom_cnn`` with 2 cells at 32 px, batch 4, 2 steps) and every part
forced on whatever device there is: proves the argument parsing, the model build, the training-step
loop, the export and the ORT CPU path on a machine without a GPU (``tests/test_benchmarks_smoke.py``);
not a measurement.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, alternate, base_parser, header, median, note, rate, ratio, result, safe_ratio, work_dir

NEEDS = {
    "tensorflow": "training steps and export (pip install 'tensorflow[and-cuda]')",
    "numpy": "everything",
    "tf2onnx": "export (unless --onnx PATH)",
    "onnx": "export (unless --onnx PATH)",
    "onnxruntime": "scoring (onnxruntime-gpu for CUDAExecutionProvider)",
}


@dataclass
class Plan:
    """What the run does: sizes, the model, and which parts it may run."""

    model: str
    params: dict[str, str]
    image_size: int
    batch_size: int
    steps: int
    warmup: int
    repeats: int
    budget_s: float
    onnx: Path | None
    smoke: bool
    started: float = field(default_factory=time.perf_counter)

    def over_budget(self, part: str) -> bool:
        spent = time.perf_counter() - self.started
        if spent > self.budget_s:
            note(f"{part}: skipped, {spent:.0f} s spent of the {self.budget_s:.0f} s budget")
            return True
        return False


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Plan]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=None, help="images per step and per ORT run (default 32)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per repeat (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first: tracing, XLA (default 5)")
    parser.add_argument("--image-size", type=int, default=None, help="input size in px (default 224)")
    parser.add_argument("--model", default=None, help="registry plugin to build (default densenet201)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="plugin hyper-parameter")
    parser.add_argument("--onnx", default=None, help="score this fp32 ONNX model instead of exporting one")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new part after this many seconds")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes, every part forced on the CPU: a smoke test"
    )
    args = parser.parse_args(argv)
    smoke, quick = args.cpu_smoke, args.quick or args.cpu_smoke
    params = dict(item.split("=", 1) for item in args.param if "=" in item)
    if smoke and args.model is None:
        params = {"cells": "2", "starting_filters": "4", **params}
    plan = Plan(
        model=args.model or ("custom_cnn" if smoke else "densenet201"),
        params=params,
        image_size=args.image_size or (32 if smoke else 224),
        batch_size=args.batch_size or (4 if smoke else 32),
        steps=args.steps or (2 if quick else 50),
        warmup=args.warmup or (1 if quick else 5),
        repeats=args.repeats or (1 if quick else 3),
        budget_s=args.budget_s,
        onnx=Path(args.onnx) if args.onnx else None,
        smoke=smoke,
    )
    bad = [item for item in args.param if "=" not in item]
    if bad:
        parser.error(f"--param takes KEY=VALUE, got {bad[0]!r}")
    return args, plan


def missing_packages() -> list[str]:
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def nvidia_gpus() -> list[str]:
    """GPU names from ``nvidia-smi`` ("" entries when only the device file shows one).

    None when ``CUDA_VISIBLE_DEVICES`` hides them all (``""`` or ``-1``, as CUDA, TensorFlow and onnxruntime read it).
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            names = [line.strip() for line in out.splitlines() if line.strip()]
            if names:
                return names
        except (OSError, subprocess.SubprocessError):
            pass
    return [""] if os.path.exists("/dev/nvidia0") else []


def main(argv: list[str] | None = None) -> int:
    args, plan = parse(argv)
    header("gpu.py", args)
    missing = missing_packages()
    note("needs: " + "; ".join(f"{name} ({why})" for name, why in NEEDS.items()))
    note("missing: " + (", ".join(missing) if missing else "nothing"))
    gpus = nvidia_gpus()
    if gpus:
        note("GPU: " + "; ".join(name or "an NVIDIA device (/dev/nvidia0; no nvidia-smi)" for name in gpus))
    else:
        where = "neither nvidia-smi nor /dev/nvidia0, or CUDA_VISIBLE_DEVICES hides them"
        note(f"no GPU: {where}" + (" (--cpu-smoke: running on the CPU)" if plan.smoke else ""))
        if not plan.smoke:
            return 0
    work = work_dir(args, "gpu")
    has_tf = "tensorflow" not in missing and "numpy" not in missing
    tf_gpu = has_tf and tensorflow_gpu_ready(plan)
    # Scoring first: its export and sessions take a known minute or two; the XLA compilation of a training step
    # is the part whose length is unknown, so it goes last (figures already printed survive a time-out).
    exportable = has_tf and can_export(missing) and not plan.over_budget("export")
    model_path = plan.onnx or (export_fp32(plan, work) if exportable else None)
    if model_path is None:
        note("scoring: skipped, no model (needs tensorflow + tf2onnx + onnx to export one, or --onnx PATH)")
    elif "onnxruntime" in missing:
        note("scoring: skipped, onnxruntime is not installed (pip install onnxruntime-gpu)")
    elif not plan.over_budget("scoring"):
        report_scoring(scoring_measures(plan, model_path), plan)
    if not has_tf:
        note("training steps: skipped, tensorflow is not installed (pip install 'tensorflow[and-cuda]')")
    elif tf_gpu and not plan.over_budget("training steps"):
        report_training(training_measures(plan), plan)
    note(f"done in {time.perf_counter() - plan.started:.0f} s")
    return 0


def tensorflow_gpu_ready(plan: Plan) -> bool:
    """Import TensorFlow quietly; True when it lists a GPU (or in --cpu-smoke), with memory growth on."""
    from mura_ens.training.tf_runtime import import_tensorflow

    tf, keras = import_tensorflow()
    devices = tf.config.list_physical_devices("GPU")
    note(f"TensorFlow {tf.__version__}, Keras {keras.__version__}: GPU devices {[d.name for d in devices]}")
    for device in devices:
        tf.config.experimental.set_memory_growth(device, True)
    if not devices:
        why = "a CPU-only build? pip install 'tensorflow[and-cuda]'"
        note(f"no GPU: TensorFlow sees no GPU device ({why})" + ("; --cpu-smoke: on the CPU" if plan.smoke else ""))
    return bool(devices) or plan.smoke


def can_export(missing: list[str]) -> bool:
    return "tf2onnx" not in missing and "onnx" not in missing


def load_plugin(name: str) -> Any:
    """The registry's plugin ``name``; a built-in one straight from ``plugins/<name>/`` when it is not installed."""
    from mura_ens.errors import PluginError
    from mura_ens.registry import get_plugin

    try:
        return get_plugin(name)
    except PluginError:
        folder = REPO / "plugins" / name
        if not folder.is_dir():
            raise
        note(f"plugin {name} is not installed: importing it from {folder}")
        sys.path.insert(0, str(folder))
        return importlib.import_module(f"mura_ens_{name}").plugin


def build_model(plan: Plan, *, mixed: bool, xla: bool | None) -> Any:
    """The plugin's Keras model under the ``mixed_float16`` or ``float32`` policy; compiled as the trainer does
    unless ``xla`` is None (an export-only model)."""
    from mura_ens.plugin import resolve_params
    from mura_ens.training.tf_runtime import import_tensorflow

    _, keras = import_tensorflow()
    plugin = load_plugin(plan.model)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        config = {"image_size": plan.image_size, "weights": None, **resolve_params(plugin, plan.params)}
        model = plugin.build(config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if xla is not None:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=1e-4),
            loss=keras.losses.BinaryCrossentropy(),
            jit_compile=xla,
        )
    return model


def synthetic_batch(plan: Plan, seed: int = 0) -> tuple[Any, Any]:
    """Uniform 0-255 float32 images (batch, S, S, 3) and random 0/1 labels (batch, 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (plan.batch_size, plan.image_size, plan.image_size, 3)).astype(np.float32)
    labels = rng.integers(0, 2, (plan.batch_size, 1)).astype(np.float32)
    return images, labels


def training_measures(plan: Plan) -> dict[str, Callable[[], float]]:
    """``fp32`` / ``mixed_xla``: callables timing one ``fit`` of ``plan.steps`` steps each (images/s), warmed up here.

    ``fit`` over a repeated synthetic batch, as the trainer feeds its model: steps are queued without waiting for
    each loss (``train_on_batch`` would wait, leaving the GPU idle between steps).
    """
    from mura_ens.training.tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    images, labels = synthetic_batch(plan)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    measures = {}
    for key, mixed, xla in (("fp32", False, False), ("mixed_xla", True, True)):
        if plan.over_budget(f"training steps {key}"):
            break
        tick = time.perf_counter()
        model = build_model(plan, mixed=mixed, xla=xla)
        model.fit(data, steps_per_epoch=plan.warmup, epochs=1, verbose=0, shuffle=False)
        note(f"{key}: built, compiled and {plan.warmup} warm-up steps in {time.perf_counter() - tick:.1f} s")

        def steps(model: Any = model) -> None:
            model.fit(data, steps_per_epoch=plan.steps, epochs=1, verbose=0, shuffle=False)

        measures[key] = lambda steps=steps: rate(steps, plan.steps * plan.batch_size)
    return measures


def measured_rates(
    measures: dict[str, Callable[[], float]], plan: Plan, what: str
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each side's images/s per repeat (sides alternated, printed as a note) and their medians."""
    values = alternate(measures, plan.repeats)
    note(f"{what} images/s per repeat " + "; ".join(f"{k} {[round(v, 1) for v in vs]}" for k, vs in values.items()))
    return values, {key: median(v) for key, v in values.items()}


def report_training(measures: dict[str, Callable[[], float]], plan: Plan) -> None:
    values, rates = measured_rates(measures, plan, "train")
    size = f"{plan.model}, {plan.image_size} px, batch {plan.batch_size}"
    labels = {"fp32": "float32, no XLA", "mixed_xla": "mixed_float16 + XLA"}
    for key, rate_ in rates.items():
        result(f"train_step_img_s[{key}]", rate_, f"images/s, {size}, {labels[key]}")
    if len(rates) == 2:
        ratio("train_mixed_xla_vs_fp32", median([a / b for a, b in zip(values["mixed_xla"], values["fp32"])]))


def export_fp32(plan: Plan, work: Path) -> Path:
    """The fp32 model exported by the project's exporter (parity checked on the CPU device: fp32 against fp32)."""
    from mura_ens.run_folder import ModelMetadata
    from mura_ens.training.export import export_model
    from mura_ens.training.tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    path = work / f"{plan.model}-{plan.image_size}.onnx"
    tick = time.perf_counter()
    with tf.device("/CPU:0"):  # TF32 on a GPU would fail a 1e-4 parity check against ORT's fp32
        model = build_model(plan, mixed=False, xla=None)
        images, _ = synthetic_batch(plan, seed=1)
        metadata = ModelMetadata(plugin=plan.model, model_name=plan.model, body_parts=(), input_size=plan.image_size)
        info = export_model(model, path, metadata=metadata, parity_images=images[:2])
    note(
        f"exported {path.name} in {time.perf_counter() - tick:.1f} s "
        f"({info['bytes'] / 2**20:.1f} MiB, ONNX vs Keras max |diff| {info['onnx_max_abs_diff']:.2g})"
    )
    return path


def scoring_measures(plan: Plan, path: Path) -> dict[str, Callable[[], float]]:
    """``cpu`` (and ``cuda`` where onnxruntime has it): images/s of one batch in the sessions scoring builds."""
    from mura_ens.scoring.models import load_model_spec
    from mura_ens.scoring.score import default_workers
    from mura_ens.scoring.sessions import SessionConfig, available_providers, default_intra_op_threads, get_session

    spec = load_model_spec(path)
    images, _ = synthetic_batch(plan, seed=2)
    configs = {
        "cpu": SessionConfig(
            providers=("CPUExecutionProvider",), intra_op_threads=default_intra_op_threads(default_workers())
        )
    }
    providers = available_providers()
    note(f"onnxruntime providers: {', '.join(providers)}")
    if "CUDAExecutionProvider" in providers and nvidia_gpus():
        configs["cuda"] = SessionConfig(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    else:
        why = "no GPU" if not nvidia_gpus() else "CUDAExecutionProvider missing (pip install onnxruntime-gpu)"
        note(f"no GPU for onnxruntime: {why}; CPU path only")
    measures = {}
    for key, config in configs.items():
        session = get_session(spec, config)
        feed = {spec.input_name: images}
        for _ in range(3):  # warm-up: arenas, cuDNN algorithm search
            session.run(None, feed)

        def run(session: Any = session, feed: dict = feed) -> None:
            session.run(None, feed)

        measures[key] = lambda run=run: rate(run, len(images), min_seconds=0.2 if plan.smoke else 3.0)
    return measures


def report_scoring(measures: dict[str, Callable[[], float]], plan: Plan) -> None:
    values, rates = measured_rates(measures, plan, "ORT")
    size = f"{plan.model} fp32, {plan.image_size} px, batch {plan.batch_size}"
    if "cuda" in rates:
        result("ort_cuda_fp32_img_s", rates["cuda"], f"images/s, {size}, CUDAExecutionProvider")
    result("ort_cpu_fp32_img_s", rates["cpu"], f"images/s, {size}, the CPU path of mura-ens score")
    if "cuda" in rates:
        ratio("ort_cuda_vs_cpu_fp32", safe_ratio(rates["cuda"], rates["cpu"]))


if __name__ == "__main__":
    sys.exit(main())
