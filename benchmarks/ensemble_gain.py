"""Does the fitted ensemble beat the plain mean? Over several seeds of the synthetic benchmark, two arms.

Per seed (the demo's own pipeline, :mod:`mura_ens.demo`):

1. ``make_synthetic_mura`` with its default difficulty, the demo's sizes (``valid``: synth's default 20% of
   the patients, where the demo asks for 30%);
2. the demo's models (``_train_models``): a ``custom_cnn`` generalist and ``specialists``
   warm-started from it (the **standard** arm);
3. **weak** specialists: one ``custom_cnn`` per part trained from scratch on a quarter of its
   part's training-fold images (``max_images``; same split, so the held-out fold stays unseen);
4. the runs' held-out validation fold (``write_validation_fold``) and the ``valid`` split are
   each scored once with every model (plain ``body_part`` ensemble, ``--tta none``, fp32);
5. per arm (generalist + that arm's specialists): ``fit_ensemble`` on the held-out fold's
   studies (default settings), applied to ``valid`` exactly as ``score --ensemble fitted`` does
   (:meth:`FittedEnsemble.apply`, tested equal to it in tests/test_scoring_fitted.py).

Prints, per arm and seed, the overall study kappa and log loss on ``valid`` of the generalist,
the specialists (each study by its part's specialist), the plain mean and the fitted ensemble,
the fitted-minus-plain deltas, their mean, and the per-part means over seeds.

    python benchmarks/ensemble_gain.py                     # 5 seeds, the demo's FULL sizes (CPU: long)
    python benchmarks/ensemble_gain.py --quick --seeds 0   # a smoke run (QUICK sizes)
    python benchmarks/ensemble_gain.py --refit-only --out DIR   # refit/evaluate on saved scores

Kept under ``--out`` (default ``ensemble-gain-out``): per seed the scored tables and ``result.json``.
Needs TensorFlow (training); the fit and the evaluation do not.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from _common import REPO, note, result

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ARMS = ("standard", "weak")
WEAK_SHARE = 0.25


def _train_weak(data: Path, runs_dir: Path, settings, seed: int) -> list[Path]:
    """One ``custom_cnn`` per part from scratch on a quarter of its part's training-fold images."""
    from mura_ens.errors import UsageError
    from mura_ens.training import TrainOptions, train
    from mura_ens.training.data import load_training_data, model_rows

    fold = load_training_data(data, val_fraction=settings.val_fraction, seed=seed)
    runs = []
    for part in sorted(fold.frame["body_part"].dropna().unique()):
        rows = model_rows(fold.frame, (part,), None, seed=seed)
        n_train = int((rows["fold"] == "train").sum())
        options = TrainOptions(
            image_size=settings.image_size,
            batch_size=settings.batch_size,
            weights="none",
            seed=seed,
            progress=False,
            patience=settings.patience,
            val_fraction=settings.val_fraction,
            epochs=settings.epochs,
            params=settings.generalist_params,
            base="custom_cnn",
            body_part=part,
            max_images=max(8, round(WEAK_SHARE * n_train)),
            name="weak",
        )
        while True:  # a quarter may hold one class or too few images: take more until training accepts it
            try:
                runs += train("specialists", data, runs_dir, options)
                break
            except UsageError as exc:
                if options.max_images is None or options.max_images >= n_train:
                    raise
                note(f"{part}: {exc}; retrying with more images")
                options = replace(options, max_images=min(n_train, options.max_images + round(0.1 * n_train) + 1))
    return runs


def _score_all(source: Path, out: Path, models: list[Path]) -> Path:
    from mura_ens.metrics import NO_BOOTSTRAP
    from mura_ens.scoring.score import ScoreSettings, score

    settings = ScoreSettings(ensemble="body_part", bootstrap=NO_BOOTSTRAP)
    score(source, out, model_files=[m / "model.onnx" for m in models], settings=settings, progress=False)
    return out


