"""Training with tf.distribute: strategy choice, TF_CONFIG, mirrored on two logical CPUs, two local workers.

The distributed runs are real ``mura-ens train`` subprocesses: logical CPU
devices and a multi-worker strategy can only be set up before TensorFlow
initialises, and a cluster needs one process per worker. They train a tiny
``custom_cnn`` (3 cells of 4 filters at 32 px, at most 40 images per fold)
for one epoch on the shared synthetic tree.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mura_ens.cli.main import main
from mura_ens.errors import UsageError
from mura_ens.training.strategy import (
    LOGICAL_CPUS_ENV,
    STRATEGIES,
    check_strategy,
    logical_cpus_from_env,
    parse_tf_config,
    resolve_strategy,
)

RUN_FILES = ("model.onnx", "card.json", "history.tsv", "evaluation.json", "curves.png", "best.keras")
TINY = [
    "--plugin",
    "custom_cnn",
    "--epochs",
    "1",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--param",
    "cells=3",
    "--param",
    "starting_filters=4",
    "--max-images",
    "40",
]
#: The run folder TINY trains (named after its parameters; the strategy is not part of the name).
RUN_NAME = "custom_cnn-32-f4-c3-e1-bs4-mi40-wc-aug"
TIMEOUT_S = 300


# --------------------------------------------------------------------------- choice and TF_CONFIG (no TensorFlow)


@pytest.mark.parametrize(
    ("requested", "gpus", "expected"),
    [
        ("auto", 0, "one"),
        ("auto", 1, "one"),
        ("auto", 2, "mirrored"),
        ("auto", 8, "mirrored"),
        ("one", 4, "one"),
        ("mirrored", 0, "mirrored"),
        ("mirrored", 1, "mirrored"),
        ("multiworker", 0, "multiworker"),
        ("Mirrored", 0, "mirrored"),
    ],
)
def test_auto_means_mirrored_only_with_several_gpus(requested, gpus, expected):
    assert resolve_strategy(requested, gpu_count=gpus) == expected


def test_unknown_strategy_names_the_choices():
    assert STRATEGIES == ("auto", "one", "mirrored", "multiworker")
    with pytest.raises(
        UsageError, match=r"unknown strategy 'horovod'; expected one of auto, one, mirrored, multiworker"
    ):
        check_strategy("horovod")


def _tf_config(cluster, task_type="worker", index=0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_tf_config_and_the_chief_rule():
    workers = ["10.0.0.1:12345", "node2:12345", "[::1]:2222"]
    first = parse_tf_config(_tf_config({"worker": workers}))
    assert (first.task_type, first.task_index, first.num_workers, first.is_chief) == ("worker", 0, 3, True)
    assert first.cluster["worker"] == tuple(workers) and first.label == "worker 0"
    assert not parse_tf_config(_tf_config({"worker": workers}, index=2)).is_chief
    # With a chief job, the chief is the chief and worker 0 is an ordinary worker.
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    chief = parse_tf_config(_tf_config(cluster, "chief", 0))
    assert chief.is_chief and chief.num_workers == 3 and chief.label == "chief"
    assert not parse_tf_config(_tf_config(cluster, "worker", 0)).is_chief


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"--strategy multiworker needs the TF_CONFIG environment variable"),
        ("  ", r"needs the TF_CONFIG environment variable"),
        (
            '{"cluster": {"worker": ["a:1"]}',
            r"TF_CONFIG is not valid JSON \(Expecting ',' delimiter at character 31\): '\{\"cluster",
        ),
        ('["a:1"]', r"TF_CONFIG needs a 'cluster' and a 'task' object, got '\[\"a:1\"\]'"),
        ('{"cluster": {"worker": ["a:1"]}}', r"needs a 'cluster' and a 'task' object"),
        (
            _tf_config({"worker": ["a:1"], "ps": ["b:1"]}),
            r"cluster has a 'ps' job; multiworker training uses only chief and worker",
        ),
        (_tf_config({"worker": "a:1"}), r"cluster\['worker'\] must be a non-empty list of 'host:port', got 'a:1'"),
        (_tf_config({"worker": []}), r"must be a non-empty list"),
        (_tf_config({"worker": ["a:1", "nohost"]}), r"cluster\['worker'\] has 'nohost'; expected 'host:port'"),
        (_tf_config({}), r"TF_CONFIG cluster lists no worker"),
        (_tf_config({"chief": ["a:1", "b:1"], "worker": ["c:1"]}, "chief"), r"has 2 chiefs"),
        (_tf_config({"worker": ["a:1", "a:1"]}), r"lists a:1 more than once"),
        (_tf_config({"worker": ["a:1"]}, "chief"), r"task type 'chief' is not a job of the cluster \(worker\)"),
        (
            _tf_config({"worker": ["a:1", "b:1"]}, index=2),
            r"task index 2 is out of range: the cluster has 2 worker task\(s\)",
        ),
        (_tf_config({"worker": ["a:1"]}, index="0"), r"task index must be an integer, got '0'"),
    ],
)
def test_bad_tf_config_is_one_line(text, message):
    with pytest.raises(UsageError, match=message) as caught:
        parse_tf_config(text)
    assert "\n" not in str(caught.value)


def test_logical_cpus_env():
    assert logical_cpus_from_env({}) is None
    assert logical_cpus_from_env({LOGICAL_CPUS_ENV: " 2 "}) == 2
    for bad in ("two", "0", "-1", "1.5", "65"):
        with pytest.raises(UsageError, match=rf"{LOGICAL_CPUS_ENV} must be a whole number from 1 to 64, got '{bad}'"):
            logical_cpus_from_env({LOGICAL_CPUS_ENV: bad})


def test_cli_refuses_multiworker_without_a_usable_tf_config(synth_small, tmp_path, monkeypatch, capsys):
    """Checked before the data are read or TensorFlow starts: one line, exit 2, nothing written."""
    out = tmp_path / "runs"
    base = ["train", "--data", synth_small["root"], "--out", str(out), *TINY, "--strategy", "multiworker"]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mura-ens: error: --strategy multiworker needs the TF_CONFIG environment variable")
    assert len(err.splitlines()) == 1
    monkeypatch.setenv("TF_CONFIG", "{not json")
    assert main(base) == 2
    assert "TF_CONFIG is not valid JSON" in capsys.readouterr().err
    assert main([*base[:-1], "ring"]) == 2
    assert "unknown strategy 'ring'" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- real distributed runs (subprocesses)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", LOGICAL_CPUS_ENV, "MURA_ENS_DEBUG")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra)
    return env


def _train_command(data: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mura_ens.cli.main", "train", "--data", data, "--out", str(out), *TINY, *extra]


def _run_all(commands: list[tuple[list[str], dict[str, str]]], folder: Path) -> list[tuple[int, str, str]]:
    """Start every command at once; (exit code, stdout, stderr) of each. Everything is killed on the way out."""
    procs = []
    try:
        for index, (command, env) in enumerate(commands):
            out, err = open(folder / f"stdout{index}.txt", "w+"), open(folder / f"stderr{index}.txt", "w+")
            procs.append((subprocess.Popen(command, env=env, stdout=out, stderr=err), out, err))
        results = []
        for proc, out, err in procs:
            code = proc.wait(timeout=TIMEOUT_S)
            out.seek(0), err.seek(0)
            results.append((code, out.read(), err.read()))
        return results
    finally:
        for proc, out, err in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close(), err.close()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _epoch_lines(stderr: str) -> list[str]:
    """The progress lines of the epochs, without the worker prefix and the wall time."""
    lines = [line.split("] ", 1)[-1] for line in stderr.splitlines() if "epoch 1/1" in line]
    return [line.rsplit(" | ", 1)[0] for line in lines]


def _check_run_folder(run: Path) -> dict:
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    card = json.loads((run / "card.json").read_text())
    assert card["onnx_max_abs_diff"] <= 1e-4 and card["training"]["epochs_run"] == 1
    return card


@pytest.mark.tf
@pytest.mark.slow
def test_mirrored_on_two_logical_cpus(synth_small, tmp_path):
    out = tmp_path / "runs"
    command = _train_command(synth_small["root"], out, "--strategy", "mirrored")
    [(code, stdout, stderr)] = _run_all([(command, _env(**{LOGICAL_CPUS_ENV: "2"}))], tmp_path)
    assert code == 0, stderr
    run = out / RUN_NAME
    assert stdout.strip() == str(run)
    assert "strategy: mirrored, 2 replica(s), global batch 8 (4 per replica), lr 0.001" in stderr
    card = _check_run_folder(run)
    training = card["training"]
    assert (training["strategy"], training["strategy_requested"], training["replicas"], training["workers"]) == (
        "mirrored",
        "mirrored",
        2,
        1,
    )
    assert [d.rsplit("/", 1)[-1] for d in training["replica_devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert training["per_replica_batch_size"] == 4 and training["global_batch_size"] == 8
    assert training["learning_rate"] == card["config"]["lr"] == 0.001
    assert training["learning_rate_scaling"].startswith("none")
    assert card["config"]["strategy"] == "mirrored"


@pytest.mark.tf
@pytest.mark.slow
def test_multiworker_two_local_processes(synth_small, tmp_path):
    """Two workers on loopback train one epoch in step; the chief alone writes the run folder."""
    out = tmp_path / "runs"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    scratch = [tmp_path / "tmp0", tmp_path / "tmp1"]
    commands = []
    for index in range(2):
        scratch[index].mkdir()
        env = _env(TF_CONFIG=_tf_config(cluster, "worker", index), TMPDIR=str(scratch[index]))
        commands.append((_train_command(synth_small["root"], out, "--strategy", "multiworker"), env))
    (chief_code, chief_out, chief_err), (worker_code, worker_out, worker_err) = _run_all(commands, tmp_path)
    assert chief_code == 0, chief_err
    assert worker_code == 0, worker_err

    assert [p.name for p in out.iterdir()] == [RUN_NAME]
    run = out / RUN_NAME
    assert chief_out.strip() == str(run) and worker_out.strip() == ""
    card = _check_run_folder(run)
    training = card["training"]
    assert (training["strategy"], training["replicas"], training["workers"]) == ("multiworker", 2, 2)
    assert training["per_replica_batch_size"] == 4 and training["global_batch_size"] == 8
    # The non-chief trained in a scratch folder of its own and removed it.
    assert list(scratch[1].iterdir()) == []
    assert "[worker 1] done in" in worker_err and "the chief writes the run folder" in worker_err
    # Same split on both, and the epoch's metrics are aggregated over both workers' shards.
    fold_lines = [
        [line.split("] ", 1)[1] for line in err.splitlines() if f"] {RUN_NAME}: train " in line]
        for err in (chief_err, worker_err)
    ]
    assert fold_lines[0] == fold_lines[1] and len(fold_lines[0]) == 1
    assert _epoch_lines(chief_err) == _epoch_lines(worker_err) and len(_epoch_lines(chief_err)) == 1


@pytest.mark.tf
@pytest.mark.slow
def test_multiworker_workers_with_different_options_stop(synth_small, tmp_path):
    """A worker started with another --seed (another split) is caught before training: exit 2 on both."""
    out = tmp_path / "runs"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    commands = [
        (
            _train_command(synth_small["root"], out, "--strategy", "multiworker", "--seed", str(index)),
            _env(TF_CONFIG=_tf_config(cluster, "worker", index)),
        )
        for index in range(2)
    ]
    for code, _, stderr in _run_all(commands, tmp_path):
        assert code == 2, stderr
        assert (
            "mura-ens: error: the workers of the cluster disagree on the images, split or options of custom_cnn"
            in stderr
        )
    assert not out.exists() or not any(out.iterdir())


SHARD_PROBE = """
import json, sys
import numpy as np
from mura_ens.training.data import load_training_data
from mura_ens.training.pipeline import LoadFailures
from mura_ens.training.strategy import make_strategy
from mura_ens.training.options import TrainOptions
from mura_ens.training.trainer import fit_datasets

