"""Property-based tests of scoring (Hypothesis): random trees of good images and every kind of bad file
and name, random manifests; the contract's invariants hold on each.

Invariants: the run ends normally (exit 0); every file (and symlinked folder) of the input is exactly
one row of ``images.csv`` with the status its kind implies (``manifest``: exactly one row across
``manifest.csv``/``skipped.csv``); every study is one row of ``studies.csv``; ``metrics.json`` equals
scikit-learn on the scored, labelled rows; stopping the run at a random point (after N batches, or
while it writes its outputs) and ``--resume`` give the uninterrupted run's files byte for byte (plus
one real ``kill -9`` of a subprocess). The report is stubbed here (tests/test_hardening_scoring.py
renders it with such names): it is most of a run's time.

The Hypothesis profile (tests/conftest.py, ``ci``: 50 examples per test, no deadline, derandomized)
keeps this file to about a minute on two cores (45 s here); ``HYPOTHESIS_PROFILE=dev`` runs more examples.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scoring_fixtures import interrupt_after, kill_9_once_journalled
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score
from test_hardening_scoring import bpath, png_claiming

from mura_ens.cli.main import main
from mura_ens.constants import BODY_PARTS
from mura_ens.data.layout import skip_reason
from mura_ens.scoring import journal as journal_module
from mura_ens.scoring.score import ScoreSettings, score

SLOW_BATCHES = Path(__file__).parent / "slow_batches.py"
OUTPUTS = ("images.csv", "studies.csv", "metrics.json")
pytestmark = pytest.mark.filterwarnings("ignore::mura_ens.metrics.UndefinedMetricWarning")

#: File kinds in a study folder -> the status the row must get (None: scored, or no model for its part).
KINDS: dict[str, str | None] = {
    "gray": None,
    "rgb": None,
    "rgba": None,
    "gray16": None,
    "zero_byte": "empty_file",
    "truncated": "truncated",
    "text": "not_an_image",
    "huge_empty": "too_large",
    "dangling": "unreadable",
    "fifo": "unreadable",
    "appledouble": "appledouble",
    "hidden": "hidden",
    "txt": "not_an_image_suffix",
}
#: What a name may carry besides its number: nothing, bytes that are not UTF-8, accents, a space.
NAME_BITS = (b"", b"\xff", b"\xfe\xfd", "é".encode(), b" x")
PARTS = (*BODY_PARTS, "XR_KNEE")


@dataclass
class Study:
    part: str
    label: int | None
    split: str
    patient_bits: bytes
    files: list[tuple[str, bytes]]


@dataclass
class Spec:
    studies: list[Study]
    flat: list[tuple[str, bytes]]
    folder_link: bool


@dataclass
class Tree:
    """A written tree: its root and, per file (bytes path), the status its kind implies."""

    root: Path
    expected: dict[bytes, str | None] = field(default_factory=dict)
    part_of: dict[bytes, str] = field(default_factory=dict)


@st.composite
def specs(draw) -> Spec:
    studies = []
    for k in range(draw(st.integers(1, 5))):
        files = draw(st.lists(st.tuples(st.sampled_from(sorted(KINDS)), st.sampled_from(NAME_BITS)), max_size=4))
        if k == 0:
            files.insert(0, ("gray", draw(st.sampled_from(NAME_BITS))))  # the input holds at least one image
        studies.append(
            Study(
                part=draw(st.sampled_from(PARTS)),
                label=draw(st.sampled_from([0, 1, None])),
                split=draw(st.sampled_from(["valid", "train"])),
                patient_bits=draw(st.sampled_from(NAME_BITS)),
                files=files,
            )
        )
    flat = draw(st.lists(st.tuples(st.sampled_from(["gray", "text", "txt"]), st.sampled_from(NAME_BITS)), max_size=2))
    return Spec(studies=studies, flat=flat, folder_link=draw(st.booleans()))


def _pixels(kind: str, rng: np.random.Generator) -> Image.Image:
    h, w = int(rng.integers(6, 20)), int(rng.integers(6, 20))
    if kind == "gray16":
        return Image.fromarray(rng.integers(0, 4096, size=(h, w)).astype(np.uint16))
    bands = {"gray": (h, w), "rgb": (h, w, 3), "rgba": (h, w, 4)}[kind]
    return Image.fromarray(rng.integers(0, 256, size=bands, dtype=np.uint8))


def _write(path: Path, kind: str, rng: np.random.Generator) -> None:
    """One file of ``kind`` at ``path`` (see :data:`KINDS`)."""
    if kind in ("gray", "rgb", "rgba", "gray16", "truncated"):
        _pixels("rgb" if kind == "truncated" else kind, rng).save(path, format="PNG")
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "zero_byte":
        path.write_bytes(b"")
    elif kind in ("text", "txt"):
        path.write_text("this is text, not pixels\n")
    elif kind == "huge_empty":  # header says 8000 x 8000 RGBA (793 MiB to decode), one pixel of data
        png_claiming(path, 8000, 8000, "RGBA")
    elif kind == "dangling":
        os.symlink(path.parent / "nowhere.png", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "appledouble":
        path.write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    elif kind == "hidden":
        _pixels("gray", rng).save(path, format="PNG")


def _file_name(kind: str, number: int, bits: bytes) -> bytes:
    stem = f"image{number}".encode() + bits
    if kind == "appledouble":
        return b"._" + stem + b".png"
    if kind == "hidden":
        return b"." + stem + b".png"
    return stem + (b".txt" if kind == "txt" else b".png")


def build_tree(root: Path, spec: Spec, seed: int = 0) -> Tree:
    """Write ``spec`` under ``root`` (MURA layout); return what each file's row must say."""
    rng = np.random.default_rng(seed)
    tree = Tree(root=root / "MURA-v1.1")
    for k, study in enumerate(spec.studies):
        suffix = {1: "_positive", 0: "_negative", None: ""}[study.label]
        patient = f"patient{11000 + k:05d}".encode() + study.patient_bits
        folder = bpath(tree.root, study.split, study.part, patient, f"study1{suffix}")
        folder.mkdir(parents=True)
        for number, (kind, bits) in enumerate(study.files, start=1):
            path = bpath(folder, _file_name(kind, number, bits))
            _write(path, kind, rng)
            tree.expected[os.fsencode(path)] = KINDS[kind]
            tree.part_of[os.fsencode(path)] = study.part
    for number, (kind, bits) in enumerate(spec.flat, start=1):
        path = bpath(tree.root, "valid", _file_name(kind, 90 + number, bits))
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, kind, rng)
        tree.expected[os.fsencode(path)] = "not_an_image_suffix" if kind == "txt" else "outside_study_folder"
    if spec.folder_link:  # a symlink to a folder of the tree: listed, not followed
        link = tree.root / "valid" / "XR_LINK"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(tree.root, link)
        tree.expected[os.fsencode(link)] = "symlinked_folder"
    return tree