def run_seed(seed: int, out: Path, settings) -> Path:
    """Synth, train both arms, score the held-out fold and ``valid`` with every model; the seed's folder."""
    from mura_ens.data.synth import make_synthetic_mura
    from mura_ens.demo import _Clock, _train_models, write_validation_fold

    folder = out / f"seed{seed}"
    if (folder / "valid" / "studies.csv").is_file():
        note(f"seed {seed}: reusing the scored tables in {folder}")
        return folder
    note(f"seed {seed}: synthetic data, {settings.studies_per_part} studies per part")
    size = max(getattr(settings, "synth_size", 64), settings.image_size)  # as the demo makes its tree
    make_synthetic_mura(folder / "data", studies_per_part=settings.studies_per_part, size=size, seed=seed)
    data = folder / "data" / "MURA-v1.1"
    note(f"seed {seed}: training the demo's generalist and specialists")
    runs = _train_models(data, folder / "runs", settings, seed=seed, clock=_Clock(lambda _m: None), progress=False)
    note(f"seed {seed}: training weak specialists ({WEAK_SHARE:.0%} of each part's training-fold images)")
    weak = _train_weak(data, folder / "weak_runs", settings, seed)
    fold = write_validation_fold(runs, folder / "data" / "val_fold.csv")
    note(f"seed {seed}: scoring the held-out fold and valid with {len(runs) + len(weak)} models")
    _score_all(fold, folder / "heldout", [*runs, *weak])
    _score_all(data / "valid", folder / "valid", [*runs, *weak])
    return folder


def _arm_members(models: list[dict], arm: str) -> tuple[list[dict], list[dict]]:
    """(the arm's generalists, its specialists) from ``models.json`` records."""
    generalists = [m for m in models if not m["body_parts"]]
    weak = [m for m in models if m["body_parts"] and m["name"].startswith("weak")]
    standard = [m for m in models if m["body_parts"] and not m["name"].startswith("weak")]
    return generalists, (weak if arm == "weak" else standard)


def _table(folder: Path, split: str, members: list[dict]):
    from mura_ens.fitting import read_studies

    studies = read_studies(folder / split / "studies.csv")
    names = {m["name"] for m in members}
    drop = [c for c in studies.columns if c.startswith("prob__") and c[6:] not in names]
    studies = studies.drop(columns=drop)
    studies = studies[(studies["status"] == "ok") & studies["label"].notna()].reset_index(drop=True)
    cols = [f"prob__{m['name']}" for m in members]
    studies["prob"] = studies[cols].mean(axis=1)  # the arm's plain body_part mean (absent = not serving)
    return studies


def _scores(y, prob, pred) -> dict:
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    from mura_ens.fitting.weights import log_loss

    both = len(np.unique(y)) == 2
    return {"kappa": float(cohen_kappa_score(y, pred)) if both else None, "log_loss": log_loss(y, prob), "n": len(y)}


def evaluate_arm(folder: Path, arm: str) -> dict:
    """Fit on the held-out fold, judge on ``valid``: overall and per part, each method's kappa and log loss."""
    import numpy as np

    from mura_ens.fitting import FitSettings, Member, fit_ensemble

    models = json.loads((folder / "valid" / "models.json").read_text(encoding="utf-8"))["models"]
    generalists, specialists = _arm_members(models, arm)
    members = generalists + specialists
    fitted = fit_ensemble(
        _table(folder, "heldout", members),
        [Member(m["name"], m["sha256"]) for m in members],
        FitSettings(),
        precision="fp32",
        tta="none",
    )
    valid = _table(folder, "valid", members)
    y = valid["label"].astype(int).to_numpy()
    spec = np.full(len(valid), np.nan)
    for m in specialists:
        mine = valid["body_part"].isin(m["body_parts"]).to_numpy()
        spec[mine] = valid.loc[mine, f"prob__{m['name']}"].to_numpy()
    fit_prob, fit_pred = fitted.apply(valid)
    methods = {
        "generalist": valid[f"prob__{generalists[0]['name']}"].to_numpy(),
        "specialists": spec,
        "plain": valid["prob"].to_numpy(),
        "fitted": fit_prob,
    }
    preds = {k: (v > 0.5).astype(int) for k, v in methods.items()}
    preds["fitted"] = fit_pred.astype(int)
    groups = {"overall": np.ones(len(valid), dtype=bool)}
    groups.update({p: (valid["body_part"] == p).to_numpy() for p in sorted(valid["body_part"].unique())})
    out: dict = {"statuses": {p: m.status for p, m in fitted.parts.items()}, "groups": {}}
    for group, rows in groups.items():
        out["groups"][group] = {}
        for method, prob in methods.items():
            ok = rows & ~np.isnan(prob)
            out["groups"][group][method] = _scores(y[ok], prob[ok], preds[method][ok]) if ok.any() else None
    return out


