"""``score --explain K``: heatmap overlays of the selected studies, their ``index.csv`` and the report's gallery.

Runs in this process after the study table exists (whatever ``--backend``
scored the images; heatmaps are not journalled, a ``--resume``\\d run
recomputes them). For each study chosen by
:func:`~mura_ens.scoring.explain_select.select_studies` and each of its
images scored ``ok``:

1. the image is decoded and resized exactly as scoring did
   (:func:`mura_ens.data.images.decoded` + :func:`~mura_ens.data.images.resize_rgb`
   with each model's input size and resize policy);
2. each model the ensemble combined for the study that can explain
   (:func:`mura_ens.explain.load_explainer`) gives its raw heatmap of the image,
   resampled onto the stored image's pixel grid
   (:func:`~mura_ens.scoring.overlay.heatmap_on_image`) and written, one array
   per model, to ``<image>.models.npz``;
3. the ensemble heatmap is the weighted mean of those
   (:func:`~mura_ens.scoring.explain_select.member_weights`), unnormalised, written
   as ``<image>.npy`` (float32, the stored image's shape), then resized to the
   display, normalised per image (:func:`mura_ens.explain.normalise`), drawn over
   the radiograph (:func:`~mura_ens.scoring.overlay.overlay`) and written as
   ``heatmaps/<study folder>/<image>.png`` in ``--out``. Its maximum and a note
   (:data:`WEAK_EVIDENCE`, :data:`NO_EVIDENCE`) go to the index and the gallery.

``--explain all`` (:attr:`ExplainJob.every_abnormal`) adds every labelled
abnormal study; ``score --findings`` scores the staged maps
(:func:`score_findings`, :mod:`mura_ens.explain.evaluate`).

``heatmaps/index.csv`` has one row per scored image of a selected study
(:data:`INDEX_COLUMNS`, then ``prob__<model>`` = the study's probability per
model as in ``studies.csv``, and ``image_prob__<model>`` = the image's as in
``images.csv``); an image without a PNG says why in ``status``/``error``.

Study folders are the study key made safe for any file system
(:class:`SafeNames`: characters other than letters, digits, ``.``, ``_``,
``-`` become ``_``; a name already used, compared case-insensitively, or longer
than :data:`MAX_NAME` gets an 8-hex-digit hash of the key). The whole folder is
built as ``.heatmaps.partial-<pid>/`` and renamed to ``heatmaps/`` when
complete (an earlier run's ``heatmaps/`` is replaced), every file in it written
atomically.

Models that cannot explain (no explain artifact: ``mura-ens export RUN_DIR``
adds it) are named once each in the run's notes and left out of the heatmap
mean; when no model can explain, no heatmaps are written (an earlier
``heatmaps/`` is removed) and the run still succeeds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..console import echo
from ..io import OutputError, atomic_write_bytes, atomic_write_csv
from .ensemble import members
from .explain_select import SelectedStudy, member_weights, select_studies
from .overlay import display_image, heatmap_on_image, overlay, png_bytes, thumbnail_data_uri
from .runner import OK

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from PIL import Image

    from ..explain import Explainer
    from ..fitting.ensemble import FittedEnsemble
    from .models import ModelSpec

HEATMAPS_DIR = "heatmaps"
INDEX_FILE = "index.csv"
#: Longest study-folder or image name before it is cut and given a hash.
MAX_NAME = 100
#: The first columns of ``heatmaps/index.csv``.
INDEX_COLUMNS: tuple[str, ...] = (
    "study",
    "reasons",
    "body_part",
    "label",
    "prob",
    "pred",
    "image",
    "png",
    "status",
    "error",
    "image_prob",
    "heatmap_models",
    "cannot_explain",
    "npy",
    "models_npz",
    "map_size",
    "map_max",
    "map_note",
)
#: ``map_note`` of an image whose ensemble map is zero everywhere (no cell pushes towards "abnormal").
NO_EVIDENCE = "no positive evidence"
#: ``map_note`` of an image the ensemble calls normal (probability < 0.5): its map is shown, scaled to its own
#: maximum, but what it points at did not make the image abnormal.
WEAK_EVIDENCE = "weak evidence"
#: Smallest feature-map side whose heatmaps can say where something is; smaller ones are warned about.
MIN_MAP_SIDE = 4
#: Status of an image of a selected study whose models all failed to explain.
NO_EXPLAINER = "no_explainer"


@dataclass(frozen=True)
class ExplainJob:
    """What the heatmap step needs from a finished scoring run."""

    out: Path
    images: pd.DataFrame  # the rows of images.csv
    studies: pd.DataFrame  # the rows of studies.csv
    models: tuple[ModelSpec, ...]
    ensemble: str
    k: int
    fitted: FittedEnsemble | None = None
    #: How a text is shown in every file written (``--pseudonymize``: :meth:`mura_ens.pseudonym.Pseudonymizer.text`):
    #: image paths, file names and errors go through it as they are produced, never written raw first.
    hide: Callable[[str], str] | None = None
    #: Leave the finished folder staged (``HeatmapOutput.staging``) for the caller to :func:`install`, so that
    #: ``score`` replaces all of its outputs together, after everything that can fail.
    defer_install: bool = False
    #: ``--explain all``: every labelled abnormal study too (:func:`~.explain_select.select_studies`).
    every_abnormal: bool = False
    #: How each map is made (:data:`mura_ens.explain.MAP_METHODS`).
    method: str = "xgradcam"

    def shown(self, text: str) -> str:
        """``text`` as the output files show it (:attr:`hide`)."""
        return self.hide(text) if self.hide is not None else text


@dataclass
class HeatmapOutput:
    """What the step wrote: ``index`` (None when no heatmap was written), the report's gallery, notes for the user.

    ``staging``: the finished folder not yet renamed into place (``ExplainJob.defer_install``; :func:`install`).
    """

    index: Path | None
    gallery: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    n_png: int = 0
    staging: Path | None = None


def write_heatmaps(job: ExplainJob) -> HeatmapOutput:
    """Select studies, explain their images with every model able to, write the PNGs and ``heatmaps/index.csv``."""
    selected = select_studies(job.studies, job.k, every_abnormal=job.every_abnormal)
    parts = {str(job.studies["body_part"].iloc[s.row]) for s in selected}
    needed = [m for m in job.models if any(m in members(job.ensemble, job.models, p) for p in parts)]
    explainers, cannot = _load_explainers(needed, job.method)
    notes = [f"--explain: model {name} cannot explain: {reason}" for name, reason in cannot.items()]
    notes += _small_map_notes(explainers)
    target = job.out / HEATMAPS_DIR
    if not selected or not explainers:
        why = "no study has an ensemble probability" if not selected else "none of the models can explain"
        notes.append(f"--explain: {why}; no heatmaps written" + _removed(target))
        return HeatmapOutput(None, {"note": f"No heatmaps: {why}.", "studies": []}, notes)
    echo(f"heatmaps: explaining {len(selected)} studies with {', '.join(explainers)}")
    staging = _staging_dir(job.out)
    try:
        rows: list[dict[str, Any]] = []
        studies: list[dict[str, Any]] = []
        names = SafeNames()
        for chosen in selected:
            study_rows, entry = _explain_study(job, chosen, explainers, staging, names.name(chosen.study))
            rows += study_rows
            studies.append(entry)
        index = _write_index(job, rows, staging)
    except BaseException:  # an error, Ctrl-C or SIGTERM: no staged folder is left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    n_png = sum(1 for row in rows if row["status"] == OK)
    gallery = {"note": _gallery_note(explainers, cannot), "studies": studies}
    output = HeatmapOutput(target / index.name, gallery, notes, n_png, staging=staging)
    if not job.defer_install:
        install(output)
    return output


def score_findings(output: HeatmapOutput, findings: Path) -> None:
    """``score --findings``: score the staged raw maps against ``findings`` (:mod:`mura_ens.explain.evaluate`);
    the result goes to ``heatmaps/explain_eval.json`` and the gallery (``evaluation``: table rows). What
    cannot be scored (no explained image has a finding) is a note, not an error."""
    from ..errors import UsageError
    from ..explain.evaluate import EVAL_FILE, evaluate_heatmaps, read_findings, table_rows
    from ..io import atomic_write_json

    folder = output.staging if output.staging is not None else (output.index.parent if output.index else None)
    if folder is None:
        output.notes.append("--findings: no heatmaps were drawn, nothing to score")
        return
    try:
        result = evaluate_heatmaps(folder, read_findings(findings))
    except UsageError as exc:
        output.notes.append(f"--findings: {exc}")
        return
    atomic_write_json(folder / EVAL_FILE, result)
    output.gallery["evaluation"] = {"rows": table_rows(result), "grow_px": result["grow_px"], "file": EVAL_FILE}
    ensemble = result["sources"]["ensemble"]
    output.notes.append(
        f"--findings: ensemble pointing game {ensemble['pointing_game']['mean']:.3f} "
        f"(random {ensemble['pointing_baseline']['mean']:.3f}) on {ensemble['images']} images with a finding; "
        f"{HEATMAPS_DIR}/{EVAL_FILE}"
    )


def install(output: HeatmapOutput) -> None:
    """Rename a staged ``heatmaps`` folder (:attr:`HeatmapOutput.staging`) into place, replacing an earlier one."""
    if output.staging is not None and output.index is not None:
        _replace_dir(output.staging, output.index.parent)
        output.staging = None


def discard(output: HeatmapOutput | None) -> None:
    """Delete a staged folder that will not be installed (the run failed after the heatmaps were drawn)."""
    if output is not None and output.staging is not None:
        shutil.rmtree(output.staging, ignore_errors=True)
        output.staging = None


def _small_map_notes(explainers: Mapping[str, tuple[ModelSpec, Explainer]]) -> list[str]:
    """One line per model whose feature map is smaller than :data:`MIN_MAP_SIDE` on a side."""
    notes = []
    for name, (_, explainer) in explainers.items():
        h, w, _ = explainer.spec.feature_shape
        if min(h, w) < MIN_MAP_SIDE:
            notes.append(
                f"--explain: model {name}'s heatmaps come from a {h}x{w} feature map ({explainer.feature_layer!r}), "
                f"smaller than {MIN_MAP_SIDE}x{MIN_MAP_SIDE}: they cannot show where a finding is (re-export with "
                "`mura-ens export RUN_DIR`, or train at a larger --image-size or with --explain-layer)"
            )
    return notes


def _load_explainers(
    models: Sequence[ModelSpec], method: str
) -> tuple[dict[str, tuple[ModelSpec, Explainer]], dict[str, str]]:
    """The models that can explain (with their explainer) and, for the others, why not."""
    from ..explain import CannotExplain, load_explainer

    able: dict[str, tuple[ModelSpec, Explainer]] = {}
    cannot: dict[str, str] = {}
    for model in models:
        try:
            able[model.name] = (model, load_explainer(Path(model.path), map_method=method))
        except CannotExplain as exc:
            cannot[model.name] = str(exc)
        except Exception as exc:  # whatever a damaged artifact raises: a note for that model, never a traceback
            cannot[model.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return able, cannot


def _gallery_note(explainers: Mapping[str, tuple[ModelSpec, Explainer]], cannot: Mapping[str, str]) -> str:
    methods = ", ".join(f"{name} ({explainer.map_name})" for name, (_, explainer) in explainers.items())
    text = f"Heatmaps from {methods}."
    if cannot:
        text += " Cannot explain (left out): " + "; ".join(f"{n}: {r}" for n, r in cannot.items()) + "."
    return text


@dataclass
class _Decoded:
    """One image of a study, decoded once: the radiograph as shown and the model inputs."""

    path: str
    png: str  # file name of its overlay
    size: tuple[int, int]  # decoded (width, height)
    shown: Image.Image
    pixels: dict[tuple[int, str], np.ndarray]
    position: int  # in the study's batch of decoded images


@dataclass
class _StudyMaps:
    """The models explaining one study: their weights, their raw heatmaps of its decoded images, their specs."""

    weights: dict[str, float]
    maps: dict[str, np.ndarray]
    explainers: Mapping[str, tuple[ModelSpec, Explainer]]


def _explain_study(
    job: ExplainJob,
    chosen: SelectedStudy,
    explainers: Mapping[str, tuple[ModelSpec, Explainer]],
    staging: Path,
    folder: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Index rows and the gallery entry of one study; its PNGs written under ``staging/folder``."""
    study = job.studies.iloc[chosen.row]
    part = str(study["body_part"])
    weights = member_weights(job.ensemble, job.models, part, explainable=explainers, fitted=job.fitted)
    images = job.images.loc[(job.images["study"] == chosen.study) & (job.images["status"] == OK)]
    decoded, rows = _decode_images(images, {explainers[name][0].input_key for name in weights}, job.shown)
    maps, failed = _member_maps(decoded, weights, explainers, chosen.study)
    weights = {name: w for name, w in weights.items() if name not in failed}
    cannot = [m.name for m in members(job.ensemble, job.models, part) if m.name not in weights]
    base = _row_base(job, chosen, study, weights, cannot)
    entry = _gallery_entry(job, chosen, study, weights, cannot)
    explained = _StudyMaps(weights, maps, explainers)
    for (_, image_row), image, row in zip(images.iterrows(), decoded, rows):
        thumbnail = None
        row["image_prob"] = image_row["prob"]
        if image is not None and weights:
            thumbnail = _draw(image, row, explained, staging, folder)
        elif image is not None:
            row.update(status=NO_EXPLAINER, error="none of the study's models could explain it")
        entry["images"].append(_gallery_image(row, thumbnail))
    return [{**base, **_image_columns(job, images, i, row)} for i, row in enumerate(rows)], entry


