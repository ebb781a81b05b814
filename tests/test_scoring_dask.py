"""``--backend dask``: the same outputs as the local backend, on a LocalCluster and on a real
scheduler with worker subprocesses (one of them killed mid-run), resume, shipped models,
scheduler resolution and the missing-extra error.

Every process a test starts is stopped in a ``finally``/fixture teardown; everything
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from scoring_fixtures import make_tree

from mura_ens.cli.main import main
from mura_ens.errors import ModelError, UsageError
from mura_ens.scoring import journal as journal_module
from mura_ens.scoring.backends import make_backend
from mura_ens.scoring.dask_backend import (
    _SHIPPED,
    SCHEDULER_ENV,
    DaskBackend,
    ShipModel,
    resolve_scheduler,
    run_batch,
)
from mura_ens.scoring.models import load_models
from mura_ens.scoring.runner import ImageTask, RunnerConfig, plan_batches, score_batch
from mura_ens.scoring.score import ScoreSettings, score

OUTPUTS = ("images.csv", "studies.csv", "metrics.json")
PARTS = ["XR_HAND", "XR_WRIST", "XR_SHOULDER"]
N_STUDIES = 18
BATCH_SIZE = 2
WAIT_S = 90  # upper bound of any wait on a subprocess; normally a few seconds
SLOW_BATCHES = Path(__file__).parent / "slow_batches.py"  # a worker preload: each batch takes 0.2 s longer


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_models):
    """One- to three-image studies of three parts, the tiny models, and a local run's outputs."""
    root = tmp_path_factory.mktemp("dask")
    layout = [(part, k % 2, 1 + k % 3) for k, part in enumerate(PARTS * (N_STUDIES // len(PARTS)))]
    valid = make_tree(root / "data", layout, seed=21)
    models = tiny_models["gen_a"].parents[1]  # gen_a, gen_b, spec_hand, spec_elbow_wrist
    reference = root / "reference"
    score(valid, models_dir=models, out=reference, settings=ScoreSettings(batch_size=BATCH_SIZE), progress=False)
    return SimpleNamespace(valid=valid, models=models, reference=reference)


def assert_same_outputs(out: Path, reference: Path) -> None:
    """Byte-identical images.csv, studies.csv, metrics.json; no journal left."""
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (out / journal_module.JOURNAL_DIR).exists()


def assert_every_study_once(out: Path, reference: Path) -> None:
    import pandas as pd

    studies = pd.read_csv(out / "studies.csv")
    assert studies["study"].is_unique
    assert len(studies) == N_STUDIES
    assert set(studies["study"]) == set(pd.read_csv(reference / "studies.csv")["study"])
    assert (studies["status"] == "ok").all()


def journal_lines(out: Path) -> list[bytes]:
    path = out / journal_module.JOURNAL_DIR / journal_module.ROWS_FILE
    return path.read_bytes().splitlines() if path.exists() else []


def worker_processes() -> list[psutil.Process]:
    """Live children of this process started by multiprocessing's spawn (LocalCluster workers).

    Not multiprocessing's resource tracker, which lives as long as this process by design.
    """
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def wait_for_no_workers(timeout: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := worker_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# ------------------------------------------------------------------ LocalCluster in-process


def test_cli_dask_on_local_cluster_writes_the_same_files_as_local(data, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["score", str(data.valid), "--models", str(data.models), "--out", str(out)]
    args += ["--batch-size", str(BATCH_SIZE), "--no-progress", "--backend", "dask", "--workers", "2"]
    assert main(args) == 0, capsys.readouterr().err
    assert_same_outputs(out, data.reference)
    assert "<th>backend</th><td>dask</td>" in (out / "report.html").read_text(encoding="utf-8")  # provenance
    assert wait_for_no_workers() == [], "the LocalCluster's worker processes outlived the run"


def test_dask_run_interrupted_then_resumed_with_dask_ends_identical(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_append = journal_module.Journal.append

    def append_then_interrupt(self, number, rows):
        real_append(self, number, rows)
        self.count = getattr(self, "count", 0) + 1
        if self.count >= 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(journal_module.Journal, "append", append_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        score(
            data.valid,
            models_dir=data.models,
            out=out,
            settings=ScoreSettings(batch_size=BATCH_SIZE, workers=2),
            backend=make_backend("dask", cluster_workers=2),
            progress=False,
        )
    monkeypatch.undo()
    assert wait_for_no_workers() == [], "an interrupted run left its LocalCluster running"
    done = journal_lines(out)
    assert len(done) == 3
    for name in OUTPUTS:
        assert not (out / name).exists()

    # Poison a journalled image: re-scoring it would change its row.
    first_path = Path(json.loads(done[0])["rows"][0]["path"])
    original = first_path.read_bytes()
    first_path.write_text("not a png any more")
    try:
        result = score(
            data.valid,
            models_dir=data.models,
            out=out,
            settings=ScoreSettings(batch_size=BATCH_SIZE, workers=2, resume=True),
            backend=make_backend("dask", cluster_workers=2),
            progress=False,
        )
    finally:
        first_path.write_bytes(original)
    assert result.n_resumed_images == sum(len(json.loads(line)["rows"]) for line in done)
    assert_same_outputs(out, data.reference)


def test_in_flight_batches_are_bounded_by_twice_the_worker_threads(data):
    from mura_ens.data.manifest import scan_source

    manifest = scan_source(data.valid).manifest.reset_index(drop=True)
    tasks = [
        ImageTask(index=i, path=r.path, study=r.study, body_part=r.body_part)
        for i, r in enumerate(manifest.itertuples(index=False))
    ]
    batches = plan_batches(tasks, 1)
    assert len(batches) >= 8
    config = RunnerConfig(models=tuple(load_models(data.models)), batch_size=1)
    pulled = 0

    def counted():
        nonlocal pulled
        for batch in batches:
            pulled += 1
            yield batch

    backend = DaskBackend(n_workers=2, scheduler=None)
    backend.target = resolve_scheduler(None, environ={})  # a LocalCluster whatever the environment says
    in_flight, got = [], {}
    for number, rows in backend.map(counted(), config):
        in_flight.append(pulled - len(got) - 1)  # pulled, minus consumed (this one included)
        assert number not in got
        got[number] = rows
    assert max(in_flight) == 4  # 2 workers x 1 thread x 2
    assert sorted(got) == list(range(len(batches)))
    for number, batch in enumerate(batches):  # the rows are score_batch's, batch by batch
        assert got[number] == score_batch(batch, config)


# ------------------------------------------------------------------ scheduler and options


def test_scheduler_is_the_option_then_the_environment_then_local(tmp_path):
    import dask

    env = {SCHEDULER_ENV: "tcp://10.0.0.5:8786"}
    assert resolve_scheduler("tcp://10.0.0.9:8786", env).address == "tcp://10.0.0.9:8786"
    from_env = resolve_scheduler(None, env)
    assert (from_env.address, from_env.source) == ("tcp://10.0.0.5:8786", SCHEDULER_ENV)
    assert SCHEDULER_ENV in from_env.describe()
    with dask.config.set({"scheduler-address": None}):
        assert resolve_scheduler(None, {}).is_local
    with dask.config.set({"scheduler-address": "tcp://10.0.0.7:8786"}):
        assert resolve_scheduler(None, {}).address == "tcp://10.0.0.7:8786"
    file = tmp_path / "scheduler.json"
    file.write_text('{"address": "tcp://127.0.0.1:1"}')
    assert resolve_scheduler(str(file), {}).scheduler_file == str(file)
    with pytest.raises(UsageError, match="scheduler file not found: .*nope.json"):
        resolve_scheduler(str(tmp_path / "nope.json"), {})
    with pytest.raises(UsageError, match=f"{SCHEDULER_ENV} is empty"):
        resolve_scheduler(None, {SCHEDULER_ENV: " "})


def test_dask_options_without_dask_backend_are_refused():
    with pytest.raises(UsageError, match="--scheduler needs --backend dask"):
        make_backend("local", scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(UsageError, match="--scheduler and --ship-models need --backend dask"):
        make_backend("local", scheduler="tcp://127.0.0.1:8786", ship_models=True)
    with pytest.raises(UsageError, match="unknown backend 'ray'; choose one of local, dask"):
        make_backend("ray")
    backend = make_backend("dask", scheduler="tcp://127.0.0.1:8786", ship_models=True)
    assert isinstance(backend, DaskBackend) and backend.ship_models


def test_nothing_to_score_connects_to_no_cluster(data, monkeypatch):
    config = RunnerConfig(models=tuple(load_models(data.models)))
    backend = DaskBackend(scheduler="tcp://127.0.0.1:9")  # nobody listens there

    def connect():
        raise AssertionError("connected to a cluster with nothing to score")

    monkeypatch.setattr(backend, "connect", connect)
    assert list(backend.map([], config)) == []


def test_unreachable_scheduler_from_the_environment_is_a_one_line_error(data, tmp_path, monkeypatch, capsys):
    import dask

    monkeypatch.setenv(SCHEDULER_ENV, "tcp://127.0.0.1:9")  # discard port: nothing listens
    out = tmp_path / "out"
    args = [
        "score",
        str(data.valid),
        "--models",
        str(data.models),
        "--out",
        str(out),
        "--backend",
        "dask",
        "--no-progress",
    ]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "cannot connect to the Dask scheduler at tcp://127.0.0.1:9 (from DASK_SCHEDULER_ADDRESS)" in err[0]


def test_backend_dask_without_the_extra_names_the_extra(data, tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "sys.modules['distributed'] = None  # as if dask[distributed] were not installed\n"
        "from mura_ens.cli.main import main\n"
        f"sys.exit(main(['score', {str(data.valid)!r}, '--models', {str(data.models)!r}, '--out', {str(out)!r}, '--backend', 'dask']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["mura-ens: error: --backend dask needs the [dask] extra: pip install 'mura-ens[dask]'"]
    assert not out.exists()


# ------------------------------------------------------------------ what workers check


def test_worker_that_cannot_see_the_images_or_models_says_so(data, tmp_path):
    models = load_models(data.models)
    config = RunnerConfig(models=tuple(models), batch_size=2)
    task = ImageTask(index=0, path=str(tmp_path / "elsewhere" / "image1.png"), study="s", body_part="XR_HAND")
    with pytest.raises(UsageError, match="cannot see .*elsewhere/image1.png, which the client can"):
        run_batch([task], config, probe=task.path)

    moved = tmp_path / "moved.onnx"
    shutil.copy(models[0].path, moved)
    stale = RunnerConfig(models=(replace(models[0], path=str(moved), sha256="0" * 64),))
    with pytest.raises(ModelError, match="differs on Dask worker"):
        run_batch([], stale)
    gone = RunnerConfig(models=(replace(models[0], path=str(tmp_path / "gone.onnx")),))
    with pytest.raises(ModelError, match="not readable on Dask worker.*--ship-models"):
        run_batch([], gone)


def test_workers_get_the_tta_setting_and_run_the_same_batch_function(data, tmp_path):
    """``--tta flip`` reaches a Dask worker inside the RunnerConfig: its rows are score_batch's."""
    import pandas as pd
    from scoring_fixtures import tiny

    leftmost = tiny.make_mirror_sensitive_model(tmp_path / "leftmost" / "model.onnx")  # not mirror-symmetric
    config = RunnerConfig(models=tuple(load_models(None, [leftmost])), batch_size=BATCH_SIZE, tta="flip")
    assert DaskBackend(n_workers=1, intra_op_threads=1).worker_config(config).tta == "flip"
    images = pd.read_csv(data.reference / "images.csv")
    tasks = [
        ImageTask(index=i, path=row.path, study=row.study, body_part=row.body_part)
        for i, row in enumerate(images.head(4).itertuples(index=False))
    ]
    flipped = run_batch(tasks, config)
    assert flipped == score_batch(tasks, config)
    assert flipped != score_batch(tasks, replace(config, tta="none"))


def test_ship_model_plugin_writes_checked_bytes_once(data, tmp_path):
    spec = load_models(data.models)[0]
    payload = Path(spec.path).read_bytes()
    worker = SimpleNamespace(local_directory=str(tmp_path / "worker"), address="tcp://127.0.0.1:1")
    ShipModel(spec.sha256, payload, spec.path).setup(worker)
    local = Path(_SHIPPED[spec.sha256])
    assert local.parent == tmp_path / "worker" / "mura-ens-models"
    assert local.read_bytes() == payload
    with pytest.raises(ModelError, match="arrived damaged"):
        ShipModel("f" * 64, payload, spec.path).setup(worker)


# ------------------------------------------------------------------ a real scheduler and worker subprocesses


class SubprocessCluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, all stopped by :meth:`stop`."""

    def __init__(self, folder: Path, worker_env: dict[str, str]):
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.worker_env = worker_env
        self.workers: dict[str, subprocess.Popen] = {}
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def _spawn(self, args: list[str], log: str, env=None) -> subprocess.Popen:
        with open(self.folder / log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def start_scheduler(self) -> str:
        self._spawn(
            [
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(self.scheduler_file),
                "--idle-timeout",
                "300",
            ],
            "scheduler.log",
        )
        deadline = time.monotonic() + WAIT_S
        while not self.scheduler_file.is_file():
            assert self.procs[0].poll() is None, (self.folder / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.05)
        time.sleep(0.05)  # the file is written in one go, but be safe with a partial read
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        return self.address

    def start_worker(self, name: str) -> subprocess.Popen:
        proc = self._spawn(
            [
                "distributed.cli.dask_worker",
                "--scheduler-file",
                str(self.scheduler_file),
                "--name",
                name,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                "--local-directory",
                str(self.folder / name),
                "--death-timeout",
                "60",
                "--preload",
                str(SLOW_BATCHES),
            ],
            f"{name}.log",
            env=self.worker_env,
        )
        self.workers[name] = proc
        return proc

    def stop(self) -> None:
        """Workers first, then the scheduler (a worker told to stop while its scheduler closes may hang)."""
        workers = list(self.workers.values())
        for group in (workers, [p for p in self.procs if p not in workers]):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def subprocess_cluster(tmp_path):
    """A factory of one :class:`SubprocessCluster`; its workers pause after each batch (tests/slow_batches.py)."""
    env = {k: v for k, v in os.environ.items() if k != SCHEDULER_ENV}
    cluster = SubprocessCluster(tmp_path / "cluster", env)
    cluster.folder.mkdir()
    try:
        yield cluster
    finally:
        cluster.stop()


def score_subprocess(data, out: Path, extra: list[str], env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "mura_ens.cli.main", "score", str(data.valid), "--models", str(data.models)]
    command += ["--out", str(out), "--batch-size", str(BATCH_SIZE), "--no-progress", "--backend", "dask", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def worker_address(client, name: str) -> str | None:
    for address, info in client.scheduler_info(n_workers=-1)["workers"].items():
        if info.get("name") == name:
            return address
    return None


def wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the scoring run ended before {what}: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def shipped_models_on(client, address: str) -> dict[str, str]:
    """The worker's map of shipped models (sha256 -> local file)."""

    def read():  # a local function: pickled by value, since workers cannot import this test module
        from mura_ens.scoring import dask_backend

        return dict(dask_backend._SHIPPED)

    return client.run(read, workers=[address])[address]


def finish(proc: subprocess.Popen) -> str:
    try:
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err.decode()


@pytest.mark.slow
def test_worker_killed_mid_run_loses_no_study(data, tmp_path, subprocess_cluster):
    from distributed import Client

    address = subprocess_cluster.start_scheduler()
    victim = subprocess_cluster.start_worker("w0")
    subprocess_cluster.start_worker("w1")
    out = tmp_path / "out"
    # The scheduler comes from DASK_SCHEDULER_ADDRESS (no --scheduler): were it ignored, a
    # LocalCluster would run the batches and w0 below would never be processing one.
    env = {**subprocess_cluster.worker_env, SCHEDULER_ENV: address}
    with Client(address, set_as_default=False, timeout=30) as client:
        client.wait_for_workers(2, timeout=WAIT_S)
        w0 = worker_address(client, "w0")
        proc = score_subprocess(data, out, [], env)
        try:
            wait_until(
                lambda: len(journal_lines(out)) >= 2 and client.processing([w0]).get(w0),
                proc,
                "w0 to be scoring a batch",
            )
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            err = finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert worker_address(client, "w0") is None  # it really died, and the run still finished
    assert_every_study_once(out, data.reference)
    assert_same_outputs(out, data.reference)


@pytest.mark.slow
def test_shipped_models_reach_a_worker_that_joins_after_the_files_are_gone(data, tmp_path, subprocess_cluster):
    from distributed import Client

    subprocess_cluster.start_scheduler()
    first = subprocess_cluster.start_worker("w0")
    models = tmp_path / "models"
    shutil.copytree(data.models, models)
    out = tmp_path / "out"
    data_here = SimpleNamespace(valid=data.valid, models=models)
    with Client(scheduler_file=str(subprocess_cluster.scheduler_file), set_as_default=False, timeout=30) as client:
        client.wait_for_workers(1, timeout=WAIT_S)
        w0 = worker_address(client, "w0")
        proc = score_subprocess(
            data_here,
            out,
            ["--scheduler", str(subprocess_cluster.scheduler_file), "--ship-models"],
            subprocess_cluster.worker_env,
        )
        try:
            wait_until(
                lambda: len(journal_lines(out)) >= 2 and client.processing([w0]).get(w0),
                proc,
                "w0 to be scoring a batch",
            )
            shutil.move(models, tmp_path / "models-gone")  # no worker can read the model files any more
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            # The run now waits with no worker; w1 starts after the files are gone and must finish it.
            subprocess_cluster.start_worker("w1")
            err = finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        w1 = worker_address(client, "w1")
        shipped = shipped_models_on(client, w1)
    assert not models.exists()
    assert len(shipped) == 4 and all(Path(p).is_relative_to(tmp_path / "cluster" / "w1") for p in shipped.values())
    assert_every_study_once(out, data.reference)
    assert_same_outputs(out, data.reference)
