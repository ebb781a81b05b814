"""A plugin from outside the package, seen through a real entry point: listed, trained one step, exported.

``tests/fixtures/third_party_plugin`` holds a module and the
``*.dist-info`` metadata pip would write for it (``entry_points.txt``
declares ``tiny`` in the ``mura_ens.plugins`` group), plus a second
distribution whose entry point names a missing module. Putting the folder on
``sys.path`` / ``PYTHONPATH`` is all it takes; no core file knows these names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mura_ens import registry

FIXTURES = Path(__file__).parent / "fixtures" / "third_party_plugin"
MURA_ENS = Path(sys.executable).parent / "mura-ens"


@pytest.fixture
def third_party_on_path():
    sys.path.insert(0, str(FIXTURES))
    registry.refresh()
    yield
    sys.path.remove(str(FIXTURES))
    sys.modules.pop("mura_ens_tiny_plugin", None)
    registry.refresh()


def test_core_never_names_the_plugin():
    core = Path(registry.__file__).parent
    for path in core.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "mura_ens_tiny_plugin" not in text and "mura_ens_custom_cnn" not in text, path


def test_third_party_plugin_is_listed_by_the_cli(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(FIXTURES) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [str(MURA_ENS), "plugins"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    tiny = next(line for line in result.stdout.splitlines() if " tiny " in line)
    assert "mura-ens-tiny-plugin 0.1.0" in tiny and " ok " in tiny and " 32 " in tiny
    broken = next(line for line in result.stdout.splitlines() if " broken_example " in line)
    assert " broken " in broken and "mura-ens-broken-plugin 0.1.0" in broken
    assert "ModuleNotFoundError" in result.stdout
    for builtin in ("custom_cnn", "densenet201", "feedforward_cnn", "resnet50", "specialists"):
        assert f" {builtin} " in result.stdout

    only = dict(env, MURA_ENS_PLUGINS="tiny")
    result = subprocess.run(
        [str(MURA_ENS), "plugins", "--json"], capture_output=True, text=True, env=only, timeout=60, check=True
    )
    assert [row["name"] for row in json.loads(result.stdout)] == ["tiny"]


@pytest.mark.tf
def test_third_party_plugin_trains_one_step_and_exports(third_party_on_path, synth_small, tmp_path):
    from mura_ens.training import train
    from mura_ens.training.export import read_onnx_metadata

    row = next(r for r in registry.plugin_rows() if r["name"] == "tiny")
    assert row["distribution"] == "mura-ens-tiny-plugin" and row["status"] == "ok"
    (run,) = train(
        "tiny",
        synth_small["root"],
        tmp_path,
        epochs=1,
        batch_size=8,
        max_images=8,
        params=["filters=2"],
        progress=False,
    )
    card = json.loads((run / "card.json").read_text())
    assert card["training"]["epochs_run"] == 1 and card["input_size"] == 32  # the plugin's default size
    assert card["config"]["params"] == {"filters": 2} and card["onnx_max_abs_diff"] <= 1e-4
    assert card["versions"]["plugin:tiny"] == "mura-ens-tiny-plugin 0.1.0"
    meta = read_onnx_metadata(run / "model.onnx")
    assert meta["plugin"] == "tiny" and meta["input_size"] == "32"
