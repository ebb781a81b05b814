"""Shared pytest fixtures.

``synth_small`` (session scope) is a small synthetic MURA tree, made once per
test session in a temporary folder with::

    make_synthetic_mura(tmp, studies_per_part=6, size=64, seed=3, difficulty="easy")

i.e. 7 body parts x 6 studies (5 train + 1 valid per part), 1-4 PNGs per
study at 64 px, with the quirks on: one ``._image1.png`` AppleDouble file,
one truncated PNG (valid split), one zero-byte PNG (train split), one
relabelled study (folder name disagrees with the studies CSV) and one patient
id under two body parts. It takes well under a second.

The fixture returns the summary dict of
:func:`mura_ens.data.synth.make_synthetic_mura`; the useful keys:

- ``synth_small["root"]``: the ``MURA-v1.1`` folder (str), holding
  ``train/``, ``valid/`` and the four official CSVs;
- ``synth_small["out"]``: its parent (str);
- ``synth_small["quirk_files"]``: ``{"appledouble", "truncated", "zero_byte"}`` -> absolute path;
- ``synth_small["relabelled_study"]``: ``{"path", "study", "folder_label", "csv_label"}``;
- ``synth_small["counts"][split][part]`` and ``synth_small["totals"][split]``.

Treat the tree as read-only: it is shared by every test of the session.

``tiny_models`` (session scope) is the standard set of tiny ONNX models built by
``tests/fixtures/make_tiny_models.py`` (no TensorFlow); helpers to make trees and read
outputs live in ``tests/scoring_fixtures.py``.

``fake_plugin`` registers a tiny fake plugin for one test and unregisters it after;
``fresh_registry`` rescans the entry points before and after a test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakes import FakePlugin
from onnx_graphs import make_run_dir
from scoring_fixtures import tiny

from mura_ens import registry
from mura_ens.scoring.sessions import usable_cpus

#: Files of a minute or more each (``--durations``), handed to the workers first so that neither is left
#: alone with one of them at the end while the other core idles.
HEAVY_FIRST = (
    "test_plugins_build.py",
    "test_readme_session.py",
    "test_demo.py",
    "test_training.py",
    "test_notebook.py",
    "test_warm_start.py",
)


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist, size each worker's TensorFlow thread pools (and its subprocesses') to its share
    of the CPUs; TensorFlow sizes them to the whole machine, so two workers on two cores ran four pools.

    Measured (the whole suite, 2 cores, two workers): user CPU 18.3 -> 15.0 min, pytest 10 min 49 s ->
    9 min 42 s. Set before any test module imports TensorFlow (conftest is imported first); a value the
    developer exported wins.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, usable_cpus() // workers))
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", share)
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", share)


_share_the_cores_between_workers()


def pytest_collection_modifyitems(config, items) -> None:
    """Run :data:`HEAVY_FIRST`'s files first, in that order; every other test keeps its place."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> dict:
    """A small synthetic MURA tree (see the module docstring); returns the synth summary."""
    from mura_ens.data.synth import make_synthetic_mura

    out = tmp_path_factory.mktemp("synth_small")
    return make_synthetic_mura(out, studies_per_part=6, size=64, seed=3, difficulty="easy")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The standard tiny model set, built once per test session."""
    return tiny.make_tiny_model_set(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture
def fake_plugin():
    """Register FakePlugin for one test, like simonw/llm's conftest registers its mock models."""
    plugin = registry.register(FakePlugin())
    yield plugin
    registry.unregister(plugin.name)


@pytest.fixture
def fresh_registry():
    """Rescan entry points before and after the test (for tests that change sys.path or the environment)."""
    registry.refresh()
    yield
    registry.refresh()


@pytest.fixture()
def run_dir(tmp_path, synth_small) -> Path:
    """A run folder as ``mura-ens train`` leaves it (a tiny CNN's model.onnx + card.json, no best.keras)."""
    return make_run_dir(tmp_path, synth_small)


# Hypothesis (tests/test_property_scoring.py): a bounded, reproducible profile for CI; `dev` for more examples.
# Guarded so that the rest of the suite runs where the [dev] extra (which brings hypothesis) is not installed.
try:
    import os as _os

    from hypothesis import HealthCheck as _HealthCheck
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile(
        "ci",
        max_examples=50,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[_HealthCheck.too_slow, _HealthCheck.data_too_large],
    )
    _hypothesis_settings.register_profile("dev", max_examples=200, deadline=None)
    _hypothesis_settings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover
    pass
