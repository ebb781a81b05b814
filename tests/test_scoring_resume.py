"""Resume after an interruption (a real kill -9 included) and atomic outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from scoring_fixtures import interrupt_after, journal_lines, kill_9_once_journalled, make_tree

from mura_ens.errors import UsageError
from mura_ens.scoring import journal as journal_module
from mura_ens.scoring.score import ScoreSettings, score

OUTPUTS = ("images.csv", "studies.csv", "metrics.json")
SLOW_BATCHES = Path(__file__).parent / "slow_batches.py"
N_STUDIES = 36


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_models):
    """Many one- and two-image studies and the outputs of an uninterrupted run with batch size 1."""
    root = tmp_path_factory.mktemp("resume")
    layout = [
        (part, k % 2, 1 + k % 2) for k, part in enumerate(["XR_HAND", "XR_WRIST", "XR_SHOULDER"] * (N_STUDIES // 3))
    ]
    valid = make_tree(root / "data", layout, seed=11)
    models = tiny_models["gen_a"].parents[1]
    reference = root / "reference"
    score(valid, models_dir=models, out=reference, settings=ScoreSettings(batch_size=1), progress=False)
    return valid, models, reference


def assert_same_outputs(out: Path, reference: Path) -> None:
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert (out / "report.html").is_file()
    assert not (out / journal_module.JOURNAL_DIR).exists()


def test_resume_after_kill_9_skips_finished_studies_and_ends_identical(data, tmp_path):
    valid, models, reference = data
    out = tmp_path / "out"
    # tests/slow_batches.py: the CLI with a pause after each batch, so that the run can be killed mid-way
    command = [sys.executable, str(SLOW_BATCHES), "0.15", "score", str(valid), "--models", str(models)]
    command += ["--out", str(out), "--batch-size", "1", "--no-progress"]
    kill_9_once_journalled(command, out, 6)
    done = journal_lines(out)
    assert 6 <= len(done) < N_STUDIES
    for name in OUTPUTS:
        assert not (out / name).exists(), f"{name} written before the run finished"

    # Poison an image that was already scored: re-scoring it would change its row.
    first_path = json.loads(done[0])["rows"][0]["path"]
    original = Path(first_path).read_bytes()
    Path(first_path).write_text("not a png any more")
    try:
        result = score(
            valid, models_dir=models, out=out, settings=ScoreSettings(batch_size=1, resume=True), progress=False
        )
    finally:
        Path(first_path).write_bytes(original)
    assert result.n_resumed_images >= sum(len(json.loads(line)["rows"]) for line in done)
    assert any(note.startswith("resuming") for note in result.notes)
    assert_same_outputs(out, reference)


def test_torn_last_line_is_dropped_and_the_run_completes(data, tmp_path, monkeypatch):
    valid, models, reference = data
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        score(valid, models_dir=models, out=out, settings=ScoreSettings(batch_size=1), progress=False)
    monkeypatch.undo()
    lines = journal_lines(out)
    assert len(lines) == 4
    n_journalled = sum(len(json.loads(line)["rows"]) for line in lines)
    rows_file = out / journal_module.JOURNAL_DIR / journal_module.ROWS_FILE
    with open(rows_file, "ab") as fh:  # what kill -9 in the middle of a write leaves
        fh.write(b'{"batch":4,"rows":[{"index":5,"pa')
    result = score(valid, models_dir=models, out=out, settings=ScoreSettings(batch_size=1, resume=True), progress=False)
    assert result.n_resumed_images == n_journalled
    assert_same_outputs(out, reference)


def test_resume_refuses_another_runs_journal_and_plain_rerun_replaces_it(data, tmp_path, monkeypatch, tiny_models):
    valid, models, reference = data
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        score(valid, models_dir=models, out=out, settings=ScoreSettings(batch_size=1), progress=False)
    monkeypatch.undo()
    with pytest.raises(UsageError, match="different run.*models"):
        score(valid, model_files=[tiny_models["gen_a"]], out=out, settings=ScoreSettings(resume=True), progress=False)
    assert len(journal_lines(out)) == 2  # refused without touching the journal
    # without --resume the old journal is replaced (and the user told so); batch size may differ
    result = score(valid, models_dir=models, out=out, settings=ScoreSettings(batch_size=4), progress=False)
    assert any("replaced" in note for note in result.notes)
    assert not (out / journal_module.JOURNAL_DIR).exists()
    images = pd.read_csv(out / "images.csv")
    assert len(images) == len(pd.read_csv(reference / "images.csv"))
    # --resume with nothing to resume just runs
    result = score(valid, models_dir=models, out=out, settings=ScoreSettings(batch_size=1, resume=True), progress=False)
    assert any("nothing to resume" in note for note in result.notes)
    assert_same_outputs(out, reference)


def test_outputs_are_replaced_atomically_when_writing_fails(data, tmp_path, monkeypatch):
    valid, models, reference = data
    out = tmp_path / "out"
    score(valid, models_dir=models, out=out, settings=ScoreSettings(batch_size=8), progress=False)
    before = {name: (out / name).read_bytes() for name in OUTPUTS}

    def failing_to_csv(self, buf=None, *args, **kwargs):
        buf.write("path,study\n/half/written,")  # part of a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(OSError, match="No space"):
        score(valid, models_dir=models, out=out, settings=ScoreSettings(batch_size=8), progress=False)
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    # the scoring itself finished and is journalled: --resume only writes the files
    assert journal_lines(out)
    result = score(valid, models_dir=models, out=out, settings=ScoreSettings(batch_size=8, resume=True), progress=False)
    assert result.n_resumed_images == len(result.images)
    assert (out / "images.csv").read_bytes() == (reference / "images.csv").read_bytes()
