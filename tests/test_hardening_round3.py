"""Issue 23: pseudonymised outputs that never leak, explain artifacts bound to their models, full and read-only
disks, damaged best.keras in a batch export, outputs that are inputs, ``--overwrite`` killed mid-commit,
SIGTERM, and the smaller refusals (run names, API argument types, a garbage history).

Fast: tiny ONNX models made with onnx.helper (``onnx_graphs``), small trees; TensorFlow only where marked.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from onnx_graphs import make_explain_run
from scoring_fixtures import journal_lines, make_tree, read_studies

from mura_ens.cli.main import main
from mura_ens.errors import UsageError
from mura_ens.pseudonym import PSEUDONYM_KEY_ENV, Pseudonymizer, identifiers_of, path_roots, pseudonym, study_uid_of

KEY = "hospital-secret"
TESTS = Path(__file__).parent


def run_cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def leaks(folder: Path, secrets: list[str]) -> dict[str, list[str]]:
    """Every file or folder under ``folder`` (hidden ones included) holding one of ``secrets`` in its name or bytes."""
    found: dict[str, list[str]] = {}
    for path in [folder, *folder.rglob("*")]:
        name = str(path.relative_to(folder))
        data = path.read_bytes() if path.is_file() else b""
        hits = [s for s in secrets if s in name or s.encode() in data]
        if hits:
            found[name] = hits
    return found


def explain_models(root: Path, *, training_root: str) -> Path:
    """Two explainable runs whose cards name training images by absolute path (as a real card does)."""
    for name in ("explain_a", "explain_b"):
        model = make_explain_run(root / name, input_size=32)
        card_path = model.parent / "card.json"
        card = json.loads(card_path.read_text())
        card["data"] = {"source": training_root, "manifest_sha256": "ab" * 32}
        card["export"] = {"parity_paths": [f"{training_root}/train/XR_HAND/patient04242/study1_positive/image1.png"]}
        card_path.write_text(json.dumps(card))
    return root


# ------------------------------------------------------------------------------------------ 1. --pseudonymize


def test_pseudonymized_run_leaves_no_id_training_path_or_absolute_path(tmp_path, monkeypatch):
    """report.html once embedded card.json (training patient folders, the training machine's paths); heatmaps were
    written raw then rewritten; absolute paths of the input stood in every table."""
    data = tmp_path / "hospital_input"
    make_tree(data, [("XR_HAND", 1, 2), ("XR_WRIST", 0, 1)], seed=5)
    models = explain_models(tmp_path / "models", training_root="/srv/training-machine/MURA-v1.1")
    out = tmp_path / "out"
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    code, err = run_cli(["score", data, "--models", models, "--out", out, "--explain", "2", "--pseudonymize"])
    assert code == 0, err
    secrets = ["patient11000", "patient11001", "patient04242", "/srv/training-machine", str(tmp_path)]
    assert leaks(out, secrets) == {}
    report = (out / "report.html").read_text()
    assert "training set sha256" in report and "abababababab" in report and "<td>explain_a/model.onnx</td>" in report
    images = pd.read_csv(out / "images.csv")
    assert all(not p.startswith("/") for p in images["path"])  # relative to the input folder
    index = pd.read_csv(out / "heatmaps" / "index.csv")
    assert len(index) and all(not p.startswith("/") and "anon-" in p for p in index["image"])
    # without --pseudonymize the report's provenance still names no card content and no absolute path
    code, err = run_cli(["score", data, "--models", models, "--out", tmp_path / "plain"])
    assert code == 0, err
    plain = (tmp_path / "plain" / "report.html").read_text()
    provenance = plain[plain.index('id="provenance"') :]
    assert "patient04242" not in plain and str(tmp_path) not in provenance and "/srv/" not in plain


@pytest.mark.parametrize("uid", ["ABC.DEF.SECRET7", "ABC/DEF/SECRET7", "ABC/../SECRET7", "1.2.840.99"])
def test_study_uids_of_any_shape_are_pseudonymized(tmp_path, monkeypatch, tiny_models, uid):
    """A UID that is not digits and dots (letters, '/', '..') stayed raw in studies.csv and images.csv."""
    data = tmp_path / "data"
    make_tree(data, [("XR_HAND", 1, 1)], seed=2)
    image = next(data.rglob("*.png"))
    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "path": [str(image)],
            "study": [f"XR_HAND/{uid}"],
            "patient": ["PID-1"],
            "body_part": ["XR_HAND"],
            "label": [1],
        }
    ).to_csv(manifest, index=False)
    out = tmp_path / "out"
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    code, err = run_cli(["score", manifest, "--model", tiny_models["gen_a"], "--out", out, "--pseudonymize"])
    assert code == 0, err
    assert leaks(out, ["SECRET7", uid, "PID-1"]) == {}
    assert set(read_studies(out)["study"]) == {f"XR_HAND/{pseudonym(uid, KEY.encode())}"}
    assert study_uid_of("valid/XR_HAND/patient1/study1") is None and study_uid_of("XR_HAND/patient1/study2") is None


def test_dicom_names_and_accession_numbers_are_identifiers_and_roots_cut_absolute_paths():
    from mura_ens.data.dicom import DicomHeader

    header = DicomHeader(
        *("1.2.3", "PID9", "HAND", "", "", 1, "MONOCHROME2", "", 8, 8, 1, 8, "x"),
        patient_name="SMITH^JOHN",
        accession_number="ACC777",
    )
    assert {"SMITH^JOHN", "SMITH", "JOHN", "SMITH_JOHN", "ACC777", "PID9", "1.2.3"} <= header.identifiers()
    hide = Pseudonymizer(KEY.encode(), identifiers_of(extra=header.identifiers()), path_roots(["/data/in"]))
    text = hide.text("/data/in/SMITH_JOHN/ACC777/IM1 failed: cannot open /data/in/x.png; /data/input stays")
    assert "SMITH" not in text and "ACC777" not in text and "/data/in/" not in text
    assert text.startswith("anon-") and "cannot open x.png" in text and "/data/input stays" in text
    assert hide.text("/data/in") == "."


def _kill_points(monkeypatch, kill_at: int | None, check) -> list[int]:
    """Call ``check()`` at every write event of a run (each one a moment a kill -9 could strike) and, at event
    ``kill_at``, stop the run there like kill -9 (a BaseException no cleanup code expects)."""
    from mura_ens import io as io_module
    from mura_ens.scoring import journal as journal_module

    count = [0]

    class Killed(BaseException):
        pass

    def event() -> None:
        count[0] += 1
        check()
        if kill_at is not None and count[0] == kill_at:
            raise Killed

    def wrap(owner, name):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            event()
            return result

        monkeypatch.setattr(owner, name, wrapper)

    wrap(io_module, "_atomic")
    wrap(os, "replace")
    wrap(os, "rename")
    wrap(journal_module.Journal, "append")
    return count, Killed


def run_pseudonymized_explain(tmp_path: Path, monkeypatch, kill_at: int | None) -> tuple[int, Path]:
    """A pseudonymized --explain run checked for raw identifiers at each write event; stopped at ``kill_at``."""
    data = tmp_path / "hospital_input"
    if not data.exists():
        make_tree(data, [("XR_HAND", 1, 2), ("XR_WRIST", 0, 1), ("XR_HAND", 0, 1)], seed=5)
        explain_models(tmp_path / "models", training_root="/srv/training-machine/MURA-v1.1")
    out = tmp_path / "out"
    secrets = ["patient11000", "patient11001", "patient11002", "patient04242", "/srv/training-machine", str(tmp_path)]

    def check() -> None:
        assert leaks(out, secrets) == {} if out.exists() else True

    count, killed = _kill_points(monkeypatch, kill_at, check)
    args = ["score", data, "--models", tmp_path / "models", "--out", out, "--explain", "2", "--pseudonymize"]
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    with contextlib.suppress(killed):
        run_cli([*args, "--batch-size", "1", "--workers", "1"])
    check()
    return count[0], out


def test_a_kill_at_any_write_of_a_pseudonymized_explain_run_leaves_no_raw_identifier(tmp_path, monkeypatch):
    """Every write event of a whole run is a kill point: the tree is scanned (every byte, every name) at each."""
    with monkeypatch.context() as patch:
        events, out = run_pseudonymized_explain(tmp_path, patch, kill_at=None)
    assert events > 10 and (out / "heatmaps" / "index.csv").is_file()
    with monkeypatch.context() as patch:  # killed right after heatmaps/ is renamed into place (the case)
        shutil.rmtree(out)
        run_pseudonymized_explain(tmp_path, patch, kill_at=events - 1)


# ------------------------------------------------------------------------------------------ 2. explain binding


def _explain_run_tree(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    make_tree(data, [("XR_HAND", 1, 2), ("XR_WRIST", 0, 1)], seed=1)
    models = tmp_path / "models"
    make_explain_run(models / "explain_a", input_size=32)
    make_explain_run(models / "explain_b", input_size=32)
    return data, models


def _swap_head(folder: Path, *, keep_hash: bool) -> None:
    """explain.npz of another model of the same architecture (the kernel scaled), as a swap between runs gives."""
    with np.load(folder / "explain.npz") as arrays:
        weights = {key: arrays[key] for key in arrays.files}
    key = next(k for k in weights if k.endswith("kernel"))
    weights[key] = weights[key] * 1.7
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    (folder / "explain.npz").write_bytes(buffer.getvalue())
    if not keep_hash:  # an artifact written before the hash was recorded: only the forward check can tell
        spec = json.loads((folder / "explain.json").read_text())
        spec.pop("weights_sha256", None)
        (folder / "explain.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("damage", ["swapped", "swapped_no_hash", "nan", "truncated"])
def test_a_bad_explain_artifact_is_a_note_for_its_model(tmp_path, damage):
    from mura_ens.explain import CannotExplain, load_explainer

    data, models = _explain_run_tree(tmp_path)
    folder = models / "explain_b"
    if damage.startswith("swapped"):
        _swap_head(folder, keep_hash=damage == "swapped")
    elif damage == "nan":
        with np.load(folder / "explain.npz") as arrays:
            weights = {key: np.full_like(arrays[key], np.nan) for key in arrays.files}
        np.savez(folder / "explain.npz", **weights)
        spec = json.loads((folder / "explain.json").read_text())
        spec.pop("weights_sha256", None)
        (folder / "explain.json").write_text(json.dumps(spec))
    else:
        raw = (folder / "explain.npz").read_bytes()
        (folder / "explain.npz").write_bytes(raw[: len(raw) // 2])
    expected = {
        "swapped": "sha256 differs",
        "swapped_no_hash": "does not reproduce its model's probability",
        "nan": "NaN",
        "truncated": "sha256 differs",
    }[damage]
    with pytest.raises(CannotExplain, match=expected):
        load_explainer(folder / "model.onnx")
    load_explainer(models / "explain_a" / "model.onnx")  # the intact one loads (its forward check passes)
    if damage != "truncated":
        return  # one scoring run (the case) shows the note path for all of them
    out = tmp_path / "out"
    (out / "report.html").parent.mkdir()
    (out / "report.html").write_text("an earlier run's report")
    code, err = run_cli(["score", data, "--models", models, "--out", out, "--explain", "2"])
    assert code == 0 and "Traceback" not in err, err
    assert "--explain: model explain_b cannot explain" in err and expected.split()[0] in err
    assert "earlier run" not in (out / "report.html").read_text()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no .partial/, no staging
    index = pd.read_csv(out / "heatmaps" / "index.csv")
    assert set(index["heatmap_models"].str.split(":").str[0]) == {"explain_a"}


def test_a_truncated_zip_without_a_recorded_hash_is_a_note_not_a_traceback(tmp_path):
    from mura_ens.explain import CannotExplain, load_explainer

    _, models = _explain_run_tree(tmp_path)
    folder = models / "explain_b"
    spec = json.loads((folder / "explain.json").read_text())
    spec.pop("weights_sha256", None)
    (folder / "explain.json").write_text(json.dumps(spec))
    raw = (folder / "explain.npz").read_bytes()
    (folder / "explain.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CannotExplain, match=r"explain.npz is missing or unusable \(BadZipFile"):
        load_explainer(folder / "model.onnx")


# ------------------------------------------------------------------------------------------ 3. full / read-only disks


def test_synth_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from PIL import Image

    real_save, calls = Image.Image.save, [0]

    def full_disk(self, fp, *args, **kwargs):
        calls[0] += 1
        if calls[0] > 10:  # the disk fills up after ten images
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "synth"
    code, err = run_cli(["synth", out, "--studies-per-part", "2", "--size", "32"])
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert calls[0] == 11 and not out.exists()
    out.mkdir()  # an OUT that was there stays, empty again
    calls[0] = 0
    code, err = run_cli(["synth", out, "--studies-per-part", "2", "--size", "32"])
    assert code == 2 and os.listdir(out) == [], err


def test_a_read_only_out_is_refused_before_anything(tmp_path, monkeypatch, synth_small):
    from mura_ens.io import check_writable_folder

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(UsageError, match="read-only file system"):
        check_writable_folder(tmp_path / "new" / "runs")
    code, err = run_cli(["synth", tmp_path / "s"])
    assert code == 2 and "read-only file system" in err and not (tmp_path / "s").exists(), err
    code, err = run_cli(["train", "--plugin", "custom_cnn", "--data", synth_small["root"], "--out", tmp_path / "r"])
    assert code == 2 and err.count("\n") == 1 and "read-only file system" in err and not (tmp_path / "r").exists()


def test_main_turns_a_full_disk_anywhere_into_one_line(monkeypatch):
    from mura_ens.cli import main as main_module

    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/x/best.keras")

    monkeypatch.setattr(main_module, "app", boom)
    code, err = run_cli(["plugins"])
    assert code == 2 and err == "mura-ens: error: cannot write /x/best.keras: No space left on device\n"


@pytest.mark.tf
def test_train_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, synth_small):
    """The checkpoint callback's ``OSError: [Errno 28]`` once ended in a traceback (exit 1)."""
    from mura_ens.training import trainer

    def fit(model, work, *args, **kwargs):
        (Path(work) / "best.keras").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(work) / "best.keras"))

    monkeypatch.setattr(trainer, "_fit", fit)
    out = tmp_path / "runs"
    args = ["train", "--plugin", "custom_cnn", "--data", synth_small["root"], "--out", out, "--epochs", "1"]
    code, err = run_cli([*args, "--image-size", "32", "-p", "cells=1", "-p", "starting_filters=4", "--quiet"])
    lines = [line for line in err.splitlines() if "warning" not in line]
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0] and "best.keras" in lines[0], err
    assert not out.exists()


