"""`mura-ens score --explain K`: which studies get heatmaps, the overlay PNGs, heatmaps/index.csv, the report gallery.

No TensorFlow: the models with an explain artifact come from ``onnx_graphs.make_explain_run`` (tiny CAM
models), the model without one from ``make_tiny_models``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from onnx_graphs import make_explain_run
from PIL import Image
from scoring_fixtures import ENSEMBLE_LAYOUT, interrupt_after, make_tree, read_studies, tiny

from mura_ens.api import score
from mura_ens.cli.main import main
from mura_ens.errors import UsageError
from mura_ens.scoring.explain_select import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    HIGHEST,
    member_weights,
    select_studies,
)
from mura_ens.scoring.heatmaps import SafeNames
from mura_ens.scoring.overlay import DISPLAY_SIZE, display_size, heatmap_on_image, overlay
from mura_ens.scoring.score import ScoreSettings

K = 3
#: Between the ensemble's study probabilities of this tree and these models, so that there are
#: true and false positives and negatives (checked in test_selected_studies_and_reasons_in_index).
THRESHOLD = 0.555


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``mura-ens ARGS`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    """A labelled tree, two models that explain (input 32 and 48) and one that cannot ("plain")."""
    root = tmp_path_factory.mktemp("explain")
    tree = make_tree(root / "data", ENSEMBLE_LAYOUT)
    models = root / "models"
    make_explain_run(models / "explain_a", input_size=32)
    make_explain_run(models / "explain_b", input_size=48)
    tiny.make_tiny_model(models / "plain" / "model.onnx", a=-3.0, b=1.25, input_size=40, model_name="plain")
    return SimpleNamespace(root=root, tree=tree, models=models)


def score_labelled(setup: SimpleNamespace, out: Path, **options):
    """``mura_ens.score`` of the labelled tree (no bootstrap intervals: not what is tested here, and slow)."""
    return score(setup.tree, out, models=setup.models, threshold=THRESHOLD, bootstrap=0, batch_size=4, **options)


def read_index(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "heatmaps" / "index.csv", dtype={"label": "Int64", "pred": "Int64"})


@pytest.fixture(scope="module")
def explained(setup) -> SimpleNamespace:
    out = setup.root / "out"
    result = score_labelled(setup, out, explain=K, progress=False)
    return SimpleNamespace(out=out, result=result, studies=read_studies(out), index=read_index(out))


def expected_groups(studies: pd.DataFrame, k: int) -> dict[str, list[str]]:
    """The three groups, straight from studies.csv with pandas."""
    ok = studies.loc[studies["status"] == "ok"]
    false_pos = ok.loc[(ok["label"] == 0) & (ok["pred"] == 1)]
    false_neg = ok.loc[(ok["label"] == 1) & (ok["pred"] == 0)]
    return {
        HIGHEST: ok.sort_values("prob", ascending=False, kind="stable")["study"].head(k).tolist(),
        FALSE_POSITIVE: false_pos.sort_values("prob", ascending=False, kind="stable")["study"].head(k).tolist(),
        FALSE_NEGATIVE: false_neg.sort_values("prob", kind="stable")["study"].head(k).tolist(),
    }


# ------------------------------------------------------------------------------------------ selection


def studies_frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["study", "label", "prob", "pred", "status"])
    frame["body_part"] = "XR_HAND"
    frame["label"] = frame["label"].astype("Int64")
    frame["pred"] = frame["pred"].astype("Int64")
    return frame


def test_selection_top_k_worst_false_positives_and_negatives():
    studies = studies_frame(
        [
            ("tp_high", 1, 0.95, 1, "ok"),
            ("fp_high", 0, 0.90, 1, "ok"),
            ("fp_mid", 0, 0.70, 1, "ok"),
            ("fp_low", 0, 0.60, 1, "ok"),
            ("fn_low", 1, 0.05, 0, "ok"),
            ("fn_mid", 1, 0.20, 0, "ok"),
            ("fn_high", 1, 0.45, 0, "ok"),
            ("tn", 0, 0.10, 0, "ok"),
            ("failed", 0, None, None, "all_images_failed"),
            ("tie_b", pd.NA, 0.95, 1, "ok"),  # same probability as tp_high, later in the table
        ]
    )
    chosen = {s.study: s.reasons for s in select_studies(studies, 2)}
    assert chosen == {
        "tp_high": (HIGHEST,),
        "tie_b": (HIGHEST,),
        "fp_high": (FALSE_POSITIVE,),
        "fp_mid": (FALSE_POSITIVE,),
        "fn_low": (FALSE_NEGATIVE,),
        "fn_mid": (FALSE_NEGATIVE,),
    }
    assert [s.study for s in select_studies(studies, 2)][:2] == ["tp_high", "tie_b"]  # ties keep table order
    three = {s.study: s.reasons for s in select_studies(studies, 3)}
    assert three["fp_high"] == (HIGHEST, FALSE_POSITIVE)  # in two groups: once, both reasons
    assert "failed" not in three and three["fn_high"] == (FALSE_NEGATIVE,)
    assert select_studies(studies, 0) == []


def test_selection_without_labels_is_the_top_k_only():
    studies = studies_frame([(f"s{i}", pd.NA, p, int(p > 0.5), "ok") for i, p in enumerate([0.2, 0.9, 0.6, 0.1])])
    chosen = select_studies(studies, 2)
    assert [(s.study, s.reasons) for s in chosen] == [("s1", (HIGHEST,)), ("s2", (HIGHEST,))]
    assert len(select_studies(studies, 10)) == 4


def test_member_weights_follow_the_ensemble():
    spec = SimpleNamespace
    models = [
        spec(name="gen", is_generalist=True, serves=lambda part: True),
        spec(name="gen2", is_generalist=True, serves=lambda part: True),
        spec(name="hand", is_generalist=False, serves=lambda part: part == "XR_HAND"),
    ]
    every = {"gen", "gen2", "hand"}
    assert member_weights("body_part", models, "XR_HAND", explainable=every) == pytest.approx(
        {"gen": 1 / 3, "gen2": 1 / 3, "hand": 1 / 3}
    )
    assert member_weights("mean", models, "XR_HAND", explainable=every) == {"gen": 0.5, "gen2": 0.5}
    assert member_weights("body_part", models, "XR_WRIST", explainable={"hand"}) == {}
    fitted = SimpleNamespace(
        parts={
            "XR_HAND": SimpleNamespace(status="fitted", weights={"gen": 0.6, "gen2": 0.0, "hand": 0.4}),
            "XR_WRIST": SimpleNamespace(status="plain_mean", weights={"gen": 0.9, "gen2": 0.1}),
        }
    )
    weights = member_weights("fitted", models, "XR_HAND", explainable=every, fitted=fitted)
    assert weights == pytest.approx({"gen": 0.6, "gen2": 0.0, "hand": 0.4})
    # a member that cannot explain is left out and the rest renormalised
    assert member_weights("fitted", models, "XR_HAND", explainable={"gen", "hand"}, fitted=fitted) == pytest.approx(
        {"gen": 0.6, "hand": 0.4}
    )
    assert member_weights("fitted", models, "XR_HAND", explainable={"gen2"}, fitted=fitted) == {"gen2": 1.0}
    assert member_weights("fitted", models, "XR_WRIST", explainable=every, fitted=fitted) == {"gen": 0.5, "gen2": 0.5}


def test_safe_names_are_unique_and_portable():
    names = SafeNames()
    first = names.name("valid/XR_WRIST/patient11185/study1")
    assert first == "valid_XR_WRIST_patient11185_study1"
    assert names.name("valid_XR_WRIST_patient11185_study1") != first  # same safe form: hashed
    assert names.name("VALID/xr_wrist/patient11185/study1").lower() != first.lower()  # case-insensitive file systems
    odd = names.name("../ä b\udcff/" + "x" * 300)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", odd) and len(odd) <= 100 and not odd.startswith(".")


def test_heatmap_lands_on_the_image_for_both_resize_policies():
    heat = np.zeros((8, 8), np.float32)
    heat[:, 6:] = 1.0  # hot on the right quarter of the model's input square
    stretched = heatmap_on_image(heat, image_size=(100, 50), input_size=32, policy="stretch", out_size=(200, 100))
    assert stretched.shape == (100, 200) and stretched[:, :125].max() < 0.01 and stretched[:, 175:].min() > 0.99
    # pad: a 100x50 image fills the middle band of the square (rows 8..24 of 32); only that band is the image
    banded = np.zeros((8, 8), np.float32)
    banded[:2] = 1.0  # the padding above the image: must not show
    banded[3:5] = 0.5
    padded = heatmap_on_image(banded, image_size=(100, 50), input_size=32, policy="pad", out_size=(200, 100))
    assert padded.max() < 0.6 and padded[50, 100] == pytest.approx(0.5, abs=1e-3)
    assert display_size(20, 40) == (DISPLAY_SIZE // 2, DISPLAY_SIZE)
    radiograph = Image.new("RGB", (4, 2), (90, 90, 90))
    blended = np.asarray(overlay(radiograph, np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.float32)))
    assert (blended[:, :2] == 90).all() and (blended[:, 2:] != 90).any()  # cold: unchanged; hot: coloured


def test_explain_must_be_a_count():
    with pytest.raises(UsageError, match="--explain"):
        ScoreSettings(explain=-1)
    assert ScoreSettings(explain=3).explain == 3


# ------------------------------------------------------------------------------------------ the CLI run


def test_selected_studies_and_reasons_in_index(explained):
    groups = expected_groups(explained.studies, K)
    assert groups[FALSE_POSITIVE] and groups[FALSE_NEGATIVE]  # the threshold makes both kinds of error
    expected: dict[str, list[str]] = {}
    for reason, keys in groups.items():
        for key in keys:
            expected.setdefault(key, []).append(reason)
    assert any(len(reasons) > 1 for reasons in expected.values())  # a study in two groups is listed once
    index = explained.index
    by_study = index.groupby("study", sort=False)["reasons"].agg(lambda r: set(r))
    assert {study: reasons.pop().split(";") for study, reasons in by_study.items()} == expected
    # one row per image of each selected study, with the study's numbers as in studies.csv
    images = pd.read_csv(explained.out / "images.csv")
    selected_images = images.loc[images["study"].isin(list(expected))]
    assert sorted(index["image"]) == sorted(selected_images["path"])
    studies = explained.studies.set_index("study")
    for row in index.itertuples():
        assert row.prob == pytest.approx(studies.at[row.study, "prob"])
        assert row.label == studies.at[row.study, "label"] and row.pred == studies.at[row.study, "pred"]
        assert row.prob__explain_a == pytest.approx(studies.at[row.study, "prob__explain_a"])


def test_one_png_per_image_at_display_size(explained):
    index = explained.index
    assert (index["status"] == "ok").all()
    pngs = sorted((explained.out / "heatmaps").rglob("*.png"))
    assert len(pngs) == len(index) and sorted(str(explained.out / p) for p in index["png"]) == [str(p) for p in pngs]
    for row in index.itertuples():
        with Image.open(row.image) as source, Image.open(explained.out / row.png) as png:
            assert png.mode == "RGB" and png.size == display_size(*source.size)
            assert max(png.size) == DISPLAY_SIZE
        assert Path(row.png).parent.name == row.study.replace("/", "_")


def test_model_without_artifact_is_named_once_and_left_out(explained):
    notes = [note for note in explained.result.notes if "plain cannot explain" in note]
    assert len(notes) == 1 and "explain.json" in notes[0], explained.result.notes
    assert (explained.index["cannot_explain"] == "plain").all()
    assert (explained.index["heatmap_models"] == "explain_a:0.5;explain_b:0.5").all()
    assert explained.result.paths["heatmaps"] == explained.out / "heatmaps" / "index.csv"


def test_npy_is_the_weighted_mean_of_raw_maps_and_the_png_shows_it(explained, setup):
    """Recompute one image's maps from the explainers (the scorer's pixels, equal weights): the .npy is the mean
    of the raw maps on the stored image's pixel grid, the .models.npz holds each, and the overlay is that map
    normalised and resized to the display."""
    from mura_ens.data.images import decode, resize_rgb
    from mura_ens.explain import load_explainer, normalise
    from mura_ens.scoring.overlay import display_image

    row = explained.index.iloc[0]
    image = decode(row["image"])
    shown = display_image(image)
    raw = np.zeros((image.height, image.width), np.float32)
    images = pd.read_csv(explained.out / "images.csv").set_index("path")
    members = np.load(explained.out / row["models_npz"])
    for name, size in (("explain_a", 32), ("explain_b", 48)):
        explainer = load_explainer(setup.models / name / "model.onnx")
        result = explainer.heatmaps(resize_rgb(image, size, "stretch")[None].astype(np.float32))
        # the explainer saw exactly what scoring fed the model
        assert result.probabilities[0] == pytest.approx(images.at[row["image"], f"prob__{name}"], abs=1e-5)
        on_image = Image.fromarray(result.maps[0]).resize(image.size, Image.Resampling.BILINEAR)
        np.testing.assert_allclose(members[name], np.asarray(on_image), rtol=1e-5, atol=1e-6)
        raw += 0.5 * np.asarray(on_image, np.float32)
    npy = np.load(explained.out / row["npy"])
    assert npy.dtype == np.float32 and npy.shape == (image.height, image.width)  # the stored image's grid
    np.testing.assert_allclose(npy, raw, rtol=1e-5, atol=1e-6)
    assert row["map_max"] == pytest.approx(float(npy.max()), rel=1e-5) and row["map_size"] == "16x16;24x24"
    heat = normalise(np.asarray(Image.fromarray(npy).resize(shown.size, Image.Resampling.BILINEAR)))
    expected = np.asarray(overlay(shown, heat), np.int16)
    written = np.asarray(Image.open(explained.out / row["png"]), np.int16)
    assert np.abs(written - expected).max() <= 1
    assert np.abs(written - np.asarray(shown, np.int16)).max() > 20  # the heatmap is visible


def test_report_shows_the_gallery(explained):
    html = (explained.out / "report.html").read_text(encoding="utf-8")
    section = html[html.index('<h2 id="heatmaps">') : html.index('<h2 id="failed">')]
    for study in explained.index["study"].unique():
        assert f"<h3>{study}</h3>" in section
    assert section.count('src="data:image/jpeg;base64,') == len(explained.index)
    for png in explained.index["png"]:
        assert f'href="{png}"' in section
    assert "false positive" in section and "false negative" in section and "label abnormal" in section
    assert re.search(r"explain_a 0\.\d{3}; explain_b 0\.\d{3}; plain 0\.\d{3}", section)
    assert "cannot explain: plain" in section


def test_resumed_run_recomputes_heatmaps_and_replaces_old_ones(explained, setup, tmp_path, monkeypatch):
    out = tmp_path / "out"
    stale = out / "heatmaps" / "old_study" / "image9.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not ours any more")
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        score_labelled(setup, out, explain=K, progress=False)
    monkeypatch.undo()
    assert stale.exists()  # the interrupted run never reached the heatmaps
    result = score_labelled(setup, out, explain=K, resume=True, progress=False)
    assert result.n_resumed_images > 0
    pd.testing.assert_frame_equal(read_index(out), explained.index)
    assert not stale.exists()
    assert not list(out.glob(".heatmaps*"))  # no staging folder left behind


def test_no_model_can_explain_writes_no_heatmaps_and_exits_0(setup, tmp_path):
    tree = make_tree(tmp_path / "data", [("XR_HAND", None, 1), ("XR_WRIST", None, 1)])
    out = tmp_path / "out"
    (out / "heatmaps" / "old").mkdir(parents=True)  # an earlier run's: would be taken for this one's
    args = ["score", str(tree), "--model", str(setup.models / "plain" / "model.onnx"), "--out", str(out)]
    code, stdout, stderr = run_cli([*args, "--explain", "2"])
    assert code == 0, stderr
    assert stderr.count("mura-ens: --explain: model plain cannot explain: no explain.json") == 1, stderr
    assert "none of the models can explain; no heatmaps written (removed the earlier" in stderr
    assert not (out / "heatmaps").exists() and (out / "studies.csv").is_file() and "heatmaps" not in stdout
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "No heatmaps: none of the models can explain." in html


def test_explain_runs_with_tensorflow_unimportable(setup, tmp_path):
    """In a fresh interpreter whose tensorflow/keras/tf2onnx raise on import; an unlabelled tree: top-K only."""
    tree = make_tree(tmp_path / "data", [("XR_HAND", None, 2), ("XR_WRIST", None, 1), ("XR_ELBOW", None, 1)])
    blocker = tmp_path / "block"
    for name in ("tensorflow", "keras", "tf2onnx"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked by the test')\n")
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys
        from mura_ens.cli.main import main
        code = main(["score", {str(tree)!r}, "--models", {str(setup.models)!r}, "--out", {str(out)!r},
                     "--explain", "2"])
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TF got imported"
        sys.exit(code)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    index = pd.read_csv(out / "heatmaps" / "index.csv")
    assert index["study"].nunique() == 2 and set(index["reasons"]) == {HIGHEST}
    assert len(list((out / "heatmaps").rglob("*.png"))) == len(index) >= 2