def read_output(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, dtype=str, keep_default_na=False, encoding_errors="surrogateescape")


@contextlib.contextmanager
def report_stubbed():
    """Replace the HTML report (matplotlib figures: most of a run's time) by a one-line file."""
    from mura_ens import report

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "write_report", lambda out_path, **_: Path(out_path).write_text("stub") and out_path)
        yield


# ---------------------------------------------------------------------------------------------
# invariants
# ---------------------------------------------------------------------------------------------


def check_every_file_once(tree: Tree, out: Path, served: set[str]) -> None:
    """Each file (and symlinked folder) is one row with the status its kind implies; empty studies are folders."""
    images = read_output(out, "images.csv")
    folders = images["status"] == "empty_study"
    rows = [os.fsencode(p) for p in images.loc[~folders, "path"]]
    assert len(rows) == len(set(rows)), "a file is listed twice"
    assert set(rows) == set(tree.expected), "files missing from, or foreign to, images.csv"
    status = dict(zip(rows, images.loc[~folders, "status"]))
    for path, expected in tree.expected.items():
        if expected is None or (expected in ("empty_file", "truncated", "not_an_image", "too_large", "unreadable")):
            part = tree.part_of[path]
            if part not in served and not ({"*"} & served):
                expected = "no_model_for_body_part"  # never opened: no model would use it
            elif expected is None:
                expected = "ok"
        assert status[path] == expected, (path, status[path], expected)
    for folder in images.loc[folders, "path"]:
        assert os.path.isdir(folder) and all(skip_reason(n) is not None for n in os.listdir(folder))


def check_every_study_once(out: Path) -> pd.DataFrame:
    images, studies = read_output(out, "images.csv"), read_output(out, "studies.csv")
    assert studies["study"].is_unique
    assert set(studies["study"]) == set(images.loc[images["study"] != "", "study"])
    return studies


def _close(value, expected) -> bool:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return value is None
    return value is not None and abs(value - expected) < 1e-12