# ------------------------------------------------------------------------------------------ 4. export batches


@pytest.mark.tf
def test_a_damaged_best_keras_is_one_line_and_the_batch_goes_on(tmp_path, run_dir, synth_small):
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    (damaged / "model.onnx").unlink()  # so export must load best.keras
    card = json.loads((damaged / "card.json").read_text())
    card["export"] = {"parity_paths": sorted(str(p) for p in Path(synth_small["root"]).rglob("image1.png"))[:2]}
    (damaged / "card.json").write_text(json.dumps(card))
    (damaged / "best.keras").write_bytes(b"PK\x03\x04 not a Keras archive")
    code, err = run_cli(["export", damaged, run_dir, "--quantize", "int8", "--calibration-images", "4"])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(damaged / "best.keras") in err and "cannot be loaded" in err
    assert (run_dir / "model.int8.onnx").is_file()  # the other run was still done


# ------------------------------------------------------------------------------------------ 5. output == input


def test_outputs_that_are_inputs_are_refused(tmp_path, synth_small, tiny_models):
    root = Path(synth_small["root"])
    scored = tmp_path / "S"
    scored.mkdir()
    (scored / "studies.csv").write_text("study,label\n")
    link = tmp_path / "link.csv"
    link.symlink_to(root / "valid_image_paths.csv")
    cases = [
        (["manifest", root, "-o", root / "valid_image_paths.csv"], "is an input"),
        (["manifest", root, "-o", link], "resolves to"),
        (["fit-ensemble", scored, "--out", scored / "studies.csv"], "is an input"),
        (["fit-ensemble", scored, "--out", scored / ".." / "S" / "studies.csv"], "resolves to"),
        (["score", root / "valid", "--model", tiny_models["gen_a"], "--out", root / "valid"], "is an input"),
        (["train", "--plugin", "custom_cnn", "--data", root, "--out", root], "is an input"),
        (["compare", tmp_path, "-o", tmp_path], "is an input"),
    ]
    tree = make_tree(tmp_path / "tree", [("XR_HAND", 1, 1)])  # no official CSVs yet: one would be read by later scans
    cases.append((["manifest", tree, "-o", tree / "valid_image_paths.csv"], "would be read as MURA's official"))
    before = sorted(p.name for p in root.iterdir())
    for args, expected in cases:
        code, err = run_cli(args)
        assert code == 2 and err.count("\n") == 1 and expected in err and "choose another" in err, (args, err)
    assert sorted(p.name for p in root.iterdir()) == before
    assert (scored / "studies.csv").read_text() == "study,label\n"


