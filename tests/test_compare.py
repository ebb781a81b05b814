"""`mura-ens compare`: three tiny real runs (two custom_cnn that differ in one parameter, one specialist of
another plugin and input size) side by side; folders that are not runs are named and skipped."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mura_ens.cli.main import main
from mura_ens.compare import NoRunToCompare, compare_runs, find_run_dirs, write_comparison
from mura_ens.errors import UsageError
from mura_ens.metrics import format_metric
from mura_ens.training.history import read_history

#: What the three runs were trained with differently (everything else is the same).
DIFFERING = {"plugin", "base", "body_parts", "image_size", "params.starting_filters"}
METRIC_KEYS = ("n", "n_positive", "kappa", "auc", "accuracy", "sensitivity", "specificity", "n_excluded")


@pytest.fixture(scope="session")
def three_runs(tmp_path_factory, synth_small) -> tuple[Path, list[Path]]:
    """``runs/`` with custom_cnn at starting_filters 4 and 8 (32 px) and an XR_HAND specialist (40 px), 2 epochs."""
    from mura_ens.training import TrainOptions, train

    out = tmp_path_factory.mktemp("compare") / "runs"
    common = dict(epochs=2, batch_size=16, augment=False, progress=False)
    options = [
        (
            "custom_cnn",
            TrainOptions(image_size=32, params={"cells": 2, "starting_filters": 4}, name="cnn-f4", **common),
        ),
        (
            "custom_cnn",
            TrainOptions(image_size=32, params={"cells": 2, "starting_filters": 8}, name="cnn-f8", **common),
        ),
        (
            "specialists",
            TrainOptions(image_size=40, params={"cells": 2, "starting_filters": 4}, body_part="XR_HAND", **common),
        ),
    ]
    runs = [path for plugin, option in options for path in train(plugin, synth_small["root"], out, option)]
    assert len(runs) == 3
    return out, runs


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _same(ours: float, theirs: float | None) -> bool:
    return math.isnan(ours) if theirs is None else ours == pytest.approx(theirs, abs=1e-12)


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<h2 id="{anchor}">')
    end = page.find("<h2", start + 1)
    return page[start : end if end > 0 else len(page)]


@pytest.mark.tf
@pytest.mark.slow
def test_compare_three_real_runs(three_runs, tmp_path):
    runs_dir, runs = three_runs
    comparison = compare_runs([str(runs_dir / "*")])  # a quoted glob, expanded by compare itself
    assert comparison.names == tuple(sorted(run.name for run in runs)) and not comparison.skipped

    # exactly the keys that differ, with each run's own values
    assert set(comparison.parameters.columns) == DIFFERING
    by_name = {run.name: run for run in runs}
    assert comparison.parameters.loc["cnn-f4", "params.starting_filters"] == "4"
    assert comparison.parameters.loc["cnn-f8", "params.starting_filters"] == "8"
    specialist = next(name for name in comparison.names if name.startswith("specialists"))
    assert comparison.parameters.loc[specialist, ["plugin", "image_size", "body_parts"]].tolist() == [
        "specialists",
        "40",
        "XR_HAND",
    ]

    # the metric table is each run's evaluation.json, value for value
    best_auc = []
    for name, run in by_name.items():
        evaluation = _json(run / "evaluation.json")
        for level in ("study", "image"):
            groups = {**evaluation[level]["by_body_part"], "overall": evaluation[level]["overall"]}
            for group, values in groups.items():
                row = comparison.cell(name, level, group)
                assert row is not None, (name, level, group)
                for key in METRIC_KEYS:
                    assert _same(float(row[key]), values[key]), (name, level, group, key)
                for key in ("kappa", "auc"):
                    lo, hi = values[f"{key}_ci"]
                    assert _same(float(row[f"{key}_lo"]), lo) and _same(float(row[f"{key}_hi"]), hi)
        best_auc.append(evaluation["study"]["overall"]["auc"])
        # curves are the run's history.tsv
        history = read_history(run / "history.tsv")
        curve = comparison.curves.query("run == @name and metric == 'loss' and fold == 'val'")
        assert curve["value"].tolist() == pytest.approx([row["val_loss"] for row in history])
    defined = [auc for auc in best_auc if auc is not None]
    best = comparison.best.loc[("study", "overall"), "auc"]
    assert (math.isnan(best) and len(defined) < 2) or best == pytest.approx(max(defined))

    files = write_comparison(comparison, tmp_path / "out")
    page = files.html.read_text(encoding="utf-8")
    for name in comparison.names:
        assert name in page
    shown = set(re.findall(r"<tr><td><code>([^<]+)</code></td>", _section(page, "parameters")))
    assert shown == DIFFERING
    overall = _section(page, "metrics").replace("<wbr>", "")  # run names may wrap after each hyphen
    for name, run in by_name.items():
        kappa = _json(run / "evaluation.json")["study"]["overall"]["kappa"]
        row = re.search(rf'<tr><td class="run">{re.escape(name)}</td>(.*?)</tr>', overall)
        assert row and format_metric(kappa) in row.group(1)
    assert "data:image/png;base64," in page and "<script" not in page and "http" not in page.split("<body>")[1]
    assert set(files.curves) == {"loss", "auc", "kappa"}
    for path in files.curves.values():
        assert path.name.startswith("curves_")
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 600


@pytest.mark.tf
@pytest.mark.slow
def test_folders_that_are_not_runs_are_named_and_skipped(three_runs, tmp_path):
    runs_dir, runs = three_runs
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs[0], unfinished)
    (unfinished / "card.json").unlink()
    broken = tmp_path / "broken"
    shutil.copytree(runs[1], broken)
    (broken / "card.json").write_text("{not json", encoding="utf-8")
    damaged = tmp_path / "damaged"
    shutil.copytree(runs[2], damaged)
    (damaged / "history.tsv").write_text("epoch\tloss\n1\tnot-a-number\n", encoding="utf-8")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("x", encoding="utf-8")
    given = [runs_dir, runs[0], unfinished, broken, damaged, plain, tmp_path / "missing", plain / "notes.txt"]
    given.append(tmp_path / "z*")

    comparison = compare_runs(given, metric="auc")
    assert comparison.names == tuple(sorted(run.name for run in runs))  # runs[0] again: taken once
    reasons = {Path(s.path).name: s.reason for s in comparison.skipped}
    assert set(reasons) == {"unfinished", "broken", "damaged", "plain", "missing", "notes.txt", "z*"}
    assert "history.tsv is not a training history" in reasons["damaged"] and "the file is damaged" in reasons["damaged"]
    assert reasons["unfinished"].startswith("unfinished run: no card.json")
    assert "not a readable model card" in reasons["broken"]
    assert reasons["plain"].startswith("not a run folder") and reasons["missing"] == "not found"
    assert reasons["notes.txt"] == "a file, not a run folder" and reasons["z*"] == "nothing matches this pattern"

    # a folder of runs is expanded one level; a run still being built inside it is named
    building = tmp_path / "more" / ".cnn.partial-123"
    shutil.copytree(runs[0], building)
    found = find_run_dirs([runs_dir, tmp_path / "more"])
    assert [p.name for p in found.run_dirs] == sorted(run.name for run in runs)
    assert [(Path(s.path).name, s.reason.split(":")[0]) for s in found.skipped] == [
        (".cnn.partial-123", "a run still being built (or left by a killed one)")
    ]

    # two runs with the same folder name get their parent's name too
    twin = tmp_path / "elsewhere" / runs[0].name
    shutil.copytree(runs[0], twin)
    names = compare_runs([runs[0], twin]).names
    assert len(set(names)) == 2 and all(name.endswith(runs[0].name) for name in names)
    assert compare_runs([runs[0], twin]).parameters.columns.empty  # a copy: nothing differs


@pytest.mark.tf
@pytest.mark.slow
def test_compare_cli_exit_codes(three_runs, tmp_path, capsys, monkeypatch):
    runs_dir, runs = three_runs
    monkeypatch.chdir(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), str(plain), "--out", str(out), "--metric", "auc"]) == 0
    captured = capsys.readouterr()
    assert f"mura-ens: skipped {plain}: not a run folder" in captured.err
    assert "Parameters that differ" in captured.out and "params.starting_filters" in captured.out
    for run in runs:
        assert run.name in captured.out
    written = {line.removeprefix("wrote ") for line in captured.out.splitlines() if line.startswith("wrote ")}
    assert written == {
        str(out / name) for name in ("compare.html", *(f"curves_{m}.png" for m in ("loss", "auc", "kappa")))
    }

    assert main(["compare", str(plain), str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("mura-ens: error:")]
    assert len(errors) == 1 and "no finished run to compare" in errors[0]
    assert f"skipped {tmp_path / 'missing'}: not found" in captured.err
    assert not (tmp_path / "compare-out").exists()  # nothing written when there is nothing to compare

    assert main(["compare", str(runs[0]), "--metric", "f1"]) == 2
    assert "unknown metric 'f1'" in capsys.readouterr().err
    with pytest.raises(NoRunToCompare) as raised:
        compare_runs([plain])
    assert isinstance(raised.value, UsageError) and raised.value.skipped[0].path == str(plain)


@pytest.mark.tf
@pytest.mark.slow
def test_compare_imports_neither_tensorflow_nor_onnxruntime(three_runs, tmp_path):
    """compare reads run folders only: it runs where TensorFlow is not installed."""
    runs_dir, _ = three_runs
    script = (
        "import sys\n"
        "from mura_ens.cli.main import main\n"
        f"code = main(['compare', {str(runs_dir)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnxruntime') if m in sys.modules)\n"
        "print('LOADED', loaded, 'CODE', code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "LOADED [] CODE 0" in done.stdout, done.stdout + done.stderr
    assert (tmp_path / "out" / "compare.html").is_file()
