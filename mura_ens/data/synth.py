"""Synthetic MURA: a small, learnable, deterministic stand-in for the real dataset.

``make_synthetic_mura(out, ...)`` writes

    out/MURA-v1.1/{train,valid}/XR_<PART>/patientNNNNN/studyN_{positive,negative}/imageN.png
    out/MURA-v1.1/{train,valid}_image_paths.csv        (no header, like the originals)
    out/MURA-v1.1/{train,valid}_labeled_studies.csv    (no header, trailing slash, 0/1)
    out/synth_summary.json                              (the returned summary)

What the images look like
    A bright bone-like shape per body part (capsules: shafts, heads, phalanges,
    carpals) over a grey soft-tissue halo on a dark, noisy background. Each
    image of a study is another view (rotation, flip, scale, shift) of that
    part. About 70% of PNGs are grayscale, 30% RGB; longest side = ``size``,
    the other side 60-100% of it.

What makes a study abnormal (the thing to learn)
    An abnormal study carries one injury type: a dark oblique fracture line
    across the main bone (thickness about 6% of ``size``), bright metal
    hardware (a disc of radius 7-10% of ``size`` on the bone, sometimes with
    a plate), or both (40/40/20%). About 85% of the images of an abnormal study show it;
    about 5% of the images of normal studies show one too (noise), so the
    task is learnable at 64 px but not trivial.

Ratios and structure
    Abnormal studies per part match MURA's train ratios (:data:`ABNORMAL_RATIOS`,
    exact up to rounding); 1-4 images per study; patients hold 1-3 studies;
    train/valid are split by patient (train ids from 00001, valid ids from
    11185, like MURA). One train patient id appears under two body parts
    (a real MURA quirk) so study keys must include the body part.

Quirks (``quirks=True``, the default)
    - ``._image1.png``: an AppleDouble file (garbage bytes) next to a train
      image; not listed in the image CSV.
    - one truncated PNG (an extra image in a *valid* study, listed in the CSV).
    - one zero-byte ``.png`` (an extra image in a *train* study, listed).
    - one relabelled study (train): its folder name says the opposite of the
      studies CSV. The CSV holds the true label, the one the pixels follow.

Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..constants import BODY_PARTS
from ..errors import UsageError
from ..io import atomic_write_text
from .synth_mura import KIND_PREVALENCE, KNOBS, MURA_TRAIN_STUDIES, Finding, render_mura
from .synth_shapes import SHAPES as _SHAPES
from .synth_shapes import segment_distance as _segment_distance
from .synth_shapes import view_placer

#: Share of abnormal studies per body part in MURA v1.1 train (rounded).
ABNORMAL_RATIOS: dict[str, float] = {
    "XR_ELBOW": 0.40,
    "XR_FINGER": 0.43,
    "XR_FOREARM": 0.35,
    "XR_HAND": 0.27,
    "XR_HUMERUS": 0.48,
    "XR_SHOULDER": 0.50,
    "XR_WRIST": 0.40,
}

#: Chance that an image of an abnormal / normal study shows an abnormality.
FEATURE_RATE_ABNORMAL = 0.85
FEATURE_RATE_NORMAL = 0.05

#: The ``difficulty`` values: ``mura`` (the default) and ``easy`` (for fast tests).
DIFFICULTIES = ("mura", "easy")
#: The ground-truth table written next to the official CSVs (see docs/synthetic.md).
FINDINGS_CSV = "findings.csv"
FINDINGS_HEADER = "path,kind,x0,y0,x1,y1\n"

FIRST_TRAIN_PATIENT = 1
FIRST_VALID_PATIENT = 11185
MIN_SIZE = 32

_IMAGES_PER_STUDY = (1, 2, 3, 4)
_IMAGES_PER_STUDY_P = (0.2, 0.3, 0.3, 0.2)
_STUDIES_PER_PATIENT = (1, 2, 3)
_STUDIES_PER_PATIENT_P = (0.75, 0.2, 0.05)
_RGB_SHARE = 0.3
_APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "


@dataclass
class _Study:
    split: str
    part: str
    label: int  # the true label: pixels follow it, the studies CSV holds it
    patient: str = ""
    number: int = 0
    n_images: int = 1
    folder_label: int | None = None  # differs from label only for the relabelled study
    injury: str = ""  # easy: the injury its images show; mura: unused
    findings: list = field(default_factory=list)  # mura: the study's findings, [(kind, seed), ...]
    noisy: bool = False  # mura label noise: the CSV label is the opposite of what the pixels show

    @property
    def pixel_label(self) -> int:
        """The label the pixels follow (differs from ``label``, the CSV's, only for label-noise studies)."""
        return 1 - self.label if self.noisy else self.label

    @property
    def folder(self) -> str:
        suffix = "positive" if self.shown_label == 1 else "negative"
        return f"{self.split}/{self.part}/{self.patient}/study{self.number}_{suffix}"

    @property
    def shown_label(self) -> int:
        return self.label if self.folder_label is None else self.folder_label


def make_synthetic_mura(
    out: str | os.PathLike,
    *,
    studies_per_part: int = 12,
    size: int = 64,
    seed: int = 0,
    quirks: bool = True,
    valid_fraction: float = 0.2,
    overwrite: bool = False,
    difficulty: str = "mura",
) -> dict:
    """Write a synthetic MURA tree under ``out`` and return a summary dict.

    ``difficulty`` is ``"mura"`` (the default: subtle, varied findings among confounders,
    MURA's per-part study counts with ``studies_per_part`` as their mean, label noise;
    :mod:`mura_ens.data.synth_mura`) or ``"easy"`` (``studies_per_part`` studies of every
    part, one obvious injury per abnormal study: fast and learnable, for tests).
    See ``docs/synthetic.md``.

    The summary holds ``out``, ``root`` (the ``MURA-v1.1`` folder), the
    arguments, ``counts[split][part]`` and ``totals[split]`` (studies,
    abnormal, normal, images; labels as in the studies CSV), ``patients``,
    ``shared_patient``, ``quirk_files`` (absolute paths), ``relabelled_study``,
    ``feature_rates`` (measured share of images showing an abnormality, by the label
    the pixels follow), ``label_noise`` (study keys whose CSV label is the opposite of
    what their pixels show), ``findings`` (path of ``findings.csv`` and rows per kind)
    and ``csv`` (the four official CSV paths). It is also written to ``out/synth_summary.json``.
    An existing non-empty ``out/MURA-v1.1`` is an error unless ``overwrite``.
    """
    root = _check_arguments(out, studies_per_part, size, valid_fraction, difficulty, overwrite)
    folder = root.parent
    rng = np.random.default_rng(seed)
    if difficulty == "easy":
        studies = _plan_studies(rng, _easy_counts(studies_per_part), valid_fraction, easy=True)
    else:
        studies = _plan_studies(rng, mura_counts(studies_per_part), valid_fraction, easy=False)
        _plan_mura_findings(rng, studies)
    if quirks:
        _plan_relabelled(rng, studies)

    rows, rates = _render_studies(rng, root, studies, size, difficulty)
    quirk_files = _write_quirk_files(rng, root, studies, size, difficulty) if quirks else {}
    csv_paths = _write_official_csvs(root, studies)
    findings_path = atomic_write_text(root / FINDINGS_CSV, "".join([FINDINGS_HEADER, *rows]))

    summary = _summary(folder, root, studies, seed, size, studies_per_part, valid_fraction, quirks)
    summary["difficulty"] = difficulty
    summary["quirk_files"] = quirk_files
    summary["feature_rates"] = rates
    summary["label_noise"] = [f"{s.split}/{s.part}/{s.patient}/study{s.number}" for s in studies if s.noisy]
    summary["findings"] = {"path": str(findings_path), "rows": _rows_per_kind(rows)}
    summary["csv"] = csv_paths
    atomic_write_text(folder / "synth_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _check_arguments(
    out: str | os.PathLike, studies_per_part: int, size: int, valid_fraction: float, difficulty: str, overwrite: bool
) -> Path:
    """Refuse bad arguments (UsageError); make an empty ``out/MURA-v1.1`` and return it."""
    if difficulty not in DIFFICULTIES:
        raise UsageError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if studies_per_part < 1:
        raise UsageError(f"studies_per_part must be >= 1, got {studies_per_part}")
    if size < MIN_SIZE:
        raise UsageError(f"size must be >= {MIN_SIZE}, got {size}")
    if not 0.0 <= valid_fraction < 1.0:
        raise UsageError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    root = Path(out).absolute() / "MURA-v1.1"
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise UsageError(f"{root} already exists and is not empty; choose another OUT or pass overwrite")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _render_studies(rng: np.random.Generator, root: Path, studies: list[_Study], size: int, difficulty: str):
    """Write every study's PNGs; return the findings.csv rows and the measured feature rates."""
    shown = {0: 0, 1: 0}
    with_feature = {0: 0, 1: 0}
    rows: list[str] = []
    for study in studies:
        folder = root / study.folder
        folder.mkdir(parents=True, exist_ok=True)
        label = study.pixel_label
        for index in range(1, study.n_images + 1):
            if difficulty == "easy":
                has_feature = rng.random() < (FEATURE_RATE_ABNORMAL if label else FEATURE_RATE_NORMAL)
                pixels, boxes = _render_easy(rng, study.part, size, injury=study.injury if has_feature else "")
            else:
                pixels, boxes = _render_mura_view(rng, study, size)
                has_feature = bool(boxes)
            _save_png(folder / f"image{index}.png", pixels)
            rel = f"MURA-v1.1/{study.folder}/image{index}.png"
            rows.extend(f"{rel},{kind},{x0},{y0},{x1},{y1}\n" for kind, (x0, y0, x1, y1) in boxes)
            shown[label] += 1
            with_feature[label] += int(has_feature)
    rates = {
        "abnormal": with_feature[1] / shown[1] if shown[1] else None,
        "normal": with_feature[0] / shown[0] if shown[0] else None,
    }
    return rows, rates


def _rows_per_kind(rows: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        kind = row.split(",")[1]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- structure


def _easy_counts(n: int) -> dict[str, tuple[int, int]]:
    """``easy``: ``n`` studies of every part, abnormal ones at :data:`ABNORMAL_RATIOS`."""
    return {part: (n, int(math.floor(ABNORMAL_RATIOS[part] * n + 0.5))) for part in BODY_PARTS}


def mura_counts(studies_per_part: int) -> dict[str, tuple[int, int]]:
    """``mura``: (studies, abnormal) per part in MURA v1.1 train proportions, ``studies_per_part`` their mean.

    A part gets ``round(7 * studies_per_part * its share of MURA's train studies)`` studies
    (at least 2), of which ``round(its abnormal share * studies)`` abnormal, keeping both
    classes when it has 2 studies or more. Humerus and forearm stay the scarce parts.
    """
    total = sum(sum(pair) for pair in MURA_TRAIN_STUDIES.values())
    counts = {}
    for part in BODY_PARTS:
        normal, abnormal = MURA_TRAIN_STUDIES[part]
        n = max(2, int(math.floor(len(BODY_PARTS) * studies_per_part * (normal + abnormal) / total + 0.5)))
        n_abnormal = min(n - 1, max(1, int(math.floor(n * abnormal / (normal + abnormal) + 0.5))))
        counts[part] = (n, n_abnormal)
    return counts


def _plan_studies(
    rng: np.random.Generator, counts: dict[str, tuple[int, int]], valid_fraction: float, *, easy: bool
) -> list[_Study]:
    """Labels, train/valid split (by patient), patient ids and study numbers (and, ``easy``, injuries)."""
    studies: list[_Study] = []
    next_id = {"train": FIRST_TRAIN_PATIENT, "valid": FIRST_VALID_PATIENT}
    first_train_patient: str | None = None
    for part_index, part in enumerate(BODY_PARTS):
        n, n_abnormal = counts[part]
        labels = np.array([1] * n_abnormal + [0] * (n - n_abnormal))
        rng.shuffle(labels)
        valid_idx = _stratified_pick(rng, labels, _n_valid(n, valid_fraction))
        for split in ("train", "valid"):
            in_split = [i for i in range(n) if (i in valid_idx) == (split == "valid")]
            rng.shuffle(in_split)
            position = 0
            shared_done = False
            while position < len(in_split):
                size = int(rng.choice(_STUDIES_PER_PATIENT, p=_STUDIES_PER_PATIENT_P))
                group = in_split[position : position + size]
                position += size
                # MURA quirk: the second part's first train patient reuses the first part's id.
                if split == "train" and part_index == 1 and not shared_done and first_train_patient:
                    patient, shared_done = first_train_patient, True
                else:
                    patient = f"patient{next_id[split]:05d}"
                    next_id[split] += 1
                if split == "train" and first_train_patient is None:
                    first_train_patient = patient
                for number, i in enumerate(group, start=1):
                    study = _Study(split=split, part=part, label=int(labels[i]), patient=patient, number=number)
                    study.n_images = int(rng.choice(_IMAGES_PER_STUDY, p=_IMAGES_PER_STUDY_P))
                    if easy:
                        study.injury = _easy_injury(rng, study.label)
                    studies.append(study)
    return studies


def _easy_injury(rng: np.random.Generator, label: int) -> str:
    if label:
        return str(rng.choice(["fracture", "metal", "both"], p=[0.4, 0.4, 0.2]))
    return str(rng.choice(["fracture", "metal"]))  # what a false-positive image of a normal study would show


def _plan_mura_findings(rng: np.random.Generator, studies: list[_Study]) -> None:
    """``mura``: each study's finding kinds and seeds (by its part's prevalences), then the label noise."""
    for study in studies:
        prevalence = KIND_PREVALENCE[study.part]
        kinds = list(prevalence)
        p = np.array([prevalence[k] for k in kinds])
        first = str(rng.choice(kinds, p=p / p.sum()))
        chosen = [first]
        if study.label and rng.random() < KNOBS.second_finding:
            rest = [k for k in kinds if k != first and prevalence[k] > 0]
            q = np.array([prevalence[k] for k in rest])
            chosen.append(str(rng.choice(rest, p=q / q.sum())))
        # a normal study keeps one kind: what its rare false-positive images show
        study.findings = [(kind, int(rng.integers(2**62))) for kind in chosen]
    for study in studies:
        if rng.random() < KNOBS.label_noise:
            study.label, study.noisy = 1 - study.label, True


def _n_valid(n: int, valid_fraction: float) -> int:
    if valid_fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, int(math.floor(valid_fraction * n + 0.5))))


