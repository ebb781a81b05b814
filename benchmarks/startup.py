"""Start-up: wall time of ``mura-ens --help`` and of scoring one image; scoring must never import TensorFlow.

    python benchmarks/startup.py [--quick] [--repeats N]

Figures (medians of ``--repeats`` fresh processes, the two commands alternated):

- ``help_seconds``: ``mura-ens --help`` (goal < 0.5 s);
- ``score_one_image_seconds``: ``mura-ens score`` of a one-image MURA folder
  with a small ONNX CNN (imports, model load, decode, inference, the four
  output files);
- ``score_one_study_s``: ``mura-ens score`` of one study (3 images, as a PACS
  hook would send it) with that one model (goal < 1.5 s), and
  ``score_one_study_8models_s`` with a generalist + 7 specialists of it in a
  ``--models`` folder (goal < 3 s);
- ``error_bad_path_s`` / ``error_no_images_s``: ``mura-ens score`` of a path that
  does not exist / of a folder without images, which fail before any model is
  needed (goal < 0.5 s each);
- ``score_imports_tensorflow`` / ``help_imports_numpy``: 1 when that process
  imported the module (from ``python -X importtime``), else 0. Scoring must
  give 0 (DESIGN.md: scoring never imports TensorFlow).
"""

from __future__ import annotations

import os
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
    ratio,
    result,
    run_measured,
    tiny_cnn_onnx,
    work_dir,
)

HELP_GOAL_S = 0.5
STUDY_GOAL_S = 1.5
STUDY_8_GOAL_S = 3.0
ERROR_GOAL_S = 0.5
PARTS = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")
TF_MODULES = ("tensorflow", "keras", "tf2onnx")


def imported_modules(command: list[str]) -> set[str]:
    """Top-level names of the modules ``command`` (a Python console script) imports, via ``-X importtime``."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    _, _, output = run_measured(command, env=env)
    names = set()
    for line in output.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 7)
    header("startup.py", args)
    work = work_dir(args, "startup")
    folder = make_png_folder(work / "one", 1)
    model = tiny_cnn_onnx(work / "models" / "tiny_cnn" / "model.onnx")
    cli = mura_ens_command()
    help_cmd = [*cli, "--help"]
    score_cmd = [*cli, "score", str(folder), "--model", str(model), "--out", str(work / "out"), "--no-progress"]
    note(f"commands: {' '.join(help_cmd)} | {' '.join(score_cmd)}")

    study = one_study(work / "study", folder)
    eight = eight_models(work / "models8", model)
    empty = work / "empty"
    empty.mkdir(exist_ok=True)

    def score_of(source: Path, *models: str) -> list[str]:
        return [*cli, "score", str(source), *models, "--out", str(work / "out"), "--no-progress"]

    def fails(command: list[str]):
        def run() -> float:
            tick = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - tick
            if done.returncode != 2:
                raise RuntimeError(f"expected exit code 2 from {' '.join(command)}: {done.stderr[-500:]}")
            return wall

        return run

    cpu: dict[str, list[float]] = {"study": [], "study8": []}

    def timed(name: str, command: list[str]):
        def run() -> float:
            wall, cpu_s = wall_and_cpu(command)
            cpu[name].append(cpu_s)
            return wall

        return run

    measures = {
        "help": lambda: run_measured(help_cmd)[0],
        "score": lambda: run_measured(score_cmd)[0],
        "study": timed("study", score_of(study, "--model", str(model))),
        "study8": timed("study8", score_of(study, "--models", str(eight))),
        "bad_path": fails(score_of(work / "no-such-folder", "--model", str(model))),
        "no_images": fails(score_of(empty, "--model", str(model))),
    }
    for name, measure in measures.items():  # warm the file cache: the figure is start-up, not a cold disk
        if not args.quick or name in ("help", "score"):
            measure()
    times = alternate(measures, repeats)
    help_s, score_s = median(times["help"]), median(times["score"])
    result("help_seconds", help_s, "s")
    result("score_one_image_seconds", score_s, "s")
    figures = {
        "score_one_study_s": (median(times["study"]), STUDY_GOAL_S, "one study of 3 images, one model"),
        "score_one_study_8models_s": (median(times["study8"]), STUDY_8_GOAL_S, "the same, 8 models in --models"),
        "error_bad_path_s": (median(times["bad_path"]), ERROR_GOAL_S, "input not found"),
        "error_no_images_s": (median(times["no_images"]), ERROR_GOAL_S, "no images found"),
    }
    for name in cpu:
        cpu[name] = cpu[name][-repeats:]  # not the warm-up run
    # CPU seconds (user + sys of the process) do not stretch when other jobs share the cores, as wall
    # seconds do; they overstate a quiet machine's wall time by onnxruntime's spinning threads.
    result("score_one_study_cpu_s", median(cpu["study"]), "s of CPU, user + sys")
    result("score_one_study_8models_cpu_s", median(cpu["study8"]), "s of CPU, user + sys")
    for name, (value, goal, what) in figures.items():
        result(name, value, f"s, {what} (goal < {goal} s)")
        key = {"score_one_study_s": "study", "score_one_study_8models_s": "study8"}.get(name, name[6:-2])
        note(f"{name}: {'held' if value < goal else 'not held'}; rounds {', '.join(f'{v:.2f}' for v in times[key])}")

    score_modules = imported_modules(score_cmd)
    help_modules = imported_modules(help_cmd)
    tf_in_score = sorted(m for m in TF_MODULES if m in score_modules)
    result("score_imports_tensorflow", int(bool(tf_in_score)))
    result("help_imports_numpy", int("numpy" in help_modules))
    result("help_imports_onnxruntime", int("onnxruntime" in help_modules))
    if tf_in_score:
        note(f"scoring imported {', '.join(tf_in_score)}")
    ratio("help_seconds_vs_goal", help_s / HELP_GOAL_S, goal="<= 1 (help under 0.5 s)")
    ok = help_s < HELP_GOAL_S and not tf_in_score
    note("goals held" if ok else "a goal did not hold")
    return 0


def wall_and_cpu(command: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys, from ``wait4``) of one run of ``command`` (exit code 0)."""
    tick = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - tick
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    return wall, usage.ru_utime + usage.ru_stime


def one_study(out: Path, one_image_tree: Path) -> Path:
    """A MURA-layout folder holding one study of three 512-px PNGs (copies of the one-image tree's PNG)."""
    source = next(one_image_tree.rglob("*.png"))
    folder = out / "MURA-v1.1" / "valid" / "XR_WRIST" / "patient11185" / "study1_positive"
    folder.mkdir(parents=True, exist_ok=True)
    for k in (1, 2, 3):
        if not (folder / f"image{k}.png").exists():
            shutil.copyfile(source, folder / f"image{k}.png")
    return out / "MURA-v1.1" / "valid"


def eight_models(folder: Path, model: Path) -> Path:
    """A ``--models`` folder with ``model`` as a generalist and as seven specialists (one per part)."""
    import onnx

    from mura_ens.run_folder import ModelMetadata, write_onnx_props

    folder.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(str(model))
    for name, part in [("generalist", ""), *((p.lower(), p) for p in PARTS)]:
        if not (folder / f"{name}.onnx").exists():
            metadata = ModelMetadata(
                plugin="tiny_cnn", model_name=name, body_parts=(part,) if part else (), input_size=256
            )
            write_onnx_props(proto, metadata)
            onnx.save(proto, str(folder / f"{name}.onnx"))
    return folder


if __name__ == "__main__":
    sys.exit(main())