# ------------------------------------------------------------------------------------------ 6. --overwrite


def _finished_run(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps({"tag": tag}))
    (folder / "model.onnx").write_bytes(tag.encode())
    return folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_overwrite_swaps_in_one_step(tmp_path, monkeypatch):
    """At no moment is the run missing from view (the two renames once left both folders hidden in between)."""
    from mura_ens.training.atomic_run import building_run

    out = tmp_path / "runs"
    _finished_run(out / "cnn", "old")
    real_rename = os.rename

    def rename(src, dst):
        real_rename(src, dst)
        assert (out / "cnn" / "card.json").is_file(), f"no run in view after renaming {src} to {dst}"

    with building_run(out, "cnn", config_fingerprint="k", replace=True) as run:
        (run.work / "card.json").write_text(json.dumps({"tag": "new"}))
        monkeypatch.setattr(os, "rename", rename)
        run.commit()
    assert os.listdir(out) == ["cnn"] and json.loads((out / "cnn" / "card.json").read_text()) == {"tag": "new"}


@pytest.mark.parametrize("new_finished", [True, False])
def test_overwrite_killed_between_its_renames_is_recovered(tmp_path, tiny_models, new_finished):
    """Both folders hidden: the next score (or train) puts the right one back in view."""
    from mura_ens.run_folder import recover_replaced_runs
    from mura_ens.scoring.models import find_model_files

    out = tmp_path / "runs"
    pid = _dead_pid()
    old = _finished_run(out / f".cnn.replaced.partial-{pid}", "old")
    shutil.copy(tiny_models["gen_a"], old / "model.onnx")
    if new_finished:  # the new run was committed (card.json is written before the renames) ...
        new = _finished_run(out / f".cnn.partial-{pid}", "new")
        shutil.copy(tiny_models["gen_a"], new / "model.onnx")
        (new / ".mura-ens-partial.json").write_text(json.dumps({"pid": pid}))
        (new / "history.tsv").write_text("epoch\tloss\n")
    # ... or it is gone (deleted by hand, or by its own cleanup): the old run comes back
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout):
        found = find_model_files(out)
    assert list(found.files) == [out / "cnn" / "model.onnx"] and not found.unfinished
    assert json.loads((out / "cnn" / "card.json").read_text())["tag"] == ("new" if new_finished else "old")
    assert ("finished the --overwrite" if new_finished else "put back cnn") in stdout.getvalue()
    assert not (out / old.name).exists() and recover_replaced_runs(out) == []


