"""`mura-ens score` on the command line: outputs, one-line errors with exit 2, no TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from scoring_fixtures import ENSEMBLE_LAYOUT, make_tree

from mura_ens.cli.main import main
from mura_ens.scoring.score import score


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("cli"), ENSEMBLE_LAYOUT[:6], seed=2)


def test_score_command_writes_the_four_files_and_prints_tables(tree, tiny_models, tmp_path, capsys):
    runs = tiny_models["gen_a"].parents[1]
    code = main(
        [
            "score",
            str(tree),
            "--models",
            str(runs),
            "--ensemble",
            "body_part",
            "--out",
            str(tmp_path),
            "--batch-size",
            "3",
            "--workers",
            "1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name in ("images.csv", "studies.csv", "metrics.json", "report.html"):
        assert (tmp_path / name).is_file(), name
    assert f"report: {tmp_path / 'report.html'}" in captured.out
    assert "Study-level metrics, ensemble (body_part)" in captured.out
    assert "Study-level metrics, specialists on their own parts" in captured.out
    assert "XR_HAND" in captured.out and "XR_WRIST" in captured.out
    assert "img/s" not in captured.err  # no progress bar when stderr is not a terminal
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["models"]) == {"gen_a", "gen_b", "spec_elbow_wrist", "spec_hand"}


def test_progress_bar_when_asked(tree, tiny_models, tmp_path, capsys):
    score(tree, model_files=[tiny_models["gen_a"]], out=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "img/s" in err and "studies" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "--models", "{runs}"], "input not found"),
        (["{tree}", "--models", "{empty}"], "no ONNX models found"),
        (["{nested}", "--models", "{runs}"], "no images found in"),  # folders only: answered before any import
        (["{tree}", "--model", "{nchw}"], "(N, 3, H, W)"),
        (
            ["{tree}", "--models", "{runs}", "--providers", "Bogus"],
            "'Bogus' is not available; available: CPUExecutionProvider",
        ),
        (["{tree}", "--model", "{spec_hand}", "--ensemble", "mean"], "generalist"),
        (["{tree}", "--models", "{runs}", "--ensemble", "median"], "'median'"),
        (["{tree}", "--models", "{runs}", "--precision", "int8"], "model.int8.onnx"),
        (["{manifest}", "--models", "{runs}"], "missing required column(s) patient"),
    ],
)
def test_unusable_arguments_exit_2_with_one_line(tree, tiny_models, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "nested" / "XR_HAND" / "patient1").mkdir(parents=True)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,study,body_part,label\na.png,s1,XR_HAND,1\n")
    values = dict(
        missing=tmp_path / "missing",
        runs=tiny_models["gen_a"].parents[1],
        empty=tmp_path / "empty",
        nested=tmp_path / "nested",
        nchw=tiny_models["nchw"],
        spec_hand=tiny_models["spec_hand"],
        tree=tree,
        manifest=manifest,
    )
    argv = ["score", *(a.format(**values) for a in args), "--out", str(tmp_path / "out")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    # one line (a manifest gets a heading line plus one line per problem)
    assert lines and all(line.startswith("mura-ens: error:") for line in lines), err
    assert message in err and (len(lines) == 1 or "invalid manifest" in lines[0]), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_score_runs_with_tensorflow_unimportable(tree, tiny_models, tmp_path):
    blocker = tmp_path / "block"
    marker = tmp_path / "tensorflow_was_imported"
    for name in ("tensorflow", "keras", "tf2onnx"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\nraise ImportError('{name} is blocked by the test')\n"
        )
    script = textwrap.dedent(
        f"""
        import sys
        from mura_ens.cli.main import main
        code = main(["score", {str(tree)!r}, "--models", {str(tiny_models["gen_a"].parents[1])!r},
                     "--out", {str(tmp_path / "out")!r}])
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TF got imported"
        sys.exit(code)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), f"something tried to import: {marker.read_text()}"
    assert (tmp_path / "out" / "studies.csv").is_file() and (tmp_path / "out" / "report.html").is_file()
    # the blocker really blocks: the same interpreter set-up cannot import tensorflow
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked by the test" in check.stderr