setup = make_strategy("multiworker", gpus=())
frame = load_training_data(sys.argv[1], seed=0).frame
folds = {fold: frame.loc[frame["fold"] == fold] for fold in ("train", "val")}
failures = LoadFailures()
config = TrainOptions(image_size=16, batch_size=3, augment=True, seed=0).run_config(image_size=16, weights=None)
# The sample weight of each row is its position: the ids show which rows a worker was given.
streams = fit_datasets(folds["train"], np.arange(len(folds["train"]), dtype=np.float32), folds["val"],
                       np.arange(len(folds["val"]), dtype=np.float32), config=config, distribution=setup,
                       failures=failures)
seen = {}
for fold, stream in zip(("train", "val"), streams):
    distributed = setup.strategy.experimental_distribute_dataset(stream)
    for epoch in range(2):
        seen[f"{fold}{epoch}"] = [
            int(i) for _, _, w in distributed for v in setup.strategy.experimental_local_results(w) for i in v.numpy()
        ]
failed = failures.as_dict()
loadable = {fold: [i for i, p in enumerate(rows["path"]) if p not in failed] for fold, rows in folds.items()}
rows = {fold: len(frame) for fold, frame in folds.items()}
print("PROBE " + json.dumps({"seen": seen, "loadable": loadable, "rows": rows}))
"""


@pytest.mark.tf
@pytest.mark.slow
def test_multiworker_streams_give_every_image_to_exactly_one_worker(synth_small, tmp_path):
    """The streams fit reads, distributed as fit distributes them: per epoch the workers' shares partition the fold."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    commands = [
        ([sys.executable, "-c", SHARD_PROBE, synth_small["root"]], _env(TF_CONFIG=_tf_config(cluster, "worker", i)))
        for i in range(2)
    ]
    probes = []
    for code, stdout, stderr in _run_all(commands, tmp_path):
        assert code == 0, stderr
        probes.append(json.loads(stdout.split("PROBE ", 1)[1]))
    first, second = probes
    assert first["loadable"] == second["loadable"]
    for key in ("train0", "train1", "val0", "val1"):
        expected = first["loadable"][key[:-1]]
        assert first["seen"][key] and second["seen"][key], key
        assert sorted(first["seen"][key] + second["seen"][key]) == expected, key
    # the zero-byte training image was dropped from its fold (the truncated one is in the test fold)...
    assert sum(first["rows"].values()) - sum(len(ids) for ids in first["loadable"].values()) == 1
    assert first["seen"]["train0"] != first["seen"]["train1"]  # ...and training is reshuffled every epoch
