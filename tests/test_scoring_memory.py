"""Scoring memory does not grow with the number of models (issue 25): one ONNX Runtime arena for every session.

Each case runs in a fresh process (peak RSS is per process): six generalist models
whose activations take ~70 MB at batch 16 are run one after another on the same
prepared batch by :func:`mura_ens.scoring.runner.infer_batch`; the growth of the peak
RSS from the first model to all six is compared between the shared arena (the
default) and one arena per session (``SessionConfig(shared_arena=False)``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIZE = 128
N_MODELS = 6


def _write_models(folder: Path) -> list[Path]:
    """``N_MODELS`` generalists (same graph, different names): NHWC 128 px -> 32-channel conv -> pool -> sigmoid."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.05, (32, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (32, 1)).astype(np.float32), "head"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    paths = []
    for k in range(N_MODELS):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        helper.set_model_props(model, {"model_name": f"m{k}", "input_size": str(SIZE), "threshold": "0.5"})
        paths.append(folder / f"m{k}.onnx")
        save(model, str(paths[-1]))
    return paths


_CHILD = """
import json, sys
import numpy as np
from mura_ens.scoring.models import load_model_spec
from mura_ens.scoring.runner import ImageTask, PreparedBatch, RunnerConfig, infer_batch
from mura_ens.scoring.sessions import SessionConfig

paths, shared = json.loads(sys.argv[1]), sys.argv[2] == "1"
specs = tuple(load_model_spec(p) for p in paths)
n = 16
tasks = [ImageTask(i, f"x{i}.png", f"s{i}", "XR_HAND") for i in range(n)]
pixels = np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
session = SessionConfig(intra_op_threads=1, shared_arena=shared)
peaks = []
for k in (1, len(specs)):
    config = RunnerConfig(models=specs[:k], session=session, batch_size=n)
    rows = [{"index": i, "path": t.path, "status": "ok", "error": ""} for i, t in enumerate(tasks)]
    prepared = PreparedBatch(tasks, rows, {(SIZE, "stretch"): pixels}, {(SIZE, "stretch"): list(range(n))})
    out = infer_batch(prepared, config)
    assert all(len([c for c in r if c.startswith("prob__")]) == k for r in out)
    # VmHWM: this process image's own peak (ru_maxrss would start from the forking pytest process's RSS)
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    peaks.append(int(hwm.split()[1]) * 1024)
print(json.dumps(peaks))
""".replace("SIZE", str(SIZE))


def _peak_growth(paths: list[Path], shared: bool) -> int:
    """Bytes the peak RSS grew from running the first model to running all of them, in a fresh process."""
    args = [sys.executable, "-c", _CHILD, json.dumps([str(p) for p in paths]), "1" if shared else "0"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    first, all_models = json.loads(done.stdout.strip().splitlines()[-1])
    return all_models - first


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_peak_memory_is_flat_in_the_number_of_models_with_the_shared_arena(tmp_path):
    paths = _write_models(tmp_path)
    own = _peak_growth(paths, shared=False)
    shared = _peak_growth(paths, shared=True)
    # One arena per session: each further model keeps its own activations (~70 MB at batch 16).
    assert own > 150 * 2**20, f"one arena per session grew only {own / 2**20:.0f} MiB: the test cannot tell"
    # One shared arena: the later models reuse the first one's buffers.
    assert shared < 0.25 * own, f"shared arena grew {shared / 2**20:.0f} MiB vs {own / 2**20:.0f} MiB"


def test_sessions_use_the_shared_arena_unless_told_not_to():
    from mura_ens.scoring.sessions import SessionConfig, session_options, shared_cpu_arena

    assert shared_cpu_arena() is True
    assert session_options(SessionConfig()).get_session_config_entry("session.use_env_allocators") == "1"
    own = session_options(SessionConfig(shared_arena=False))
    with pytest.raises(RuntimeError, match="does not have configuration"):  # never set: the session's own arena
        own.get_session_config_entry("session.use_env_allocators")
    assert own.enable_cpu_mem_arena and own.enable_mem_pattern


def test_a_rewritten_model_is_built_through_a_temporary_file_that_does_not_stay(tmp_path, monkeypatch):
    import tempfile

    from mura_ens.scoring import sessions

    path = _write_models(tmp_path)[0]
    config = sessions.SessionConfig(intra_op_threads=1)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    pixels = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    expected = sessions._built_session(str(path), config).run(None, {"image": pixels})[0]
    np.testing.assert_array_equal(
        sessions._built_session(path.read_bytes(), config).run(None, {"image": pixels})[0], expected
    )
    assert list(temp.iterdir()) == []

    def refused(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", refused)  # a full temp folder: the bytes are handed over as before
    np.testing.assert_array_equal(
        sessions._built_session(path.read_bytes(), config).run(None, {"image": pixels})[0], expected
    )