def _mean(values: list) -> float | None:
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


def _f(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def report(results: dict[int, dict[str, dict]]) -> None:
    """The tables: per arm and seed overall, deltas and their mean; per part means over the seeds."""
    methods = ("generalist", "specialists", "plain", "fitted")
    for arm in ARMS:
        print(f"\n## arm: {arm}  (overall study kappa / log loss on valid)")
        print("seed  " + "  ".join(f"{m:>15}" for m in methods) + "   d_kappa  d_logloss  statuses")
        deltas_k, deltas_l = [], []
        for seed, arms in sorted(results.items()):
            row = arms[arm]["groups"]["overall"]
            dk = row["fitted"]["kappa"] - row["plain"]["kappa"]
            dl = row["fitted"]["log_loss"] - row["plain"]["log_loss"]
            deltas_k.append(dk)
            deltas_l.append(dl)
            cells = "  ".join(f"{_f(row[m]['kappa'])} / {row[m]['log_loss']:5.3f}" for m in methods)
            statuses = ",".join(s[0] for s in arms[arm]["statuses"].values())
            print(f"{seed:>4}  {cells}   {dk:+.3f}    {dl:+.3f}    {statuses}")
            result(f"{arm}_seed{seed}_kappa_fitted_minus_plain", dk)
        result(f"{arm}_mean_kappa_fitted_minus_plain", _mean(deltas_k))
        result(f"{arm}_mean_logloss_fitted_minus_plain", _mean(deltas_l))
        result(f"{arm}_seeds_fitted_below_plain", sum(d < -1e-12 for d in deltas_k))
        parts = [g for g in next(iter(results.values()))[arm]["groups"] if g != "overall"]
        print(f"\n## arm: {arm}  per part, mean over seeds: kappa (plain -> fitted), log loss (plain -> fitted)")
        for part in parts:
            cells = {}
            for m in ("plain", "fitted"):
                rows = [arms[arm]["groups"][part][m] for arms in results.values() if arms[arm]["groups"].get(part)]
                cells[m] = (_mean([r["kappa"] for r in rows if r]), _mean([r["log_loss"] for r in rows if r]))
            print(
                f"{part:12} kappa {_f(cells['plain'][0])} -> {_f(cells['fitted'][0])}   "
                f"log loss {_f(cells['plain'][1])} -> {_f(cells['fitted'][1])}"
            )


def main(argv: list[str] | None = None) -> int:
    """Run (or, with ``--refit-only``, re-evaluate) every seed and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma list of seeds (default 0,1,2,3,4)")
    parser.add_argument("--quick", action="store_true", help="the demo's QUICK sizes (a smoke run)")
    parser.add_argument("--studies-per-part", type=int, default=None, help="override the demo's studies per part")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo's generalist epochs")
    parser.add_argument("--out", type=Path, default=Path("ensemble-gain-out"))
    parser.add_argument("--refit-only", action="store_true", help="only refit and evaluate the saved scores")
    args = parser.parse_args(argv)
    from mura_ens.demo import FULL, QUICK

    settings = QUICK if args.quick else FULL
    if args.studies_per_part:
        settings = replace(settings, studies_per_part=args.studies_per_part)
    if args.epochs:
        settings = replace(settings, epochs=args.epochs)
    note(f"settings: {settings}")
    results: dict[int, dict[str, dict]] = {}
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        folder = args.out / f"seed{seed}" if args.refit_only else run_seed(seed, args.out, settings)
        results[seed] = {arm: evaluate_arm(folder, arm) for arm in ARMS}
        (folder / "result.json").write_text(json.dumps(results[seed], indent=1), encoding="utf-8")
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
