"""Shared helpers of the benchmark scripts: output lines, medians, A/B alternation, MURA-like PNG folders.

Every figure a script prints is ``RESULT <name> <value>``; every ratio is
``RATIO <name> <value>``; anything else (progress, notes) starts with ``#``.
Figures are medians of several repeats, and the things a ratio compares are
measured alternately in the same run (A B A B ...), so that a slow spell of a
shared machine hits both sides.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/x.py` from a fresh clone without an editable install
    sys.path.insert(0, str(REPO))

# Quiet TensorFlow for the scripts that import it (before any import of it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def note(message: str) -> None:
    """A comment line (progress, context): never parsed as a figure."""
    print(f"# {message}", flush=True)


def result(name: str, value: float | int | str | None, unit: str = "") -> None:
    """Print one figure: ``RESULT <name> <value>`` (``nan`` when it could not be measured)."""
    print(f"RESULT {name} {_fmt(value)}" + (f"  # {unit}" if unit else ""), flush=True)


def ratio(name: str, value: float | None, *, goal: str = "") -> None:
    """Print one ratio: ``RATIO <name> <value>``, with the goal it is held to as a comment."""
    print(f"RATIO {name} {_fmt(value)}" + (f"  # goal {goal}" if goal else ""), flush=True)


def _fmt(value) -> str:
    if value is None:
        return "nan"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def median(values: Sequence[float]) -> float:
    """Median of the finite values (nan when there are none)."""
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def safe_ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def alternate(measures: Mapping[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every measure once per round, ``repeats`` rounds (A B C A B C ...); the values per measure.

    The order inside a round rotates each round, so no measure always runs
    right after the same neighbour.
    """
    names = list(measures)
    values: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            values[name].append(float(measures[name]()))
    return values


def rate(run: Callable[[], None], items: int, *, min_seconds: float = 0.0) -> float:
    """Items per second of ``run`` (called repeatedly until ``min_seconds`` have passed, at least once)."""
    calls = 0
    start = time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * items / elapsed


def machine() -> str:
    """The CPU model line of ``lscpu`` (or platform's guess) and the usable CPU count."""
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 1
    return f"{model or platform.processor() or platform.machine()}, {cpus} CPUs"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def header(script: str, args: argparse.Namespace) -> None:
    """Context lines every script starts with."""
    note(f"{script} {' '.join(sys.argv[1:])}".strip())
    note(f"machine: {machine()}; python {platform.python_version()}; load average {load_average()}")


