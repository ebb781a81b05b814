"""Plugin registry, plugin parameters and the `mura-ens plugins` command (no TensorFlow needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import FakePlugin

from mura_ens import registry
from mura_ens.cli.main import main
from mura_ens.errors import PluginError
from mura_ens.plugin import GENERALIST, SPECIALIST_FAMILY, parse_param_strings, resolve_params

BUILTINS = {
    "custom_cnn": ("mura-ens-custom-cnn", GENERALIST),
    "densenet201": ("mura-ens-densenet201", GENERALIST),
    "feedforward_cnn": ("mura-ens-feedforward-cnn", GENERALIST),
    "resnet50": ("mura-ens-resnet50", GENERALIST),
    "specialists": ("mura-ens-specialists", SPECIALIST_FAMILY),
}
FIXTURES = Path(__file__).parent / "fixtures" / "third_party_plugin"
VENV_BIN = Path(sys.executable).parent


def test_builtins_are_found_through_entry_points():
    rows = {row["name"]: row for row in registry.plugin_rows()}
    for name, (distribution, kind) in BUILTINS.items():
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["distribution"] == distribution
        assert rows[name]["kind"] == kind
        assert rows[name]["version"]
        assert registry.is_plugin(name)
    assert set(BUILTINS) <= set(registry.list_plugins())
    assert rows["densenet201"]["weights"] == "imagenet" and rows["custom_cnn"]["weights"] == "none"
    assert rows["custom_cnn"]["input_size"] == 256
    # a specialist family reports its default base's input size
    assert rows["specialists"]["input_size"] == rows["custom_cnn"]["input_size"]


def test_fake_plugin_registers_and_unregisters(fake_plugin):
    assert registry.get_plugin("fake_net") is fake_plugin
    row = next(r for r in registry.plugin_rows() if r["name"] == "fake_net")
    assert row["body_parts"] == ["XR_HAND"] and row["input_size"] == 48 and row["status"] == "ok"
    registry.unregister("fake_net")
    assert not registry.is_plugin("fake_net")
    registry.register(fake_plugin)  # so the fixture's teardown has something to remove


def test_unknown_plugin_is_one_line_listing_available_names():
    with pytest.raises(PluginError) as info:
        registry.get_plugin("no_such_net")
    message = str(info.value)
    assert "\n" not in message
    assert "'no_such_net'" in message
    for name in BUILTINS:
        assert name in message


def test_importing_the_registry_imports_no_keras():
    code = (
        "import sys, mura_ens.registry as r; rows = r.plugin_rows(); "
        "assert len(rows) >= 4, rows; "
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_env_var_restricts_which_plugins_load(monkeypatch, fresh_registry):
    monkeypatch.setenv("MURA_ENS_PLUGINS", "custom_cnn, resnet50")
    registry.refresh()
    assert registry.list_plugins() == ["custom_cnn", "resnet50"]
    with pytest.raises(PluginError, match=r"MURA_ENS_PLUGINS=custom_cnn,resnet50"):
        registry.get_plugin("densenet201")


def test_broken_plugin_is_listed_and_does_not_break_the_cli(monkeypatch, fresh_registry, capsys):
    monkeypatch.syspath_prepend(str(FIXTURES))
    registry.refresh()
    rows = {row["name"]: row for row in registry.plugin_rows()}
    broken = rows["broken_example"]
    assert broken["status"].startswith("broken: ModuleNotFoundError")
    assert broken["distribution"] == "mura-ens-broken-plugin"
    assert "broken_example" not in registry.list_plugins()
    with pytest.raises(PluginError, match="broken"):
        registry.get_plugin("broken_example")
    assert rows["custom_cnn"]["status"] == "ok"

    assert main(["plugins", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["broken_example"]["status"].startswith("broken")
    assert listed["tiny"]["status"] == "ok"


def test_specialist_family_rows_show_their_base_and_never_build(fake_plugin):
    from mura_ens.plugin import Plugin, SpecialistFamily

    class FakeFamily(SpecialistFamily):
        name = "fake_family"
        defaults = {"base": "fake_net"}

    class Orphans(SpecialistFamily):
        name = "orphans"
        defaults = {"base": "no_such_base"}

    for family in (FakeFamily, Orphans):
        registry.register(family)
    try:
        rows = {row["name"]: row for row in registry.plugin_rows()}
        assert rows["fake_family"]["input_size"] == fake_plugin.default_input_size == 48
        assert rows["fake_family"]["kind"] == SPECIALIST_FAMILY and rows["fake_family"]["status"] == "ok"
        # a base that is not installed: the family is listed with the base class's defaults, not an error
        assert (rows["orphans"]["input_size"], rows["orphans"]["weights"]) == (Plugin.default_input_size, "none")
        with pytest.raises(PluginError, match=r"'fake_family' is a specialist family: its base plugin builds"):
            registry.get_plugin("fake_family").build({"image_size": 48})
    finally:
        registry.unregister("fake_family")
        registry.unregister("orphans")


def test_plugin_name_must_match_entry_point(fresh_registry, tmp_path, monkeypatch):
    info = tmp_path / "mismatch-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mismatch\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mura_ens.plugins]\nother_name = mura_ens_custom_cnn:plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    row = next(r for r in registry.plugin_rows() if r["name"] == "other_name")
    assert "loads a plugin named 'custom_cnn'" in row["status"]


# --------------------------------------------------------------------------- parameters


def test_params_are_parsed_to_the_defaults_types():
    params = resolve_params(FakePlugin(), parse_param_strings(["width=16", "rate=0.1", "flag=false", "mode=b"]))
    assert params == {"width": 16, "rate": 0.1, "flag": False, "mode": "b"}
    assert resolve_params(FakePlugin(), None) == dict(FakePlugin.defaults)
    assert resolve_params(FakePlugin(), {"rate": 1})["rate"] == 1.0


@pytest.mark.parametrize(
    "items, expected",
    [
        (["depth=3"], r"unknown parameter 'depth' for plugin fake_net; valid: flag, mode, rate, width"),
        (["width=wide"], r"bad value 'wide' for parameter 'width' of plugin fake_net: expected an integer"),
        (["rate=fast"], r"bad value 'fast' for parameter 'rate'"),
        (["flag=maybe"], r"bad value 'maybe' for parameter 'flag'.*true or false"),
        (["mode=c"], r"bad value 'c' for parameter 'mode' of plugin fake_net; expected one of a, b"),
        (["width"], r"--param expects key=value, got 'width'"),
    ],
)
def test_bad_params_give_one_line(items, expected):
    with pytest.raises(PluginError, match=expected) as info:
        resolve_params(FakePlugin(), parse_param_strings(items))
    assert "\n" not in str(info.value)


def test_builtin_defaults_match_the_issue():
    cnn = registry.get_plugin("custom_cnn").defaults
    assert (cnn["starting_filters"], cnn["cells"], cnn["convs_per_cell"], cnn["pooling"]) == (32, 6, 1, "max")
    assert cnn["batch_norm"] is True and cnn["dropout"] == 0.25 and cnn["spatial_dropout"] == 0
    dense = registry.get_plugin("densenet201").defaults
    assert dense["trainable_after"] == 606 and dense["pooling"] == "avg" and dense["dropout"] == 0.25
    assert set(registry.get_plugin("resnet50").defaults) == set(dense)
    assert registry.get_plugin("specialists").defaults == {"base": "custom_cnn"}


# --------------------------------------------------------------------------- CLI


def test_plugins_command_lists_the_builtins():
    result = subprocess.run(
        [str(VENV_BIN / "mura-ens"), "plugins"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for name, (distribution, kind) in BUILTINS.items():
        line = next(line for line in result.stdout.splitlines() if f" {name} " in line)
        assert kind in line and distribution in line and " ok " in line


def test_train_with_unknown_plugin_is_one_line_exit_2(capsys, tmp_path):
    code = main(["train", "--plugin", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "unknown plugin 'nope'" in err and "custom_cnn" in err


def test_train_with_bad_param_is_one_line_exit_2(capsys, tmp_path):
    code = main(
        [
            "train",
            "--plugin",
            "custom_cnn",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
            "--param",
            "cells=many",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "bad value 'many' for parameter 'cells' of plugin custom_cnn" in err


def test_train_base_only_for_families(capsys, tmp_path):
    code = main(
        [
            "train",
            "--plugin",
            "custom_cnn",
            "--base",
            "resnet50",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 2 and "--base applies to specialist families only" in capsys.readouterr().err


def test_specialist_params_are_checked_against_the_base(capsys, tmp_path):
    code = main(
        [
            "train",
            "--plugin",
            "specialists",
            "--base",
            "resnet50",
            "--param",
            "cells=3",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unknown parameter 'cells' for plugin resnet50" in err


def test_plugins_command_imports_no_tensorflow():
    env = dict(os.environ)
    code = "import sys; from mura_ens.cli.main import main; main(['plugins']); assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env, capture_output=True)