def check_metrics_equal_sklearn(out: Path, studies: pd.DataFrame) -> None:
    """``metrics.json`` (study and image level, overall and per part) against scikit-learn on the scored, labelled rows."""
    import json

    images = read_output(out, "images.csv")
    levels = {
        "study": studies.loc[(studies["prob"] != "") & (studies["label"] != "")],
        "image": images.loc[(images["status"] == "ok") & (images["label"] != "")],
    }
    if levels["study"].empty:
        assert not (out / "metrics.json").exists() or levels["image"].empty
        return
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for level, rows in levels.items():
        groups = {"overall": rows} | {part or "unknown": g for part, g in rows.groupby("body_part")}
        for name, group in groups.items():
            got = metrics[level]["overall"] if name == "overall" else metrics[level]["by_body_part"][name]
            _check_group(got, group, metrics["threshold"], f"{level} {name}")


def _check_group(got: dict, group: pd.DataFrame, threshold: float, name: str) -> None:
    import warnings

    y = group["label"].astype(int).to_numpy()
    prob = group["prob"].astype(float).to_numpy()
    pred = (prob > threshold).astype(int)
    assert got["n"] == len(group), name
    assert _close(got["accuracy"], accuracy_score(y, pred)), name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(y, pred) if len(set(y) | set(pred)) > 1 else None
    assert _close(got["kappa"], kappa), (name, got["kappa"], kappa)
    auc = roc_auc_score(y, prob) if len(set(y)) == 2 else None
    assert _close(got["auc"], auc), (name, got["auc"], auc)


# ---------------------------------------------------------------------------------------------
# the properties
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_after(n_batches: int | None, *, while_writing: bool = False):
    """Stop the run like a kill after its n-th journalled batch, or while it writes studies.csv."""
    import mura_ens.scoring.score as score_module

    with pytest.MonkeyPatch.context() as patch:
        if n_batches is not None:
            interrupt_after(patch, n_batches)
        if while_writing:
            real_csv = score_module.atomic_write_csv

            def write_csv(path, frame):
                if Path(path).name == "studies.csv":
                    raise KeyboardInterrupt
                return real_csv(path, frame)

            patch.setattr(score_module, "atomic_write_csv", write_csv)
        yield


@given(
    spec=specs(),
    models=st.sampled_from([("gen_a",), ("gen_a", "spec_hand"), ("spec_hand",)]),
    batch_size=st.integers(1, 3),
    stop=st.one_of(st.integers(1, 6), st.just("while_writing")),
)
def test_random_trees_keep_every_invariant_and_resume_to_the_same_files(tiny_models, spec, models, batch_size, stop):
    files = [str(tiny_models[name]) for name in models]
    served = {"*"} if "gen_a" in models else {"XR_HAND"}
    with tempfile.TemporaryDirectory() as tmp, report_stubbed():
        tmp = Path(tmp)
        tree = build_tree(tmp / "data", spec)
        argv = ["score", str(tree.root), "--out", str(tmp / "ref"), "--batch-size", str(batch_size), "--no-progress"]
        argv += [arg for f in files for arg in ("--model", f)]
        assert main(argv) == 0
        check_every_file_once(tree, tmp / "ref", served)
        check_metrics_equal_sklearn(tmp / "ref", check_every_study_once(tmp / "ref"))

        settings = ScoreSettings(batch_size=batch_size)
        with stop_after(None if stop == "while_writing" else stop, while_writing=stop == "while_writing"):
            with contextlib.suppress(KeyboardInterrupt):  # a short run may end before the N-th batch
                score(tree.root, model_files=files, out=tmp / "out", settings=settings, progress=False)
        resumed = ScoreSettings(batch_size=batch_size, resume=True)
        score(tree.root, model_files=files, out=tmp / "out", settings=resumed, progress=False)
        for name in OUTPUTS:
            ref, got = tmp / "ref" / name, tmp / "out" / name
            assert ref.exists() == got.exists(), name
            assert not ref.exists() or ref.read_bytes() == got.read_bytes(), name
        assert not (tmp / "out" / journal_module.JOURNAL_DIR).exists()


