"""Bone shapes of the synthetic radiographs, shared by the ``easy`` and ``mura`` renderers.

Each body part is a list of capsules (a segment with a radius); :func:`segment_distance`
gives every pixel's distance to one, from which both renderers draw bone and soft tissue.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# Bone shapes as capsules (x0, y0, x1, y1, radius) in unit coordinates: x, y in
# [0, 1] across the canvas width / height, radius in units of the shorter side.
# The first capsule of each part is its "main bone", where injuries go.
SHAPES: dict[str, list[tuple[float, float, float, float, float]]] = {
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


def view_placer(
    width: int, height: int, *, angle: float, scale: float, shift: Sequence[float], mirror: bool
) -> Callable[[float, float], tuple[float, float]]:
    """Unit coordinates -> canvas pixels under one view: mirrored (x -> 1 - x) if ``mirror``, scaled about the
    centre, rotated by ``angle`` (radians), then shifted by ``shift`` pixels (both renderers' views)."""
    cos, sin = math.cos(angle), math.sin(angle)

    def place(x: float, y: float) -> tuple[float, float]:
        if mirror:
            x = 1.0 - x
        px, py = (x - 0.5) * width * scale, (y - 0.5) * height * scale
        return (px * cos - py * sin + width / 2 + shift[0], px * sin + py * cos + height / 2 + shift[1])

    return place


def segment_distance(xx: np.ndarray, yy: np.ndarray, ax: float, ay: float, bx: float, by: float) -> np.ndarray:
    """Distance of every pixel centre to the segment a-b."""
    vx, vy = bx - ax, by - ay
    length2 = vx * vx + vy * vy
    if length2 < 1e-9:
        return np.hypot(xx - ax, yy - ay)
    t = np.clip(((xx - ax) * vx + (yy - ay) * vy) / length2, 0.0, 1.0)
    return np.hypot(xx - (ax + t * vx), yy - (ay + t * vy))
