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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..constants import BODY_PARTS
from ..errors import UsageError
from ..io import atomic_write_text

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
    injury: str = ""

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
) -> dict:
    """Write a synthetic MURA tree under ``out`` and return a summary dict.

    The summary holds ``out``, ``root`` (the ``MURA-v1.1`` folder), the
    arguments, ``counts[split][part]`` and ``totals[split]`` (studies,
    abnormal, normal, images; labels as in the studies CSV), ``patients``,
    ``shared_patient``, ``quirk_files`` (absolute paths), ``relabelled_study``,
    ``feature_rates`` (measured share of images showing an abnormality) and
    ``csv`` (the four CSV paths). It is also written to ``out/synth_summary.json``.
    An existing non-empty ``out/MURA-v1.1`` is an error unless ``overwrite``.
    """
    if studies_per_part < 1:
        raise UsageError(f"studies_per_part must be >= 1, got {studies_per_part}")
    if size < MIN_SIZE:
        raise UsageError(f"size must be >= {MIN_SIZE}, got {size}")
    if not 0.0 <= valid_fraction < 1.0:
        raise UsageError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    out = Path(out).absolute()
    root = out / "MURA-v1.1"
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise UsageError(f"{root} already exists and is not empty; choose another OUT or pass overwrite")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    studies = _plan_studies(rng, studies_per_part, valid_fraction)
    if quirks:
        _plan_relabelled(rng, studies)

    shown = {0: 0, 1: 0}
    with_feature = {0: 0, 1: 0}
    for study in studies:
        folder = root / study.folder
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, study.n_images + 1):
            has_feature = rng.random() < (FEATURE_RATE_ABNORMAL if study.label else FEATURE_RATE_NORMAL)
            pixels = render_image(rng, study.part, size, injury=study.injury if has_feature else "")
            _save_png(folder / f"image{index}.png", pixels)
            shown[study.label] += 1
            with_feature[study.label] += int(has_feature)

    quirk_files = _write_quirk_files(rng, root, studies, size) if quirks else {}
    csv_paths = _write_official_csvs(root, studies)

    summary = _summary(out, root, studies, seed, size, studies_per_part, valid_fraction, quirks)
    summary["quirk_files"] = quirk_files
    summary["feature_rates"] = {
        "abnormal": with_feature[1] / shown[1] if shown[1] else None,
        "normal": with_feature[0] / shown[0] if shown[0] else None,
    }
    summary["csv"] = csv_paths
    atomic_write_text(out / "synth_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------- structure


def _plan_studies(rng: np.random.Generator, n: int, valid_fraction: float) -> list[_Study]:
    """Labels, train/valid split (by patient), patient ids and study numbers."""
    studies: list[_Study] = []
    next_id = {"train": FIRST_TRAIN_PATIENT, "valid": FIRST_VALID_PATIENT}
    first_train_patient: str | None = None
    for part_index, part in enumerate(BODY_PARTS):
        n_abnormal = int(math.floor(ABNORMAL_RATIOS[part] * n + 0.5))
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
                    if study.label:
                        study.injury = str(rng.choice(["fracture", "metal", "both"], p=[0.4, 0.4, 0.2]))
                    else:  # what a false-positive image of a normal study would show
                        study.injury = str(rng.choice(["fracture", "metal"]))
                    studies.append(study)
    return studies


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


def _write_quirk_files(rng: np.random.Generator, root: Path, studies: list[_Study], size: int) -> dict:
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
        _save_png(path, render_image(rng, study.part, size, injury=""))
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

# Bone shapes as capsules (x0, y0, x1, y1, radius) in unit coordinates: x, y in
# [0, 1] across the canvas width / height, radius in units of the shorter side.
# The first capsule of each part is its "main bone", where injuries go.
_SHAPES: dict[str, list[tuple[float, float, float, float, float]]] = {
    "XR_HUMERUS": [(0.5, 0.18, 0.5, 0.84, 0.10), (0.5, 0.13, 0.5, 0.13, 0.17), (0.36, 0.88, 0.64, 0.88, 0.07)],
    "XR_FOREARM": [(0.40, 0.08, 0.38, 0.92, 0.075), (0.60, 0.08, 0.62, 0.92, 0.06)],
    "XR_FINGER": [(0.5, 0.40, 0.5, 0.62, 0.10), (0.5, 0.08, 0.5, 0.35, 0.11), (0.5, 0.67, 0.5, 0.86, 0.09)],
    "XR_HAND": [
        (0.30, 0.70, 0.70, 0.70, 0.17),
        (0.22, 0.60, 0.10, 0.30, 0.05),
        (0.37, 0.56, 0.33, 0.10, 0.05),
        (0.50, 0.55, 0.50, 0.06, 0.05),
        (0.63, 0.56, 0.68, 0.10, 0.05),
        (0.78, 0.62, 0.90, 0.35, 0.05),
    ],
    "XR_WRIST": [
        (0.40, 0.55, 0.38, 0.97, 0.10),
        (0.64, 0.58, 0.66, 0.97, 0.065),
        (0.36, 0.40, 0.36, 0.40, 0.08),
        (0.52, 0.38, 0.52, 0.38, 0.08),
        (0.66, 0.41, 0.66, 0.41, 0.07),
        (0.44, 0.27, 0.60, 0.27, 0.07),
        (0.35, 0.03, 0.37, 0.18, 0.045),
        (0.50, 0.02, 0.50, 0.17, 0.045),
        (0.65, 0.03, 0.63, 0.18, 0.045),
    ],
    "XR_ELBOW": [
        (0.50, 0.0, 0.50, 0.44, 0.11),
        (0.50, 0.50, 0.50, 0.50, 0.15),
        (0.47, 0.56, 0.70, 1.0, 0.07),
        (0.57, 0.54, 0.85, 0.95, 0.06),
    ],
    "XR_SHOULDER": [
        (0.44, 0.40, 0.50, 1.0, 0.11),
        (0.44, 0.34, 0.44, 0.34, 0.19),
        (0.74, 0.12, 0.76, 0.66, 0.06),
        (0.05, 0.12, 0.95, 0.07, 0.045),
    ],
}


def render_image(rng: np.random.Generator, part: str, size: int, *, injury: str = "") -> np.ndarray:
    """One synthetic radiograph of ``part``: a 2-D (gray) or 3-D (RGB) uint8 array.

    ``injury`` is ``""`` (normal), ``"fracture"``, ``"metal"`` or ``"both"``.
    The longest side is ``size``.
    """
    short = int(round(size * rng.uniform(0.6, 1.0)))
    height, width = (size, short) if rng.random() < 0.75 else (short, size)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    unit = float(min(width, height))

    # A random view: rotation about the centre, scale, shift, mirror.
    angle = math.radians(rng.uniform(-15, 15))
    scale = rng.uniform(0.85, 1.05)
    shift = rng.uniform(-0.05, 0.05, size=2) * np.array([width, height])
    mirror = rng.random() < 0.5
    cos, sin = math.cos(angle), math.sin(angle)

    def place(x: float, y: float) -> tuple[float, float]:
        if mirror:
            x = 1.0 - x
        px, py = (x - 0.5) * width * scale, (y - 0.5) * height * scale
        return (px * cos - py * sin + width / 2 + shift[0], px * sin + py * cos + height / 2 + shift[1])

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
    if injury in ("metal", "both"):
        image = _add_metal(image, rng, (xx, yy), (cx, cy), axis, max(length, radius), size)

    image = image + rng.normal(0, 4.0, size=image.shape).astype(np.float32)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if rng.random() < _RGB_SHARE:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def _add_metal(
    image: np.ndarray,
    rng: np.random.Generator,
    grid: tuple[np.ndarray, np.ndarray],
    centre: tuple[float, float],
    axis: tuple[float, float],
    extent: float,
    size: int,
) -> np.ndarray:
    """Bright hardware: a screw head (disc) on the bone, sometimes a plate along it."""
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
    return np.maximum(image, metal * rng.uniform(245, 255))


def _segment_distance(xx: np.ndarray, yy: np.ndarray, ax: float, ay: float, bx: float, by: float) -> np.ndarray:
    """Distance of every pixel centre to the segment a-b."""
    vx, vy = bx - ax, by - ay
    length2 = vx * vx + vy * vy
    if length2 < 1e-9:
        return np.hypot(xx - ax, yy - ay)
    t = np.clip(((xx - ax) * vx + (yy - ay) * vy) / length2, 0.0, 1.0)
    return np.hypot(xx - (ax + t * vx), yy - (ay + t * vy))


def _save_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="PNG")