def _stratified_pick(rng: np.random.Generator, labels: np.ndarray, k: int) -> set[int]:
    """``k`` indices with about the labels' class ratio, both classes when possible."""
    if k == 0:
        return set()
    positives = [i for i in range(len(labels)) if labels[i] == 1]
    negatives = [i for i in range(len(labels)) if labels[i] == 0]
    k_pos = int(math.floor(k * len(positives) / len(labels) + 0.5))
    if k >= 2 and positives and negatives:
        k_pos = min(max(k_pos, 1), k - 1)
    k_pos = min(k_pos, len(positives))
    k_neg = min(k - k_pos, len(negatives))
    k_pos = k - k_neg
    picked = list(rng.permutation(positives)[:k_pos]) + list(rng.permutation(negatives)[:k_neg])
    return {int(i) for i in picked}


def _plan_relabelled(rng: np.random.Generator, studies: list[_Study]) -> None:
    """Choose the relabelled study before writing (its folder name depends on it)."""
    candidates = [s for s in studies if s.split == "train" and s.part == "XR_HUMERUS"]
    if candidates:
        study = candidates[int(rng.integers(len(candidates)))]
        study.folder_label = 1 - study.label


def _write_quirk_files(rng: np.random.Generator, root: Path, studies: list[_Study], size: int, difficulty: str) -> dict:
    quirk_files: dict[str, str] = {}

    def pick(split: str, part: str) -> _Study | None:
        candidates = [s for s in studies if s.split == split and s.part == part]
        candidates = candidates or [s for s in studies if s.split == split] or studies
        return candidates[int(rng.integers(len(candidates)))] if candidates else None

    study = pick("train", "XR_WRIST")
    if study is not None:
        path = root / study.folder / "._image1.png"
        path.write_bytes(_APPLEDOUBLE_MAGIC + rng.bytes(200))
        quirk_files["appledouble"] = str(path)

    study = pick("valid", "XR_SHOULDER")
    if study is not None:
        study.n_images += 1
        path = root / study.folder / f"image{study.n_images}.png"
        if difficulty == "easy":
            _save_png(path, render_image(rng, study.part, size, injury=""))
        else:
            _save_png(path, render_mura(int(rng.integers(2**62)), study.part, size).pixels)
        data = path.read_bytes()
        path.write_bytes(data[: max(60, int(len(data) * 0.6))])
        quirk_files["truncated"] = str(path)

    study = pick("train", "XR_ELBOW")
    if study is not None:
        study.n_images += 1
        path = root / study.folder / f"image{study.n_images}.png"
        path.write_bytes(b"")
        quirk_files["zero_byte"] = str(path)
    return quirk_files


