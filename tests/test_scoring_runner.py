"""The runner's per-image checks and test-time augmentation, on tiny ONNX graphs (no TensorFlow).

- ``--tta flip``: an image's probability is the mean over it and its horizontal mirror (a model
  that is not mirror-symmetric shows it); recorded in metrics.json and the report; a resumed run
  never mixes TTA settings.
- A model that outputs NaN on some images: those images are ``model_error`` (model named), their
  studies are scored from the other images, the run finishes.
- An ONNX Runtime error at inference: one line, exit 2, the journal kept.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from scoring_fixtures import make_tree, read_images, read_studies, study_folder, tiny, write_png

from mura_ens.cli.main import main
from mura_ens.data.images import decode, resize_rgb
from mura_ens.errors import UsageError
from mura_ens.metrics import NO_BOOTSTRAP
from mura_ens.scoring import journal as journal_module
from mura_ens.scoring.score import ScoreSettings, score

SIZE = 32

pytestmark = pytest.mark.filterwarnings("ignore::mura_ens.metrics.UndefinedMetricWarning")


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _pixels(path: str) -> np.ndarray:
    return resize_rgb(decode(path), SIZE, "stretch").astype(np.float32)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    layout = [("XR_HAND", 1, 2), ("XR_HAND", 0, 1), ("XR_WRIST", 1, 3), ("XR_WRIST", 0, 2), ("XR_ELBOW", 0, 1)]
    return make_tree(tmp_path_factory.mktemp("tta_tree"), layout, seed=5)


@pytest.fixture(scope="module")
def leftmost(tmp_path_factory):
    return tiny.make_mirror_sensitive_model(tmp_path_factory.mktemp("leftmost") / "leftmost" / "model.onnx")


def _score(tree, model, out, **settings):
    settings.setdefault("bootstrap", NO_BOOTSTRAP)
    return score(tree, model_files=[model], out=out, settings=ScoreSettings(batch_size=3, **settings), progress=False)


def test_flip_is_the_exact_mean_of_the_image_and_its_mirror(tree, leftmost, tmp_path):
    _score(tree, leftmost, tmp_path / "none")
    _score(tree, leftmost, tmp_path / "flip", tta="flip")
    plain, flipped = read_images(tmp_path / "none"), read_images(tmp_path / "flip")
    session = _session(leftmost)
    a, b = 5.0, -2.0
    differs = 0
    for row_plain, row_flip in zip(plain.itertuples(index=False), flipped.itertuples(index=False)):
        x = _pixels(row_plain.path)
        mirror = np.ascontiguousarray(x[:, ::-1, :])
        p, q = session.run(None, {"image": np.stack([x, mirror])})[0][:, 0].astype(np.float64)
        assert row_plain.prob__leftmost == p  # the two ORT passes, exactly
        assert row_flip.prob__leftmost == (p + q) / 2.0
        # and the model's formula in float64: the left-most column of the image and of its mirror
        left, right = x[:, 0, :].astype(np.float64).mean(), x[:, -1, :].astype(np.float64).mean()
        sig = [1.0 / (1.0 + math.exp(-(a * m / 255.0 + b))) for m in (left, right)]
        assert row_flip.prob__leftmost == pytest.approx(sum(sig) / 2.0, abs=1e-6)
        differs += abs(p - q) > 1e-3
    assert differs >= len(plain) // 2  # the model is not mirror-symmetric on these images
    studies = read_studies(tmp_path / "flip")
    means = flipped.groupby("study", sort=False)["prob__leftmost"].mean()
    assert np.allclose(studies.set_index("study").loc[means.index, "prob__leftmost"], means, rtol=0, atol=1e-15)


def test_flip_is_recorded_in_metrics_report_and_fingerprint(tree, leftmost, tmp_path):
    _score(tree, leftmost, tmp_path / "none")
    _score(tree, leftmost, tmp_path / "flip", tta="flip")
    assert "tta" not in json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert json.loads((tmp_path / "flip" / "metrics.json").read_text())["tta"] == "flip"
    report = (tmp_path / "flip" / "report.html").read_text()
    assert "<th>tta</th><td>flip</td>" in report
    assert "mirror" in report  # the header says what flip means
    manifest = __import__("pandas").DataFrame({"path": ["a"], "study": ["s"], "body_part": ["XR_HAND"], "label": [1]})
    fingerprints = [
        journal_module.run_fingerprint(tree, manifest, [], precision="fp32", tta=t) for t in ("none", "flip")
    ]
    assert fingerprints[0]["tta"] == "none" and fingerprints[1]["tta"] == "flip"


def test_a_resumed_run_never_mixes_tta_settings(tree, leftmost, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = journal_module.Journal.append

    def append_then_stop(self, number, rows):
        real(self, number, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(journal_module.Journal, "append", append_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _score(tree, leftmost, out)
    monkeypatch.setattr(journal_module.Journal, "append", real)
    with pytest.raises(UsageError, match="tta"):
        _score(tree, leftmost, out, tta="flip", resume=True)
    result = _score(tree, leftmost, out, resume=True)  # the same setting resumes
    assert result.n_resumed_images > 0


def test_bad_tta_is_one_line(tree, leftmost, tmp_path, capsys):
    code = main(["score", str(tree), "--model", str(leftmost), "--out", str(tmp_path), "--tta", "rotate"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "unknown --tta 'rotate'; choose one of none, flip" in err


# ---- a model that outputs NaN on some images -------------------------------------------------------


@pytest.fixture(scope="module")
def dark_tree(tmp_path_factory):
    """Study 1: a dark and a bright image; study 2: only a dark one; study 3: two bright ones."""
    root = tmp_path_factory.mktemp("dark")
    rng = np.random.default_rng(0)

    def image(low: int) -> np.ndarray:
        return rng.integers(low, low + 40, size=(30, 30, 3), dtype=np.uint8)

    layout = {1: (20, 180), 2: (10,), 3: (150, 200)}
    for k, lows in layout.items():
        folder = study_folder(root, "valid", "XR_HAND", 100 + k, 1, k % 2)
        for j, low in enumerate(lows, start=1):
            write_png(folder / f"image{j}.png", image(low))
    return root / "MURA-v1.1" / "valid"


def test_nan_on_some_images_marks_them_model_error_and_scores_the_study_from_the_rest(
    dark_tree, tiny_models, tmp_path, capsys
):
    nan_model = tiny.make_dark_nan_model(tmp_path / "models" / "dark_nan" / "model.onnx")
    out = tmp_path / "out"
    code = main(
        ["score", str(dark_tree), "--model", str(nan_model), "--model", str(tiny_models["gen_a"])]
        + ["--out", str(out), "--batch-size", "2", "--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    images, studies = read_images(out), read_studies(out)
    dark = images["path"].str.contains("patient00101/study1_positive/image1|patient00102", regex=True)
    assert (images.loc[dark, "status"] == "model_error").all()
    assert (images.loc[~dark, "status"] == "ok").all()
    for error in images.loc[dark, "error"]:
        assert error == "model dark_nan returned nan"
    # a model_error image has no probability from any model: every model scores the same images
    assert images.loc[dark, ["prob__dark_nan", "prob__gen_a", "prob"]].isna().all().all()
    by_study = studies.set_index("study")
    first, second, third = by_study.index  # in input order
    ok = images.loc[~dark]
    for name in ("prob__dark_nan", "prob__gen_a"):
        assert by_study.at[first, name] == ok.loc[ok["study"] == first, name].mean()
        assert by_study.at[third, name] == ok.loc[ok["study"] == third, name].mean()
    assert by_study.at[first, "n_scored"] == 1 and by_study.at[first, "status"] == "ok"
    assert by_study.at[second, "status"] == "all_images_failed" and np.isnan(by_study.at[second, "prob"])
    assert "model_error 2" in captured.out
    assert not (out / journal_module.JOURNAL_DIR).exists()


def test_outputs_beyond_rounding_outside_zero_one_are_model_errors_and_rounding_is_clipped():
    from mura_ens.scoring.runner import _unusable

    assert _unusable(0.5) == "" and _unusable(1.0 + 5e-7) == "" and _unusable(-5e-7) == ""
    assert _unusable(float("nan")) == "returned nan"
    assert _unusable(float("inf")) == "returned inf"
    assert _unusable(2700.0) == "returned 2700, not a probability in [0, 1]"


# ---- an ONNX Runtime error at inference ------------------------------------------------------------


def test_an_onnx_runtime_error_at_inference_is_one_line_exit_2_and_the_journal_is_kept(tree, tmp_path, capfd):
    model = tiny.make_odd_batch_failing_model(tmp_path / "models" / "odd_batch" / "model.onnx")
    out = tmp_path / "out"
    # studies of 2, 1, 3, 2, 1 images in batches of at most 2: the second batch has one image
    code = main(
        ["score", str(tree), "--model", str(model), "--out", str(out), "--batch-size", "2", "--workers", "1"]
        + ["--no-progress"]
    )
    err = capfd.readouterr().err  # file descriptor 2: ONNX Runtime's own log would show here
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err and "[E:onnxruntime" not in err
    assert err.startswith("mura-ens: error: ")
    assert str(model) in err and "odd_batch" in err and "failed at inference on a batch of 1 images" in err
    assert "cannot be reshaped" in err
    assert journal_module.JOURNAL_DIR in {p.name for p in out.iterdir()}
    assert not (out / "images.csv").exists()
