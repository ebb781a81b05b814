"""The benchmark scripts run (``--quick``) and print well-formed RESULT/RATIO lines.

startup.py and memory.py run for real in a subprocess (small folders, one
repeat). scoring.py and input_pipeline.py build, export and train Keras
models (TensorFlow): too slow for the suite, so they are only checked to
import, to answer ``--help``, and their reporting helpers are exercised.
"""

from __future__ import annotations

import importlib.util
import os
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
    sys.modules[spec.name] = module  # the importlib recipe: dataclasses look their module up while executing it
    spec.loader.exec_module(module)
    return module


def test_startup_quick(tmp_path):
    figures = run_script("startup.py", "--quick", "--repeats", "1", "--work", str(tmp_path), timeout=300)
    assert 0 < figures["RESULT help_seconds"] < 5
    assert figures["RESULT score_one_image_seconds"] > figures["RESULT help_seconds"]
    assert figures["RESULT score_imports_tensorflow"] == 0  # DESIGN.md: scoring never imports TensorFlow
    assert figures["RESULT help_imports_numpy"] == 0
    assert figures["RATIO help_seconds_vs_goal"] == pytest.approx(figures["RESULT help_seconds"] / 0.5, rel=1e-3)
    # issue 25: one study with 1 and 8 models, and the errors that need no model
    assert figures["RESULT score_one_study_s"] > figures["RESULT error_bad_path_s"] > 0
    assert figures["RESULT score_one_study_8models_s"] > 0 and figures["RESULT score_one_study_cpu_s"] > 0
    assert figures["RESULT error_no_images_s"] > 0


def test_memory_quick(tmp_path):
    figures = run_script(
        "memory.py",
        "--quick",
        "--small",
        "12",
        "--large",
        "60",
        "--distinct",
        "12",
        "--work",
        str(tmp_path),
        timeout=300,
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
    # issue 25: a generalist + 7 specialists against the generalist alone (tiny CNN under --quick)
    one, eight = figures["RESULT peak_rss_mb_1model[tiny]"], figures["RESULT peak_rss_mb_8models[tiny]"]
    assert figures["RATIO rss_8models_vs_1model[tiny]"] == pytest.approx(eight / one, rel=1e-3)
    assert len(list((tmp_path / "models8" / "tiny-256").glob("*.onnx"))) == 8


@pytest.mark.parametrize("name", ["scoring", "input_pipeline", "gpu"])
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


def run_gpu_script(tmp_path, *args: str, timeout: int = 300) -> tuple[dict[str, float], str]:
    """gpu.py with every GPU hidden (CUDA_VISIBLE_DEVICES=-1): its figures and its whole stdout."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}
    command = [sys.executable, str(BENCH / "gpu.py"), "--work", str(tmp_path), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = {}
    for line in done.stdout.splitlines():
        match = LINE.match(line)
        assert match or line.startswith("#"), f"unexpected output line: {line!r}"
        if match:
            figures[f"{match[1]} {match[2]}"] = float(match[3])
    return figures, done.stdout


def test_gpu_script_without_a_gpu_says_so_and_exits_0(tmp_path):
    figures, out = run_gpu_script(tmp_path)
    assert figures == {} and "# no GPU:" in out and "# needs: tensorflow" in out


@pytest.mark.tf
@pytest.mark.slow
def test_gpu_script_cpu_smoke_runs_every_part_on_the_cpu(tmp_path):
    """--cpu-smoke: tiny custom_cnn training steps (fp32, mixed + XLA), export by the project's exporter, ORT CPU."""
    import onnx

    figures, out = run_gpu_script(tmp_path, "--cpu-smoke")
    assert "# no GPU:" in out
    fp32, mixed = figures["RESULT train_step_img_s[fp32]"], figures["RESULT train_step_img_s[mixed_xla]"]
    assert fp32 > 0 and mixed > 0
    assert figures["RATIO train_mixed_xla_vs_fp32"] == pytest.approx(mixed / fp32, rel=1e-2)  # one repeat
    assert figures["RESULT ort_cpu_fp32_img_s"] > 0
    assert "RESULT ort_cuda_fp32_img_s" not in figures  # GPUs hidden: no CUDA figure, no ratio
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "custom_cnn-32.onnx")).metadata_props}
    assert props["plugin"] == "custom_cnn" and props["input_size"] == "32"


def test_loader_quick(tmp_path):
    figures = run_script("loader.py", "--quick", "--work", str(tmp_path))
    new, old = figures["RESULT loader_img_s"], figures["RESULT pillow_loader_img_s"]
    assert new > 0 and old > 0
    assert figures["RATIO loader_vs_pillow"] == pytest.approx(new / old, rel=1e-3)
    assert figures["RESULT loader_img_s[grey]"] > 0 and figures["RESULT loader_img_s[rgb]"] > 0  # both modes
    assert figures["RESULT loader_max_abs_diff"] <= 1  # the documented tolerance of the libspng path


def test_full_valid_quick(tmp_path):
    figures = run_script("full_valid.py", "--quick", "--work", str(tmp_path), timeout=300)
    wall = figures["RESULT full_valid_wall_s"]
    pngs = list((tmp_path / "set" / "MURA-v1.1" / "valid").rglob("*.png"))
    studies = {p.parent for p in pngs}
    assert {p.parts[-4] for p in pngs} == set(load("full_valid").VALID)  # the seven MURA parts
    assert figures["RESULT full_valid_studies_per_s"] == pytest.approx(len(studies) / wall, rel=1e-3)
    assert figures["RESULT full_valid_img_s"] == pytest.approx(len(pngs) / wall, rel=1e-3)
    shares = figures["RESULT full_valid_decode_share"] + figures["RESULT full_valid_inference_share"]
    assert shares == pytest.approx(1, abs=1e-3)  # printed to 4 significant digits
    assert len(list((tmp_path / "models" / "tiny-64").glob("*.onnx"))) == 8  # one generalist + seven specialists


def test_augmentation_report_lines(capsys):
    """input_pipeline.py's augmentation ratios are medians of per-round ratios (both sides ran back to back)."""
    bench = load("input_pipeline")
    values = {
        "augment": [400.0, 300.0, 500.0],
        "augment_before": [200.0, 100.0, 250.0],
        "augment_all_channels": [300.0, 200.0, 250.0],
        "tfdata": [240.0, 200.0, 220.0],
        "tfdata_before": [120.0, 200.0, 110.0],
    }
    bench.report_augmentation(values, 2)
    out = capsys.readouterr().out
    for line in out.splitlines():
        assert LINE.match(line), line
    assert "RESULT augment_img_s 400" in out and "RESULT train_input_img_s 220" in out
    assert "RATIO augment_vs_before 2  # goal >= 1.7" in out  # rounds 2, 3, 2
    assert "RATIO augment_all_channels_vs_before 1.5" in out  # rounds 1.5, 2, 1
    assert "RATIO train_input_vs_before 2" in out  # rounds 2, 1, 2