def _write_official_csvs(root: Path, studies: list[_Study]) -> dict[str, str]:
    paths: dict[str, str] = {}
    for split in ("train", "valid"):
        image_lines: list[str] = []
        study_lines: list[str] = []
        for study in studies:
            if study.split != split:
                continue
            rel = f"MURA-v1.1/{study.folder}/"
            study_lines.append(f"{rel},{study.label}\n")
            image_lines.extend(f"{rel}image{i}.png\n" for i in range(1, study.n_images + 1))
        for name, lines in ((f"{split}_image_paths", image_lines), (f"{split}_labeled_studies", study_lines)):
            paths[name] = str(atomic_write_text(root / f"{name}.csv", "".join(lines)))
    return paths


def _summary(out, root, studies, seed, size, studies_per_part, valid_fraction, quirks) -> dict:
    counts: dict = {}
    totals: dict = {}
    patients: dict = {}
    for split in ("train", "valid"):
        counts[split] = {}
        totals[split] = {"studies": 0, "abnormal": 0, "normal": 0, "images": 0}
        for part in BODY_PARTS:
            rows = [s for s in studies if s.split == split and s.part == part]
            entry = {
                "studies": len(rows),
                "abnormal": sum(s.label for s in rows),
                "normal": sum(1 - s.label for s in rows),
                "images": sum(s.n_images for s in rows),
            }
            counts[split][part] = entry
            for key, value in entry.items():
                totals[split][key] += value
        patients[split] = len({s.patient for s in studies if s.split == split})
    parts_of: dict[str, set] = {}
    for s in studies:
        if s.split == "train":
            parts_of.setdefault(s.patient, set()).add(s.part)
    shared = [(p, sorted(parts)) for p, parts in parts_of.items() if len(parts) > 1]
    relabelled = [s for s in studies if s.folder_label is not None]
    summary = {
        "out": str(out),
        "root": str(root),
        "seed": seed,
        "size": size,
        "studies_per_part": studies_per_part,
        "valid_fraction": valid_fraction,
        "quirks": quirks,
        "counts": counts,
        "totals": totals,
        "patients": patients,
        "shared_patient": {"patient": shared[0][0], "body_parts": shared[0][1], "split": "train"} if shared else None,
        "relabelled_study": None,
    }
    if relabelled:
        s = relabelled[0]
        summary["relabelled_study"] = {
            "path": str(root / s.folder),
            "study": f"{s.split}/{s.part}/{s.patient}/study{s.number}",
            "folder_label": s.folder_label,
            "csv_label": s.label,
        }
    return summary