def mura_ens_command() -> list[str]:
    """How to run the ``mura-ens`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("mura-ens")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mura_ens.cli.main"]


def run_measured(command: Sequence[str], *, env: Mapping[str, str] | None = None) -> tuple[float, int, str]:
    """Run ``command``; return (wall seconds, peak RSS of that process in bytes, combined output).

    The peak RSS is the child's own ``ru_maxrss`` from ``wait4``, so runs
    made one after another in the same script do not mix.
    """
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=dict(env) if env else None)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed with exit code {child.returncode}:\n{output[-3000:]}")
    return wall, int(usage.ru_maxrss) * 1024, output


# --------------------------------------------------------------------------- MURA-like PNG folders

PARTS = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")


#: Share of real MURA PNGs stored as RGB (three equal channels) rather than 8-bit grey: 37 of 80 sampled (FACTS.md).
MURA_RGB_SHARE = 37 / 80


def render_pool(
    folder: Path, count: int, *, size: int = 512, seed: int = 0, rgb_share: float | None = None
) -> list[Path]:
    """``count`` distinct MURA-like PNGs (synthetic radiographs, longest side ``size``, ~70% gray, ~30% RGB).

    Made with :func:`mura_ens.data.synth.render_image` (bones, soft tissue,
    noise; a third of them with a fracture or hardware). Reused when present.
    ``rgb_share`` (e.g. :data:`MURA_RGB_SHARE`): store that share of them,
    spread evenly, as RGB with three equal channels and the rest as 8-bit grey.
    """
    import numpy as np
    from PIL import Image

    from mura_ens.data.synth import render_image

    folder = folder / (f"{size}px-seed{seed}" + ("" if rgb_share is None else f"-rgb{rgb_share:.3f}"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"pool{index:05d}.png"
        if not path.exists():
            rng = np.random.default_rng([seed, index])  # image k is the same whatever the pool size
            injury = ("", "", "fracture", "", "metal", "both")[index % 6]
            pixels = render_image(rng, PARTS[index % len(PARTS)], size, injury=injury)
            if rgb_share is not None:
                grey = pixels if pixels.ndim == 2 else pixels[..., 0]
                rgb = int((index + 1) * rgb_share) > int(index * rgb_share)
                pixels = np.repeat(grey[:, :, None], 3, axis=2) if rgb else grey
            Image.fromarray(pixels).save(path, format="PNG")
        paths.append(path)
    return paths


def make_png_folder(
    out: str | os.PathLike, n_images: int, *, distinct: int | None = None, size: int = 512, seed: int = 0
) -> Path:
    """A labelled MURA-layout tree of ``n_images`` PNGs; returns its ``MURA-v1.1/valid`` folder.

    ``valid/XR_<PART>/patientNNNNN/studyN_{positive,negative}/imageK.png``,
    1-4 images per study, parts and labels alternating. The pixels come from
    a pool of ``distinct`` rendered images (default: all distinct); extra
    files are hard links into the pool (copies where links are impossible),
    so a tree of thousands of files costs seconds, not minutes. Every file is
    still opened, decoded and resized by the scorer. Reused when a tree made
    with the same arguments is already there.
    """
    import json

    out = Path(out)
    root = out / "MURA-v1.1" / "valid"
    stamp = out / "MURA-v1.1" / "tree.json"
    params = {"n_images": n_images, "distinct": distinct, "size": size, "seed": seed}
    if root.exists() and stamp.exists() and json.loads(stamp.read_text()) == params:
        return root
    if root.exists():
        shutil.rmtree(root)
    pool = render_pool(out / "pool", min(n_images, distinct or n_images), size=size, seed=seed)
    written = 0
    study = 0
    while written < n_images:
        part = PARTS[study % len(PARTS)]
        label = study % 2
        n = min(1 + (study * 7) % 4, n_images - written)
        folder = root / part / f"patient{11185 + study:05d}" / f"study1_{'positive' if label else 'negative'}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, n + 1):
            target = folder / f"image{k}.png"
            source = pool[written % len(pool)]
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            written += 1
        study += 1
    stamp.write_text(json.dumps(params))
    return root


def tiny_cnn_onnx(path: str | os.PathLike, *, input_size: int = 256, seed: int = 0) -> Path:
    """A small fp32 CNN as ONNX (no TensorFlow), shaped like a tf2onnx export, with mura-ens metadata.

    (N, S, S, 3) 0-255 -> normalise -> NCHW -> two 3x3 convs (stride 2) + Relu -> global pool -> sigmoid.
    For start-up and memory benchmarks, where the model must not be the bottleneck.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    f = np.float32
    inits = {
        "scale": np.full(3, 1 / 128, f),
        "shift": np.full(3, -1.0, f),
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(f),
        "w2": rng.normal(0, 0.2, (16, 8, 3, 3)).astype(f),
        "wh": rng.normal(0, 0.3, (16, 1)).astype(f),
    }
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["a"], name="norm/mul"),
        helper.make_node("Add", ["a", "shift"], ["b"], name="norm/add"),
        helper.make_node("Transpose", ["b"], ["c"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node(
            "Conv", ["c", "w1"], ["d"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="conv1"
        ),
        helper.make_node("Relu", ["d"], ["e"], name="relu1"),
        helper.make_node(
            "Conv", ["e", "w2"], ["g"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="conv2"
        ),
        helper.make_node("Relu", ["g"], ["h"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["h"], ["i"], name="gap"),
        helper.make_node("Flatten", ["i"], ["j"], name="flatten"),
        helper.make_node("MatMul", ["j", "wh"], ["k"], name="head"),
        helper.make_node("Sigmoid", ["k"], ["prob"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", input_size, input_size, 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "plugin": "tiny_cnn",
            "model_name": "tiny_cnn",
            "body_parts": "",
            "input_size": str(input_size),
            "resize_policy": "stretch",
            "threshold": "0.5",
            "mura_ens_version": "bench",
        },
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def work_dir(args: argparse.Namespace, name: str) -> Path:
    """The script's working folder: ``--work`` or a folder under the system temp dir (kept between runs)."""
    import tempfile

    folder = Path(args.work) if getattr(args, "work", None) else Path(tempfile.gettempdir()) / f"mura-ens-bench-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and few repeats: a smoke test, not a measurement"
    )
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (median reported)")
    parser.add_argument("--work", default=None, help="working folder (default: a folder in the system temp dir)")
    return parser
