"""Every model is probed once when its session is built: a 2-image batch must give finite probabilities in [0, 1].

The broken models come from tests/fixtures/make_tiny_models.py (``BAD_KINDS``, no TensorFlow).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scoring_fixtures import ENSEMBLE_LAYOUT, make_tree, tiny

from mura_ens.cli.main import main
from mura_ens.errors import ModelError
from mura_ens.scoring import models as M
from mura_ens.scoring import sessions as S

#: kind -> what the one-line error must say
BAD = {
    "nan_output": ("nan", "finite"),
    "logits": ("2711", "looks like logits", "export it with a sigmoid output"),
    "batch_one": ("(1, H, W, 3)", "fixed batch dimension of 1", "export it with a dynamic batch dimension"),
    "reshape_batch_one": ("2-image test batch", "Reshape", "export it with a dynamic batch dimension"),
    "empty": ("the file is empty",),
}

CPU = S.SessionConfig(providers=("CPUExecutionProvider",), intra_op_threads=1)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("probe"), ENSEMBLE_LAYOUT[:2], seed=5)


def test_the_fixture_covers_every_bad_kind(tiny_models):
    assert set(BAD) == set(tiny.BAD_KINDS) <= set(tiny_models)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_model_is_one_model_error_line_naming_the_file(tiny_models, kind):
    path = tiny_models[kind]
    with pytest.raises(ModelError) as err:
        M.load_models(model_files=[path], session_config=CPU)
    text = str(err.value)
    assert path.name in text and "\n" not in text, text
    for words in BAD[kind]:
        assert words in text, text
    assert "expected one image input" not in text


@pytest.mark.parametrize("kind", ["nan_output", "logits", "reshape_batch_one"])
def test_sessions_are_probed_before_use_and_a_failed_one_is_not_kept(tiny_models, kind):
    spec = M.load_model_spec(tiny_models[kind])  # the file itself is fine: only running it shows the fault
    for _ in range(2):  # refused each time: a session that failed its probe is never cached
        with pytest.raises(ModelError, match="2-image test batch"):
            S.get_session(spec, CPU)
    with pytest.raises(ModelError, match="2-image test batch"):
        M.probe_model(spec)


def test_the_probe_runs_once_per_session_and_good_models_pass(tiny_models, monkeypatch):
    calls = []
    real = S.probe_session

    def counting(session, spec):
        calls.append(spec.name)
        return real(session, spec)

    monkeypatch.setattr(S, "probe_session", counting)
    config = S.SessionConfig(providers=("CPUExecutionProvider",), intra_op_threads=1, rewrite=False)
    S.clear_sessions()
    specs = M.load_models(tiny_models["gen_a"].parents[1], [tiny_models["nometa"]], session_config=config)
    assert sorted(calls) == sorted(s.name for s in specs) and len(calls) == 5  # uint8 input included
    for spec in specs:  # what a run does next: the probed sessions are reused, not probed again
        S.get_session(spec, config)
        M.probe_model(spec, config)
    assert len(calls) == 5
    # the specs stay plain records that travel to worker processes and Dask workers
    assert pickle.loads(pickle.dumps(specs)) == specs


def test_probe_batch_is_fixed_and_a_good_model_gives_its_probabilities(tiny_models):
    images = S.probe_images(32)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.float32
    assert (images[0] == 128).all() and images[1].min() >= 0 and images[1].max() <= 255
    assert np.array_equal(images, S.probe_images(32)) and S.probe_images(8, "uint8").dtype == np.uint8
    spec = M.load_model_spec(tiny_models["gen_a"])
    session = S.get_session(spec, CPU)
    probs = S.probe_session(session, spec)
    gen_a = next(t for t in tiny.STANDARD if t.name == "gen_a")
    expected = 1 / (1 + np.exp(-(gen_a.a * images.reshape(2, -1).mean(axis=1) / 255 + gen_a.b)))
    assert probs == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_score_stops_before_scoring_with_one_line_and_exit_2(tree, tiny_models, tmp_path, capfd, kind):
    out = tmp_path / "out"
    code = main(
        ["score", str(tree), "--model", str(tiny_models["gen_a"]), "--model", str(tiny_models[kind]), "--out", str(out)]
    )
    err = capfd.readouterr().err  # file-descriptor level: onnxruntime's own log lines would show here
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mura-ens: error:"), err
    assert tiny_models[kind].name in lines[0] and "Traceback" not in err
    assert not (out / "images.csv").exists()
