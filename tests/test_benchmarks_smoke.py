"""The benchmark scripts run (``--quick``) and print well-formed RESULT/RATIO lines.

startup.py and memory.py run for real in a subprocess (small folders, one
repeat). scoring.py and input_pipeline.py build, export and train Keras
models (TensorFlow): too slow for the suite, so they are only checked to
import, to answer ``--help``, and their reporting helpers are exercised.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
LINE = re.compile(r"^(RESULT|RATIO) (\S+) (\S+)(  # .*)?$")


def run_script(name: str, *args: str, timeout: int = 120) -> dict[str, float]:
    done = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures: dict[str, float] = {}
    for line in done.stdout.splitlines():
        if line.startswith(("RESULT", "RATIO")):
            match = LINE.match(line)
            assert match, f"malformed line: {line!r}"
            figures[f"{match[1]} {match[2]}"] = float(match[3])
        else:
            assert line.startswith("#") or not line.strip(), f"unexpected output line: {line!r}"
    return figures


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_startup_quick(tmp_path):
    figures = run_script("startup.py", "--quick", "--repeats", "1", "--work", str(tmp_path))
    assert 0 < figures["RESULT help_seconds"] < 5
    assert figures["RESULT score_one_image_seconds"] > figures["RESULT help_seconds"]
    assert figures["RESULT score_imports_tensorflow"] == 0  # DESIGN.md: scoring never imports TensorFlow
    assert figures["RESULT help_imports_numpy"] == 0
    assert figures["RATIO help_seconds_vs_goal"] == pytest.approx(figures["RESULT help_seconds"] / 0.5, rel=1e-3)


def test_memory_quick(tmp_path):
    figures = run_script(
        "memory.py", "--quick", "--small", "12", "--large", "60", "--distinct", "12", "--work", str(tmp_path)
    )
    small, large = figures["RESULT peak_rss_mb_12"], figures["RESULT peak_rss_mb_60"]
    assert 50 < small < 4000 and 50 < large < 4000
    assert figures["RATIO rss_60_vs_12"] == pytest.approx(large / small, rel=1e-3)
    assert figures["RESULT images_per_s_60"] > 0
    # the tree really holds the images, spread over studies of 1-4
    tree = tmp_path / "tree60" / "MURA-v1.1" / "valid"
    pngs = list(tree.rglob("*.png"))
    assert len(pngs) == 60
    assert {len(list(p.glob("*.png"))) for p in {q.parent for q in pngs}} <= {1, 2, 3, 4}


@pytest.mark.parametrize("name", ["scoring", "input_pipeline"])
def test_tensorflow_benchmarks_import_and_answer_help(name):
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--quick" in done.stdout
    module = load(name)
    assert callable(module.main)


def test_scoring_report_lines(capsys):
    scoring = load("scoring")
    raw = {"keras_predict": 10.0, "keras_function": 20.0, "keras": 20.0, "ort_fp32": 30.0, "ort_int8": 60.0}
    e2e = {
        "fp32": 27.0,
        "int8": 55.0,
        "fp32_process": 20.0,
        "int8_process": 40.0,
        "fp32_fixed": 3.0,
        "int8_fixed": 2.5,
        "images": 640,
    }
    ratios = scoring.report_model("densenet201", raw, e2e)
    out = capsys.readouterr().out
    assert ratios["ort_fp32_vs_keras"] == pytest.approx(1.5) and ratios["e2e_fp32_vs_raw_fp32"] == pytest.approx(0.9)
    assert ratios["e2e_int8_vs_keras"] == pytest.approx(2.75)
    assert ratios["e2e_process_int8_vs_keras"] == pytest.approx(2.0)
    assert "RATIO ort_fp32_vs_keras[densenet201] 1.5  # goal >= 1.2" in out
    assert "RATIO e2e_int8_vs_keras[densenet201] 2.75  # goal >= 2.5" in out
    for line in out.splitlines():
        assert LINE.match(line), line


def test_common_helpers(tmp_path):
    common = load("_common")
    calls = []
    values = common.alternate({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
    assert values == {"a": [1.0] * 3, "b": [2.0] * 3}
    assert calls == ["a", "b", "b", "a", "a", "b"]  # alternated, order rotating per round
    assert common.median([3.0, float("nan"), 1.0, 2.0]) == 2.0
    assert common.safe_ratio(1.0, 0.0) is None and common.safe_ratio(3.0, 2.0) == 1.5
    root = common.make_png_folder(tmp_path / "tree", 9, distinct=4, size=64)
    pngs = sorted(root.rglob("*.png"))
    assert len(pngs) == 9 and len({p.stat().st_ino for p in pngs}) == 4  # hard links into a pool of 4
    assert common.make_png_folder(tmp_path / "tree", 9, distinct=4, size=64) == root  # reused
