"""The test suite's own set-up (tests/conftest.py): the cores shared between xdist workers, heavy files first."""

from __future__ import annotations

import os
from pathlib import Path

import conftest

from mura_ens.scoring.sessions import usable_cpus

TF_THREADS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def test_every_heavy_first_file_exists():
    here = Path(__file__).parent
    missing = [name for name in conftest.HEAVY_FIRST if not (here / name).is_file()]
    assert not missing, f"renamed or removed: {missing}; update HEAVY_FIRST in tests/conftest.py"


def test_workers_get_their_share_of_the_cores(monkeypatch):
    for name in TF_THREADS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    conftest._share_the_cores_between_workers()
    assert [os.environ[name] for name in TF_THREADS] == [str(max(1, usable_cpus() // 2))] * 2


def test_one_process_or_a_developer_setting_is_left_alone(monkeypatch):
    for name in TF_THREADS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    conftest._share_the_cores_between_workers()
    assert not any(name in os.environ for name in TF_THREADS)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "7")
    conftest._share_the_cores_between_workers()
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "7"