def _draw(image: _Decoded, row: dict[str, Any], explained: _StudyMaps, staging: Path, folder: str) -> str:
    """Write ``image``'s raw maps (``.npy``, ``.models.npz``) and overlay PNG, set their columns in ``row``;
    return its report thumbnail."""
    import io

    import numpy as np

    from ..explain import normalise

    raw, members = _ensemble_raw(image, explained)
    stem = image.png[: -len(".png")]
    atomic_write_bytes(staging / folder / f"{stem}.npy", _npy_bytes(raw))
    buffer = io.BytesIO()
    np.savez(buffer, **members)  # type: ignore[arg-type]  # model names are the array names
    atomic_write_bytes(staging / folder / f"{stem}.models.npz", buffer.getvalue())
    heat = normalise(_resized(raw, image.shown.size))
    picture = overlay(image.shown, heat)
    atomic_write_bytes(staging / folder / image.png, png_bytes(picture))
    top = float(raw.max(initial=0.0))
    sizes = {f"{m.shape[1]}x{m.shape[2]}" for m in (explained.maps[name] for name in explained.weights)}
    row.update(
        png=f"{HEATMAPS_DIR}/{folder}/{image.png}",
        npy=f"{HEATMAPS_DIR}/{folder}/{stem}.npy",
        models_npz=f"{HEATMAPS_DIR}/{folder}/{stem}.models.npz",
        map_size=";".join(sorted(sizes)),
        map_max=top,
        map_note=_map_note(top, row.get("image_prob")),
    )
    return thumbnail_data_uri(picture)