def test_the_two_rename_fallback_keeps_a_recoverable_state(tmp_path, monkeypatch):
    from mura_ens.run_folder import recover_replaced_runs
    from mura_ens.training import atomic_run

    out = tmp_path / "runs"
    _finished_run(out / "cnn", "old")
    monkeypatch.setattr(atomic_run, "exchange_folders", lambda a, b: False)
    real_rename, calls = os.rename, [0]

    class Killed(BaseException):
        pass

    def rename(src, dst):
        calls[0] += 1
        if calls[0] == 2:  # killed between the two renames
            raise Killed
        return real_rename(src, dst)

    with pytest.raises(Killed):
        with atomic_run.building_run(out, "cnn", config_fingerprint="k", replace=True) as run:
            (run.work / "card.json").write_text(json.dumps({"tag": "new"}))
            monkeypatch.setattr(os, "rename", rename)
            run.commit()
    monkeypatch.setattr(os, "rename", real_rename)
    # building_run's cleanup deleted the unfinished work folder; a real kill would not have: both cases recover
    assert not (out / "cnn").exists()
    monkeypatch.setattr("mura_ens.run_folder._alive_here", lambda entry, pid: False)
    assert recover_replaced_runs(out) == ["put back cnn: its --overwrite was stopped before the new run was in place"]
    assert json.loads((out / "cnn" / "card.json").read_text()) == {"tag": "old"}


