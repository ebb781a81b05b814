"""The ``mura`` difficulty of the synthetic radiographs: subtle findings among confounders.

:func:`render_mura` draws one view of one body part from a seed, with the
findings it is given (:mod:`mura_ens.data.synth_lesions`), and returns the
pixels and, per finding that stays visible, its box in the image's pixels. The
image's own random stream (view, anatomy, exposure, blur, marks, noise) never
depends on the findings, and a finding changes pixels only inside its box: the
same seed rendered with and without a finding differs only there.

What varies from image to image, besides the view (rotation, scale, shift, mirror):
bone radius, cortex thickness and trabecular texture; soft-tissue width,
density and texture; exposure (background, gain, gamma, a heel-effect gradient);
blur; noise; collimation, laterality marker and initials (:mod:`synth_marks`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .synth_lesions import Bone, Canvas, draw_finding
from .synth_marks import draw_marks
from .synth_shapes import SHAPES, segment_distance, view_placer

#: Study counts (normal, abnormal) per body part in MURA v1.1 train: the ``mura`` proportions.
MURA_TRAIN_STUDIES: dict[str, tuple[int, int]] = {
    "XR_ELBOW": (1094, 660),
    "XR_FINGER": (1280, 655),
    "XR_FOREARM": (590, 287),
    "XR_HAND": (1497, 521),
    "XR_HUMERUS": (321, 271),
    "XR_SHOULDER": (1364, 1457),
    "XR_WRIST": (2134, 1326),
}

#: Share of each finding kind among the abnormal studies of a body part (the specialists' edge).
KIND_PREVALENCE: dict[str, dict[str, float]] = {
    "XR_ELBOW": {"fracture": 0.5, "hardware": 0.2, "lytic": 0.05, "degenerative": 0.15, "periosteal": 0.1},
    "XR_FINGER": {"fracture": 0.45, "hardware": 0.05, "lytic": 0.05, "degenerative": 0.4, "periosteal": 0.05},
    "XR_FOREARM": {"fracture": 0.45, "hardware": 0.3, "lytic": 0.05, "degenerative": 0.0, "periosteal": 0.2},
    "XR_HAND": {"fracture": 0.35, "hardware": 0.05, "lytic": 0.1, "degenerative": 0.45, "periosteal": 0.05},
    "XR_HUMERUS": {"fracture": 0.4, "hardware": 0.2, "lytic": 0.25, "degenerative": 0.0, "periosteal": 0.15},
    "XR_SHOULDER": {"fracture": 0.25, "hardware": 0.2, "lytic": 0.1, "degenerative": 0.4, "periosteal": 0.05},
    "XR_WRIST": {"fracture": 0.55, "hardware": 0.15, "lytic": 0.05, "degenerative": 0.2, "periosteal": 0.05},
}


@dataclass(frozen=True)
class MuraKnobs:
    """How hard ``mura`` is: the calibrated values are the defaults (see docs/synthetic.md)."""

    visible_rate: float = 0.9  # chance that an image of an abnormal study shows its finding
    second_finding: float = 0.15  # chance that an abnormal study has a second finding kind
    normal_finding_rate: float = 0.01  # chance that an image of a normal study shows a finding anyway
    label_noise: float = 0.03  # share of studies whose CSV label is the opposite of what the pixels show
    strength: tuple[float, float] = (1.2, 1.6)  # per-view multiplier of a finding's contrast
    finding_scale: float = 2.8  # finding sizes (widths, radii, lengths) scale with the longest side times this


KNOBS = MuraKnobs()


@dataclass(frozen=True)
class Finding:
    """A finding to draw: its kind, its seed (where and how, the same in every view of a study) and strength."""

    kind: str
    seed: int
    strength: float = 1.0


@dataclass
class Rendered:
    """One rendered image: ``pixels`` (uint8, 2-D gray or 3-D RGB) and ``boxes`` of its visible findings."""

    pixels: np.ndarray
    boxes: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)  # kind, (x0, y0, x1, y1)


def render_mura(seed: int, part: str, size: int, findings: Sequence[Finding] = ()) -> Rendered:
    """One ``mura``-difficulty radiograph of ``part`` (longest side ``size``) showing ``findings``.

    Boxes are inclusive pixel coordinates of the stored image; a finding hidden
    under collimation or a mark in this view gets no box (and changes no pixel).
    """
    rng = np.random.default_rng(seed)
    height, width = _canvas_shape(rng, size)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bones = _place_bones(rng, part, width, height)
    density, tissue = _anatomy(rng, bones, xx, yy, size)
    canvas = Canvas(xx=xx, yy=yy, density=density, size=size * KNOBS.finding_scale)

    deltas = []
    for finding in findings:
        delta = draw_finding(finding.kind, np.random.default_rng(finding.seed), bones, canvas)
        deltas.append((finding.kind, delta * np.float32(finding.strength)))
    total = density + sum((d for _, d in deltas), np.zeros_like(density))

    image = _expose(rng, total, tissue, yy / height)
    sigma = rng.uniform(0.0, 0.9) * size / 64
    radius = int(math.ceil(2 * sigma)) if sigma > 0.25 else 0
    image = _blur(image, sigma, radius)
    image = 255.0 * np.clip(image / 255.0, 0, 1) ** np.float32(rng.uniform(0.8, 1.25))
    covered = draw_marks(image, rng)
    image = image + rng.normal(0, rng.uniform(2.0, 7.0), size=image.shape).astype(np.float32)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)

    boxes = []
    for kind, delta in deltas:
        box = _visible_box(delta != 0, radius, covered)
        if box is not None:
            boxes.append((kind, box))
    return Rendered(pixels=pixels, boxes=boxes)


def _canvas_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    short = int(round(size * rng.uniform(0.6, 1.0)))
    return (size, short) if rng.random() < 0.75 else (short, size)


def _place_bones(rng: np.random.Generator, part: str, width: int, height: int) -> list[Bone]:
    """The part's capsules under a random view: rotation, scale, shift, mirror; radii jittered."""
    unit = float(min(width, height))
    angle = math.radians(rng.uniform(-20, 20))
    scale = rng.uniform(0.8, 1.1)
    shift = rng.uniform(-0.08, 0.08, size=2) * np.array([width, height])
    mirror = rng.random() < 0.5
    thickness = rng.uniform(0.8, 1.2)  # a thin or a sturdy patient
    place = view_placer(width, height, angle=angle, scale=scale, shift=shift, mirror=mirror)

    bones = []
    for x0, y0, x1, y1, radius in SHAPES[part]:
        (ax, ay), (bx, by) = place(x0, y0), place(x1, y1)
        r = radius * unit * scale * thickness * rng.uniform(0.85, 1.1)
        bones.append(Bone(float(ax), float(ay), float(bx), float(by), float(r)))
    return bones