def _map_note(top: float, prob: Any) -> str:
    """:data:`NO_EVIDENCE`, :data:`WEAK_EVIDENCE` or "" for a map of maximum ``top`` of an image of ``prob``."""
    if not top > 0:
        return NO_EVIDENCE
    try:
        return WEAK_EVIDENCE if float(prob) < 0.5 else ""
    except (TypeError, ValueError):
        return ""


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


def _resized(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``raw`` (H, W) resampled bilinearly to ``size`` (width, height), float32."""
    import numpy as np
    from PIL import Image

    if (raw.shape[1], raw.shape[0]) == tuple(size):
        return np.asarray(raw, dtype=np.float32)
    return np.asarray(Image.fromarray(np.asarray(raw, np.float32)).resize(size, Image.Resampling.BILINEAR), np.float32)


def _gallery_image(row: Mapping[str, Any], thumbnail: str | None) -> dict[str, Any]:
    """An image of a gallery entry: the input path and its PNG (link and thumbnail), its probability and map
    note, or why there is none."""
    if thumbnail is None:
        return {"image": row["path"], "error": f"{row['status']}: {row['error']}"}
    shown = {"image": row["path"], "href": quote(row["png"]), "thumbnail": thumbnail}
    shown.update(prob=row.get("image_prob"), note=row.get("map_note", ""), map_max=row.get("map_max"))
    return shown


def _decode_images(
    images: pd.DataFrame, keys: set[tuple[int, str]], shown: Callable[[str], str]
) -> tuple[list[_Decoded | None], list[dict[str, Any]]]:
    """Each image decoded and resized for every model input in ``keys`` (None where it cannot be read), and its row.

    The row's ``path`` and ``error`` and the PNG's name are ``shown`` (pseudonymized) as they are made: the real
    path is only used to read the image.
    """
    from ..data.images import ImageError, decoded, resize_rgb

    names = SafeNames()
    out: list[_Decoded | None] = []
    rows: list[dict[str, Any]] = []
    position = 0
    for path in images["path"].astype(str):
        row = {"path": shown(path), "png": "", "status": OK, "error": ""}
        rows.append(row)
        image = None
        try:
            with decoded(path) as img:
                pixels = {key: resize_rgb(img, *key) for key in sorted(keys)}
                png = names.name(shown(Path(path).stem)) + ".png"
                image = _Decoded(row["path"], png, img.size, display_image(img), pixels, position)
                position += 1
        except ImageError as exc:
            row.update(status=exc.status, error=shown(exc.detail or str(exc)))
        except Exception as exc:  # a bad file never stops a run
            row.update(status="unreadable", error=shown(f"{type(exc).__name__}: {exc}"))
        out.append(image)
    return out, rows


def _member_maps(
    decoded: Sequence[_Decoded | None],
    weights: Mapping[str, float],
    explainers: Mapping[str, tuple[ModelSpec, Explainer]],
    study: str,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each weighted model's raw heatmaps ``(n_decoded, h, w)`` of the decoded images; the models that failed."""
    import numpy as np

    present = [image for image in decoded if image is not None]
    maps: dict[str, np.ndarray] = {}
    failed: list[str] = []
    if not present:
        return maps, failed
    for name in weights:
        model, explainer = explainers[name]
        batch = np.stack([image.pixels[model.input_key] for image in present]).astype(np.float32)
        try:
            maps[name] = np.asarray(explainer.heatmaps(batch).maps, dtype=np.float32)
        except Exception as exc:  # said, and the other models still explain
            echo(f"heatmaps: model {name} could not explain study {study}: {type(exc).__name__}: {exc}")
            failed.append(name)
    return maps, failed


def _ensemble_raw(image: _Decoded, explained: _StudyMaps) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The ensemble map of ``image`` on the stored image's pixel grid (H, W): the weighted mean of the models'
    raw maps (logit units, not normalised), each resampled onto the image; and each model's (the same grid)."""
    import numpy as np

    total = float(sum(explained.weights.values()))
    width, height = image.size
    heat = np.zeros((height, width), dtype=np.float32)
    members: dict[str, np.ndarray] = {}
    for name, weight in explained.weights.items():
        model = explained.explainers[name][0]
        raw = np.ascontiguousarray(explained.maps[name][image.position], dtype=np.float32)
        on_image = heatmap_on_image(
            raw, image_size=image.size, input_size=model.input_size, policy=model.resize_policy, out_size=image.size
        )
        members[name] = on_image
        heat += np.float32(weight / total) * on_image
    return heat, members


def _row_base(
    job: ExplainJob, chosen: SelectedStudy, study: pd.Series, weights: Mapping[str, float], cannot: Sequence[str]
) -> dict[str, Any]:
    """The study-level columns of an index row."""
    base = {
        "study": chosen.study,
        "reasons": ";".join(chosen.reasons),
        "body_part": study["body_part"],
        "label": study["label"],
        "prob": study["prob"],
        "pred": study["pred"],
        "heatmap_models": ";".join(f"{name}:{w:.4g}" for name, w in weights.items()),
        "cannot_explain": ";".join(cannot),
    }
    base.update({m.column: study[m.column] for m in job.models})
    return base


def _image_columns(job: ExplainJob, images: pd.DataFrame, i: int, row: Mapping[str, Any]) -> dict[str, Any]:
    """The image-level columns of the index row of the ``i``-th image of a study."""
    image = images.iloc[i]
    columns = {
        "image": row["path"],
        "png": row["png"],
        "status": row["status"],
        "error": row["error"],
        "image_prob": image["prob"],
        **{key: row.get(key, "") for key in ("npy", "models_npz", "map_size", "map_max", "map_note")},
    }
    columns.update({f"image_{m.column}": image[m.column] for m in job.models})
    return columns


def _gallery_entry(
    job: ExplainJob, chosen: SelectedStudy, study: pd.Series, weights: Mapping[str, float], cannot: Sequence[str]
) -> dict[str, Any]:
    """A study of the report's gallery: key, reasons, probabilities, label, the heatmap's models; images added later."""
    import math

    probs = {m.name: float(study[m.column]) for m in job.models if _finite(study[m.column])}
    label = study["label"]
    return {
        "study": chosen.study,
        "reasons": list(chosen.reasons),
        "body_part": str(study["body_part"]),
        "prob": float(study["prob"]) if _finite(study["prob"]) else math.nan,
        "label": None if label is None or _is_na(label) else int(label),
        "pred": None if _is_na(study["pred"]) else int(study["pred"]),
        "models": probs,
        "heatmap_models": dict(weights),
        "cannot_explain": list(cannot),
        "images": [],
    }


def _finite(value: Any) -> bool:
    try:
        import math

        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _is_na(value: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def _write_index(job: ExplainJob, rows: list[dict[str, Any]], staging: Path) -> Path:
    import pandas as pd

    columns = [*INDEX_COLUMNS, *(m.column for m in job.models), *(f"image_{m.column}" for m in job.models)]
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("label", "pred"):
        frame[column] = frame[column].astype("Int64")
    return atomic_write_csv(staging / INDEX_FILE, frame)


# ------------------------------------------------------------------------------------------------ folders


class SafeNames:
    """File-system-safe, unique names for study folders and image files (see the module doc)."""

    _UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

    def __init__(self) -> None:
        self._used: set[str] = set()

    def name(self, text: str) -> str:
        """A new safe name for ``text``: its safe form, with a hash of ``text`` when cut or already used."""
        name = self._UNSAFE.sub("_", text).strip("._-") or "item"
        if len(name) > MAX_NAME or name.lower() in self._used:
            digest = hashlib.sha1(os.fsencode(text)).hexdigest()[:8]
            name = f"{name[: MAX_NAME - 9]}-{digest}"
        while name.lower() in self._used:  # two texts of one hash prefix
            name += "_"
        self._used.add(name.lower())
        return name


def _staging_dir(out: Path) -> Path:
    """A fresh ``.heatmaps.partial-<pid>`` folder in ``out`` (stale ones of killed runs removed)."""
    for pattern in (f".{HEATMAPS_DIR}.partial-*", f".{HEATMAPS_DIR}.old-*"):  # of killed runs
        for stale in out.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    staging = out / f".{HEATMAPS_DIR}.partial-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create {staging}: {exc.strerror or exc}") from None
    return staging


def _replace_dir(staging: Path, target: Path) -> None:
    """Rename the finished ``staging`` folder to ``target``, replacing an earlier one."""
    if target.exists() and not target.is_dir():
        raise OutputError(f"cannot write {target}: it is a file, not a folder")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _removed(target: Path) -> str:
    """Remove an earlier run's heatmaps folder (it would be taken for this run's); say so, or ""."""
    if not target.is_dir():
        return ""
    shutil.rmtree(target, ignore_errors=True)
    return f" (removed the earlier {target})"