# ------------------------------------------------------------------------------------------ 7. SIGTERM


def test_sigterm_during_score_is_handled_like_ctrl_c(tmp_path, tiny_models):
    data = tmp_path / "data"
    make_tree(data, [("XR_HAND", 1, 2)] * 12, seed=4)
    out = tmp_path / "out"
    command = [sys.executable, str(TESTS / "slow_batches.py"), "0.3", "score", str(data)]
    command += ["--model", str(tiny_models["gen_a"]), "--out", str(out), "--batch-size", "2", "--workers", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while len(journal_lines(out)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        f"mura-ens: interrupted (SIGTERM): finished batches are journalled in {out}; rerun with --resume to continue"
    )
    assert not (out / ".mura-ens.lock").exists() and len(journal_lines(out)) >= 2
    code, err = run_cli(["score", data, "--model", tiny_models["gen_a"], "--out", out, "--resume"])
    assert code == 0 and "images already scored" in err, err


def test_sigterm_during_train_deletes_the_unfinished_run(tmp_path, monkeypatch):
    from mura_ens.training import trainer
    from mura_ens.training.atomic_run import building_run

    out = tmp_path / "runs"

    def train(plugin, data, out_dir, options):
        with building_run(Path(out_dir), "cnn", config_fingerprint="k") as run:
            (run.work / "best.keras").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        return []

    monkeypatch.setattr(trainer, "train", train)
    code, err = run_cli(["train", "--plugin", "custom_cnn", "--data", tmp_path, "--out", out])
    assert code == 130 and err.count("\n") == 1, err
    assert err.startswith("mura-ens: interrupted (SIGTERM): the unfinished run was deleted") and f"in {out}" in err
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI put the default handler back


# ------------------------------------------------------------------------------------------ 8. smaller


def test_a_bad_run_name_is_refused_before_the_scan_and_before_out_is_made(tmp_path):
    out = tmp_path / "made" / "runs"
    missing_data = tmp_path / "no-such-data"
    code, err = run_cli(["train", "--plugin", "custom_cnn", "--data", missing_data, "--out", out, "--name", "../evil"])
    assert code == 2 and "bad run name '../evil'" in err and err.count("\n") == 1, err
    assert not (tmp_path / "made").exists()


def test_api_arguments_of_the_wrong_type_are_one_usage_error(tmp_path, tiny_models):
    import mura_ens

    model = tiny_models["gen_a"]
    cases = [
        (
            dict(models=[str(model)]),
            r"models must be a path \(str or os.PathLike\) or None, got list .*model=\[\.\.\.\]",
        ),
        (dict(model=b"model.onnx"), r"model must be a path \(str or os.PathLike\) or a list of paths, got bytes"),
        (dict(model=[model, 5]), r"model must be .* holding a int"),
        (
            dict(model=model, providers=5),
            r"providers must be a name, a comma list or a list of names \(str\).* got int",
        ),
    ]
    for kwargs, expected in cases:
        with pytest.raises(UsageError, match=expected):
            mura_ens.score(tmp_path, tmp_path / "out", **kwargs)
    with pytest.raises(UsageError, match="scored_dir must be a path"):
        mura_ens.fit_ensemble(3)
    assert not (tmp_path / "out").exists()


def test_load_run_on_a_garbage_history_says_so(run_dir):
    import mura_ens

    (run_dir / "history.tsv").write_bytes(b"\x00\x01garbage\nnot a history at all\n")
    with pytest.raises(UsageError, match=r"history.tsv is not a training history \(no epoch column"):
        mura_ens.load_run(run_dir)
    (run_dir / "history.tsv").write_text("epoch\tloss\n1\tabc\n")
    with pytest.raises(UsageError, match="is not a training history"):
        mura_ens.load_run(run_dir)
    (run_dir / "history.tsv").write_text("epoch\tloss\n1\t0.5\n")
    assert len(mura_ens.load_run(run_dir).history) == 1