@st.composite
def manifest_rows(draw, tree: Tree) -> list[dict]:
    """A valid manifest over some of ``tree``'s files (and some that do not exist), relative or absolute."""
    candidates = sorted(p for p, expected in tree.expected.items() if expected != "symlinked_folder")
    chosen = draw(st.lists(st.sampled_from(candidates), unique=True, min_size=1, max_size=len(candidates)))
    chosen += [os.path.join(os.fsencode(tree.root), b"gone%d\xff.png" % k) for k in range(draw(st.integers(0, 2)))]
    n_studies = draw(st.integers(1, 3))
    study_info = [
        {"study": f"s{k}\u00e9", "patient": f"p{k}", "body_part": draw(st.sampled_from(("", *BODY_PARTS[:3])))}
        | {"label": draw(st.sampled_from(["", "0", "1"]))}
        for k in range(n_studies)
    ]
    rows = []
    for path in chosen:
        absolute = draw(st.booleans())
        shown = path if absolute else os.path.relpath(path, os.fsencode(tree.root.parent))
        rows.append({"path": os.fsdecode(shown)} | study_info[draw(st.integers(0, n_studies - 1))])
    return rows


@given(spec=specs(), data=st.data())
def test_random_manifests_and_the_manifest_command_account_for_every_row(tiny_models, spec, data):
    with tempfile.TemporaryDirectory() as tmp, report_stubbed():
        tmp = Path(tmp)
        tree = build_tree(tmp / "data", spec)
        # the manifest command: every file once across manifest.csv and skipped.csv; it reads back and scores
        written = tmp / "m" / "manifest.csv"
        assert main(["manifest", str(tree.root), "-o", str(written)]) == 0
        listed = [
            os.fsencode(p)
            for name in ("manifest.csv", "skipped.csv")
            for p in read_output(written.parent, name)["path"]
        ]
        folders = {p for p in listed if os.path.isdir(p) and not os.path.islink(p)}  # empty study folders
        assert len(listed) == len(set(listed)) and set(listed) - folders == set(tree.expected)
        score(written, model_files=[str(tiny_models["gen_a"])], out=tmp / "o1", progress=False)
        assert len(read_output(tmp / "o1", "images.csv")) == len(read_output(written.parent, "manifest.csv"))

        rows = data.draw(manifest_rows(tree))
        frame = pd.DataFrame(rows, columns=["path", "study", "patient", "body_part", "label"])
        manifest = tmp / "data" / "random.csv"
        with open(manifest, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
            frame.to_csv(fh, index=False)
        score(manifest, model_files=[str(tiny_models["gen_a"])], out=tmp / "o2", progress=False)
        images = read_output(tmp / "o2", "images.csv")
        expected_paths = sorted(os.path.normpath(os.path.join(tmp / "data", p)) for p in frame["path"])
        assert sorted(images["path"]) == expected_paths  # every row once, absolute
        status = dict(zip(images["path"], images["status"]))
        for path in expected_paths:
            if not os.path.lexists(path):
                assert status[path] == "unreadable"
            elif os.fsencode(path) in tree.expected and tree.expected[os.fsencode(path)] is None:
                assert status[path] == "ok"
        check_metrics_equal_sklearn(tmp / "o2", check_every_study_once(tmp / "o2"))


#: A fixed hostile tree for the real kill -9: every kind of file, names that are not UTF-8.
KILL_SPEC = Spec(
    studies=[
        Study("XR_HAND", 1, "valid", b"\xff", [("gray", b""), ("rgb", b"\xfe\xfd"), ("fifo", b""), ("txt", b"\xff")]),
        Study("XR_WRIST", 0, "valid", b"", [("gray16", b"\xff"), ("truncated", b""), ("dangling", b"")]),
        Study("XR_KNEE", 1, "valid", b" x", [("rgba", b""), ("huge_empty", b"\xff"), ("appledouble", b"")]),
        Study("XR_ELBOW", 0, "train", b"", [("gray", "é".encode()), ("zero_byte", b""), ("text", b"")]),
        Study("XR_HAND", 0, "valid", b"", [("gray", b""), ("hidden", b"")]),
        Study("XR_SHOULDER", 1, "valid", b"\xfe\xfd", [("gray", b""), ("gray", b"\xff")]),
        Study("XR_FINGER", None, "valid", b"", []),
    ],
    flat=[("gray", b"\xff"), ("txt", b"")],
    folder_link=True,
)


def test_kill_9_of_a_real_run_on_a_hostile_tree_then_resume_gives_the_same_files(tiny_models, tmp_path):
    tree = build_tree(tmp_path / "data", KILL_SPEC)
    model = str(tiny_models["gen_a"])
    reference = tmp_path / "reference"
    score(tree.root, model_files=[model], out=reference, settings=ScoreSettings(batch_size=1), progress=False)
    out = tmp_path / "out"
    command = [sys.executable, str(SLOW_BATCHES), "0.3", "score", str(tree.root), "--model", model]
    command += ["--out", str(out), "--batch-size", "1", "--no-progress"]
    kill_9_once_journalled(command, out, 2)
    assert not (out / "images.csv").exists()
    argv = ["score", str(tree.root), "--model", model, "--out", str(out), "--batch-size", "1", "--resume"]
    assert main([*argv, "--no-progress"]) == 0
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    check_every_file_once(tree, out, {"*"})


# --------------------------------------------------------------------------------------- issue 23: outputs and ids


def _spellings(target: Path, base: Path, how: str) -> Path:
    """``target`` spelled another way: as it is, through a symlink, through ``sub/..``, or relative to ``base``."""
    if how == "symlink":
        link = base / f"link-{target.name}"
        if not link.exists():
            link.symlink_to(target, target_is_directory=target.is_dir())
        return link
    if how == "dotdot":
        (target.parent / "sub").mkdir(exist_ok=True)
        return target.parent / "sub" / ".." / target.name
    if how == "relative":
        return Path(os.path.relpath(target, Path.cwd()))
    return target


def _inputs_of(command: str, tmp: Path, synth_root: Path, model: str) -> tuple[list[str], list[Path], str]:
    """The command line of ``command`` (with OUT for its output) and the paths it reads."""
    scored = tmp / "S"
    scored.mkdir(exist_ok=True)
    (scored / "studies.csv").write_text("study,label\n")
    (scored / "models.json").write_text("{}")
    table = {
        "manifest": (["manifest", str(synth_root), "-o", "OUT"], [synth_root / "valid_image_paths.csv"]),
        "fit-ensemble": (
            ["fit-ensemble", str(scored), "--out", "OUT"],
            [scored / "studies.csv", scored / "models.json"],
        ),
        "score": (["score", str(synth_root / "valid"), "--model", model, "--out", "OUT"], [synth_root / "valid"]),
        "score-manifest": (["score", str(scored / "studies.csv"), "--model", model, "--out", "OUT"], [scored]),
        "train": (["train", "--plugin", "custom_cnn", "--data", str(synth_root), "--out", "OUT"], [synth_root]),
        "compare": (["compare", str(scored), "-o", "OUT"], [scored]),
    }
    argv, inputs = table[command]
    return argv, inputs, "choose another path"


@given(
    command=st.sampled_from(["manifest", "fit-ensemble", "score", "score-manifest", "train", "compare"]),
    pick=st.integers(0, 5),
    how=st.sampled_from(["plain", "symlink", "dotdot", "relative"]),
)
@settings(max_examples=12)
def test_an_output_path_that_is_one_of_the_inputs_is_refused(synth_small, tiny_models, command, pick, how):
    """Issue 23: for every command, an output that is (or resolves to) an input it reads: one line, exit 2."""
    root = Path(synth_small["root"])
    before = {p: p.stat().st_mtime_ns for p in root.iterdir()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        argv, inputs, expected = _inputs_of(command, tmp, root, str(tiny_models["gen_a"]))
        target = inputs[pick % len(inputs)]
        out = _spellings(target, tmp, how)
        snapshot = target.read_bytes() if target.is_file() else None
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main([str(out) if a == "OUT" else a for a in argv])
        assert code == 2 and err.getvalue().count("\n") == 1 and expected in err.getvalue(), (argv, out, err.getvalue())
        assert snapshot is None or target.read_bytes() == snapshot
    with contextlib.suppress(FileNotFoundError):  # links made in the shared tree's folder: none (tmp only)
        assert {p: p.stat().st_mtime_ns for p in root.iterdir()} == before


@given(kill_at=st.integers(1, 40))
@settings(max_examples=2)
def test_a_random_kill_point_of_a_pseudonymized_explain_run_leaves_no_raw_identifier(kill_at):
    """Issue 23: killed at a random write (a journal line, a table, a heatmap, a rename), the output tree holds no
    raw patient id, study UID, training-data path or absolute path, in any byte or file name (tests/
    test_hardening_round3.py also scans at every write of a whole run, and after a kill right after heatmaps/)."""
    from test_hardening_round3 import run_pseudonymized_explain

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        events, _ = run_pseudonymized_explain(Path(tmp), patch, kill_at=kill_at)  # checked at each write, then killed
    assert events == kill_at or events < kill_at  # killed there, or the run had fewer writes