def _anatomy(rng: np.random.Generator, bones: list[Bone], xx, yy, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bone density (bright cortex, darker medulla, trabecular texture) and soft-tissue thickness maps."""
    density = np.zeros_like(xx)
    tissue = np.zeros_like(xx)
    cortex = rng.uniform(0.45, 0.7)  # inner radius share: thicker or thinner cortex
    spread = rng.uniform(1.5, 2.6)  # soft-tissue width in bone radii
    for bone in bones:
        dist = segment_distance(xx, yy, bone.ax, bone.ay, bone.bx, bone.by)
        r = max(bone.radius, 1.0)
        outer = np.sqrt(np.clip(1 - (dist / r) ** 2, 0, 1))
        inner = np.sqrt(np.clip(1 - (dist / (cortex * r)) ** 2, 0, 1))
        edge = np.clip((r - dist) / 1.0 + 0.5, 0, 1)
        density = np.maximum(density, edge * (0.55 + 0.45 * outer - 0.35 * inner))
        tissue = np.maximum(tissue, np.sqrt(np.clip(1 - (dist / (spread * r)) ** 2, 0, 1)))
    density *= 1 + rng.uniform(0.02, 0.06) * _smooth_noise(rng, xx.shape, max(2, size // 32))
    tissue *= 1 + 0.15 * _smooth_noise(rng, xx.shape, max(2, size // 8))
    return density.astype(np.float32), tissue.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: int) -> np.ndarray:
    """Noise of unit scale that varies over ``cell`` pixels (bilinear upsampling of a coarse grid)."""
    height, width = shape
    coarse = rng.normal(0, 1, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    ys = np.arange(height, dtype=np.float32) / cell
    xs = np.arange(width, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _expose(rng: np.random.Generator, density: np.ndarray, tissue: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Film brightness: background + soft tissue + bone, times gain and a heel-effect gradient."""
    background = rng.uniform(5, 40)
    tissue_level = rng.uniform(30, 80)
    bone_level = rng.uniform(110, 180)
    heel = 1 + rng.uniform(-0.15, 0.15) * (rows - 0.5)
    gain = rng.uniform(0.85, 1.1)
    return ((background + tissue_level * tissue + bone_level * density) * heel * gain).astype(np.float32)


def _blur(image: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian blur truncated at ``radius`` (edges repeated); a pixel depends only on its neighbours."""
    if radius == 0:
        return image
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        out = np.zeros_like(image)
        n = image.shape[axis]
        for k, tap in enumerate(taps):
            out += tap * (padded[k : k + n] if axis == 0 else padded[:, k : k + n])
        image = out
    return image


def _visible_box(support: np.ndarray, radius: int, covered: np.ndarray) -> tuple[int, int, int, int] | None:
    """The inclusive box of a finding's pixels (grown by the blur radius) that no mark covers; None if none."""
    if not support.any():
        return None
    rows, cols = np.nonzero(support)
    height, width = support.shape
    y0, y1 = max(0, rows.min() - radius), min(height - 1, rows.max() + radius)
    x0, x1 = max(0, cols.min() - radius), min(width - 1, cols.max() + radius)
    visible = ~covered[y0 : y1 + 1, x0 : x1 + 1]
    if not visible.any():
        return None
    rows, cols = np.nonzero(visible)
    return int(x0 + cols.min()), int(y0 + rows.min()), int(x0 + cols.max()), int(y0 + rows.max())