# --------------------------------------------------------------------------- pixels


def _render_mura_view(rng: np.random.Generator, study: _Study, size: int):
    """One ``mura`` view of ``study``: each of its findings shows with the visible rate of its pixel label."""
    rate = KNOBS.visible_rate if study.pixel_label else KNOBS.normal_finding_rate
    image_seed = int(rng.integers(2**62))
    strength = float(rng.uniform(*KNOBS.strength))
    findings = [Finding(kind, seed, strength) for kind, seed in study.findings if rng.random() < rate]
    rendered = render_mura(image_seed, study.part, size, findings)
    return rendered.pixels, rendered.boxes


def render_image(rng: np.random.Generator, part: str, size: int, *, injury: str = "") -> np.ndarray:
    """One ``easy`` synthetic radiograph of ``part``: a 2-D (gray) or 3-D (RGB) uint8 array.

    ``injury`` is ``""`` (normal), ``"fracture"``, ``"metal"`` or ``"both"``.
    The longest side is ``size``. (The ``mura`` renderer is :func:`mura_ens.data.synth_mura.render_mura`.)
    """
    return _render_easy(rng, part, size, injury=injury)[0]


def _render_easy(rng: np.random.Generator, part: str, size: int, *, injury: str = ""):
    """:func:`render_image`, plus the boxes of what it drew: ``[(kind, (x0, y0, x1, y1)), ...]``."""
    short = int(round(size * rng.uniform(0.6, 1.0)))
    height, width = (size, short) if rng.random() < 0.75 else (short, size)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    unit = float(min(width, height))

    # A random view: rotation about the centre, scale, shift, mirror.
    angle = math.radians(rng.uniform(-15, 15))
    scale = rng.uniform(0.85, 1.05)
    shift = rng.uniform(-0.05, 0.05, size=2) * np.array([width, height])
    mirror = rng.random() < 0.5
    place = view_placer(width, height, angle=angle, scale=scale, shift=shift, mirror=mirror)

    capsules = []
    for x0, y0, x1, y1, radius in _SHAPES[part]:
        (ax, ay), (bx, by) = place(x0, y0), place(x1, y1)
        capsules.append((ax, ay, bx, by, radius * unit * scale * rng.uniform(0.9, 1.1)))

    background = rng.uniform(12, 35)
    image = np.full((height, width), background, dtype=np.float32)
    image += np.float32(rng.uniform(-8, 8)) * (yy / height - 0.5)  # uneven exposure
    bone_level = rng.uniform(150, 195)
    tissue_level = rng.uniform(45, 75)
    bone = np.zeros_like(image)
    tissue = np.zeros_like(image)
    for ax, ay, bx, by, radius in capsules:
        dist = _segment_distance(xx, yy, ax, ay, bx, by)
        bone = np.maximum(
            bone, np.clip((radius - dist) / 1.2 + 0.5, 0, 1) * (0.85 + 0.15 * np.clip(dist / radius, 0, 1))
        )
        tissue = np.maximum(tissue, np.clip((2.0 * radius - dist) / (0.6 * radius), 0, 1))
    image = np.maximum(image, tissue * tissue_level)
    image = np.maximum(image, bone * bone_level) * np.float32(rng.uniform(0.9, 1.1))

    ax, ay, bx, by, radius = capsules[0]
    length = math.hypot(bx - ax, by - ay)
    axis = ((bx - ax) / length, (by - ay) / length) if length > 1e-6 else (0.0, 1.0)
    t = rng.uniform(0.3, 0.7)
    cx, cy = ax + t * (bx - ax), ay + t * (by - ay)
    boxes: list[tuple[str, np.ndarray]] = []
    if injury in ("fracture", "both"):
        # A dark oblique line across the main bone, only where there is bone.
        turn = math.radians(90 + rng.choice([-1, 1]) * rng.uniform(15, 35))
        dx, dy = (
            axis[0] * math.cos(turn) - axis[1] * math.sin(turn),
            axis[0] * math.sin(turn) + axis[1] * math.cos(turn),
        )
        half = max(1.6 * radius, 0.12 * size)
        dist = _segment_distance(xx, yy, cx - half * dx, cy - half * dy, cx + half * dx, cy + half * dy)
        thickness = max(2.0, 0.06 * size)
        crack = np.clip((thickness / 2 - dist) / 0.8 + 0.5, 0, 1) * (bone > 0.3)
        image = image * (1 - 0.85 * crack)
        boxes.append(("fracture", crack > 0))
    if injury in ("metal", "both"):
        image, metal = _add_metal(image, rng, (xx, yy), (cx, cy), axis, max(length, radius), size)
        boxes.append(("hardware", metal > 0))

    image = image + rng.normal(0, 4.0, size=image.shape).astype(np.float32)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if rng.random() < _RGB_SHARE:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels, [(kind, _mask_box(mask)) for kind, mask in boxes if mask.any()]


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def _add_metal(
    image: np.ndarray,
    rng: np.random.Generator,
    grid: tuple[np.ndarray, np.ndarray],
    centre: tuple[float, float],
    axis: tuple[float, float],
    extent: float,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Bright hardware (and its mask): a screw head (disc) on the bone, sometimes a plate along it."""
    xx, yy = grid
    cx, cy = centre
    along = rng.uniform(-0.25, 0.25) * extent
    mx, my = cx + along * axis[0], cy + along * axis[1]
    disc = max(2.5, rng.uniform(0.07, 0.10) * size)
    metal = np.clip(disc - np.hypot(xx - mx, yy - my) + 0.5, 0, 1)
    if rng.random() < 0.5:
        reach = 0.18 * size
        plate = _segment_distance(
            xx, yy, mx - reach * axis[0], my - reach * axis[1], mx + reach * axis[0], my + reach * axis[1]
        )
        metal = np.maximum(metal, np.clip(0.025 * size - plate + 0.5, 0, 1))
    return np.maximum(image, metal * rng.uniform(245, 255)), metal


def _save_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="PNG")
