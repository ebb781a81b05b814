"""What ``mura-ens score`` and ``mura-ens demo`` print after a scoring run: counts, metric tables, files."""

from __future__ import annotations


def print_score_summary(result, console) -> None:
    """Per-body-part metric tables (ensemble, then each model), counts, and where the files are.

    ``result`` is a :class:`mura_ens.scoring.score.ScoreResult`. Plain lines go through ``print``
    (never wrapped, easy to grep); tables through the rich ``console``.
    """
    images, studies = result.images, result.studies
    n_ok = int((images["status"] == "ok").sum())
    threshold = f"threshold {result.threshold:g}"
    ensemble = result.ensemble
    if result.ensemble_file is not None:  # the ensemble's own thresholds are per body part
        ensemble += f" ({result.ensemble_file}, per-part thresholds)"
        threshold = f"models' {threshold}"
    print(
        f"{len(result.models)} models ({', '.join(m.name for m in result.models)}), ensemble {ensemble}, "
        f"{threshold}, providers {', '.join(result.providers)}"
        + (f", tta {result.tta}" if result.tta != "none" else "")
    )
    print(
        f"images: {n_ok} scored of {len(images)} listed; studies: {int((studies['status'] == 'ok').sum())} scored of {len(studies)}"
    )
    _print_not_scored(result)
    if result.metrics is not None:
        _print_metric_tables(result, console)
    else:
        print("no labels in the input: metrics skipped")
    for path in result.paths.values():
        print(f"wrote {path}")
    if "report" in result.paths:
        print(f"report: {result.paths['report']}")


def _print_not_scored(result) -> None:
    """Images not scored and why; files the scan skipped and why; studies of an unknown body part."""
    from ..data.layout import SKIP_REASONS, unknown_parts_text

    counts = result.images.loc[result.images["status"] != "ok", "status"].value_counts()
    failed = [(status, n) for status, n in counts.items() if status not in SKIP_REASONS]
    skipped = [(status, n) for status, n in counts.items() if status in SKIP_REASONS]
    if failed:
        print("not scored: " + ", ".join(f"{status} {count}" for status, count in failed))
    if skipped:
        total = sum(n for _, n in skipped)
        print(
            f"skipped by the scan: {total} {'file' if total == 1 else 'files'} ("
            + ", ".join(f"{reason} {count}" for reason, count in skipped)
            + "; each listed in images.csv with its reason)"
        )
    if result.unknown_parts:
        serves = any(m.is_generalist for m in result.models)
        print(
            unknown_parts_text(result.unknown_parts)
            + (": scored by the generalist models only" if serves else ": not scored (no generalist model)")
        )


def _print_metric_tables(result, console) -> None:
    """The ensemble's study-level table, one per generalist, and one joint table of the specialists."""
    from ..metrics import format_metrics_table

    console.print(
        format_metrics_table(result.metrics["study"], title=f"Study-level metrics, ensemble ({result.ensemble})")
    )
    for name, levels in result.metrics.get("baselines", {}).items():
        console.print(format_metrics_table(levels["study"], title=f"Study-level metrics, plain {name} mean (baseline)"))
    specialists: dict[str, dict] = {}
    for spec in result.models:
        levels = result.metrics["models"].get(spec.name)
        if levels is None:
            continue
        if spec.is_generalist:
            console.print(format_metrics_table(levels["study"], title=f"Study-level metrics, {spec.name}"))
            continue
        # A specialist only has rows of its own part(s): one joint table reads better than one each.
        for part, group in levels["study"].get("by_body_part", {}).items():
            key = part if part not in specialists else f"{part} {spec.name}"
            specialists[key] = group
    if specialists:
        console.print(
            format_metrics_table(
                {"by_body_part": specialists}, title="Study-level metrics, specialists on their own parts"
            )
        )
