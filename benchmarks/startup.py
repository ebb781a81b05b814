"""Start-up: wall time of ``mura-ens --help`` and of scoring one image; scoring must never import TensorFlow.

    python benchmarks/startup.py [--quick] [--repeats N]

Figures (medians of ``--repeats`` fresh processes, the two commands alternated):

- ``help_seconds``: ``mura-ens --help`` (goal < 0.5 s);
- ``score_one_image_seconds``: ``mura-ens score`` of a one-image MURA folder
  with a small ONNX CNN (imports, model load, decode, inference, the four
  output files);
- ``score_imports_tensorflow`` / ``help_imports_numpy``: 1 when that process
  imported the module (from ``python -X importtime``), else 0. Scoring must
  give 0 (DESIGN.md: scoring never imports TensorFlow).
"""

from __future__ import annotations

import os
import sys
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

    run_measured(help_cmd)  # warm the file cache: the figure is start-up, not a cold disk
    run_measured(score_cmd)
    times = alternate({"help": lambda: run_measured(help_cmd)[0], "score": lambda: run_measured(score_cmd)[0]}, repeats)
    help_s, score_s = median(times["help"]), median(times["score"])
    result("help_seconds", help_s, "s")
    result("score_one_image_seconds", score_s, "s")

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


if __name__ == "__main__":
    sys.exit(main())
