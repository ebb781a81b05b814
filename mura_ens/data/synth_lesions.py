"""The findings of the ``mura`` synthetic radiographs, one function per kind.

Each kind draws a change of the bone-density map (``delta``, in the units of
the density map: about 1 for cortical bone) near one bone of the image, where
that bone is. Everything about *where* and *how* comes from the finding's own
random generator, so the same finding seed gives the same finding (relative to
the bones) in every view of a study, and drawing it never changes the rest of the
image. Outside its ``delta != 0`` pixels a finding changes nothing.

Kinds (:data:`FINDING_KINDS`), after what real MURA abnormal studies show:

``fracture``      a thin lucent line across a bone (complete or not), anywhere along it, joint ends included;
                  width and contrast vary.
``hardware``      orthopaedic metal: a screw, a plate along the shaft, or a wire; very bright.
``lytic``         a lytic lesion: a lucent oval inside a bone, sometimes with a sclerotic rim.
``degenerative``  degenerative joint disease at a bone end: osteophyte spurs at the joint margins,
                  subchondral sclerosis, joint-space narrowing.
``periosteal``    periosteal reaction: a faint bright band (sometimes two) along the outside of a shaft.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .synth_shapes import segment_distance

FINDING_KINDS: tuple[str, ...] = ("fracture", "hardware", "lytic", "degenerative", "periosteal")


@dataclass(frozen=True)
class Bone:
    """One capsule in image pixels: the segment a-b and its radius."""

    ax: float
    ay: float
    bx: float
    by: float
    radius: float

    @property
    def length(self) -> float:
        return math.hypot(self.bx - self.ax, self.by - self.ay)

    def axis(self, rng: np.random.Generator) -> tuple[float, float]:
        """Unit vector a->b (a random direction for a round bone)."""
        if self.length < 1e-6:
            angle = rng.uniform(0, 2 * math.pi)
            return math.cos(angle), math.sin(angle)
        return (self.bx - self.ax) / self.length, (self.by - self.ay) / self.length

    def point(self, t: float, across: float = 0.0, axis: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
        """The point at ``t`` (0..1) along the bone, ``across`` pixels to the side of ``axis``."""
        return (
            self.ax + t * (self.bx - self.ax) - across * axis[1],
            self.ay + t * (self.by - self.ay) + across * axis[0],
        )


@dataclass(frozen=True)
class Canvas:
    """Pixel grid, bone density and scale of one image: what a finding is drawn on."""

    xx: np.ndarray
    yy: np.ndarray
    density: np.ndarray  # bone density, 0 outside bone
    size: float  # finding sizes scale with it (the image's longest side times a difficulty knob)


def draw_finding(kind: str, rng: np.random.Generator, bones: list[Bone], canvas: Canvas) -> np.ndarray:
    """The density change of one finding of ``kind`` (float32, zero where it draws nothing)."""
    if kind not in _DRAW:
        raise ValueError(f"unknown finding kind {kind!r}; known: {', '.join(FINDING_KINDS)}")
    return _DRAW[kind](rng, bones, canvas).astype(np.float32)


def _pick_bone(rng: np.random.Generator, bones: list[Bone], *, long_only: bool = False) -> Bone:
    weights = np.array([b.length + (0.0 if long_only else 2 * b.radius) for b in bones], dtype=float)
    if weights.sum() <= 0:
        weights = np.ones(len(bones))
    return bones[int(rng.choice(len(bones), p=weights / weights.sum()))]


def _line(canvas: Canvas, a: tuple[float, float], b: tuple[float, float], width: float) -> np.ndarray:
    """A soft-edged line of ``width`` pixels, 1 inside, 0 beyond half a pixel outside."""
    dist = segment_distance(canvas.xx, canvas.yy, a[0], a[1], b[0], b[1])
    return np.clip((width / 2 - dist) / 0.7 + 0.5, 0, 1)


def _fracture(rng: np.random.Generator, bones: list[Bone], canvas: Canvas) -> np.ndarray:
    bone = _pick_bone(rng, bones)
    axis = bone.axis(rng)
    t = rng.uniform(0.0, 1.0)  # anywhere, the joint ends included
    turn = math.radians(90 + rng.uniform(-40, 40))
    dx = axis[0] * math.cos(turn) - axis[1] * math.sin(turn)
    dy = axis[0] * math.sin(turn) + axis[1] * math.cos(turn)
    complete = rng.random() < 0.6
    offset = 0.0 if complete else rng.uniform(-0.5, 0.5) * bone.radius
    half = bone.radius * (1.4 if complete else rng.uniform(0.5, 0.9))
    cx, cy = bone.point(t, offset, axis)
    width = max(1.0, canvas.size * rng.uniform(0.04, 0.07))
    line = _line(canvas, (cx - half * dx, cy - half * dy), (cx + half * dx, cy + half * dy), width)
    contrast = rng.uniform(0.55, 0.95)
    return -contrast * line * canvas.density


def _hardware(rng: np.random.Generator, bones: list[Bone], canvas: Canvas) -> np.ndarray:
    bone = _pick_bone(rng, bones, long_only=True)
    axis = bone.axis(rng)
    size = canvas.size
    kind = rng.choice(["screw", "plate", "wire"], p=[0.45, 0.3, 0.25])
    t = rng.uniform(0.15, 0.85)
    metal = np.zeros_like(canvas.density)
    if kind == "wire":
        angle = math.radians(rng.uniform(-25, 25))
        dx = axis[0] * math.cos(angle) - axis[1] * math.sin(angle)
        dy = axis[0] * math.sin(angle) + axis[1] * math.cos(angle)
        half = size * rng.uniform(0.08, 0.2)
        cx, cy = bone.point(t, 0.0, axis)
        return rng.uniform(1.0, 2.0) * _line(
            canvas, (cx - half * dx, cy - half * dy), (cx + half * dx, cy + half * dy), max(1.0, size * 0.01)
        )
    screws = [t] if kind == "screw" else list(t + np.linspace(-0.12, 0.12, int(rng.integers(2, 4))))
    if kind == "plate":
        side = bone.radius * 0.95 * rng.choice([-1, 1])
        start, end = bone.point(screws[0] - 0.05, side, axis), bone.point(screws[-1] + 0.05, side, axis)
        metal = np.maximum(metal, _line(canvas, start, end, max(1.5, size * rng.uniform(0.02, 0.03))))
    tilt = math.radians(90 + rng.uniform(-20, 20))
    dx = axis[0] * math.cos(tilt) - axis[1] * math.sin(tilt)
    dy = axis[0] * math.sin(tilt) + axis[1] * math.cos(tilt)
    for s in screws:
        cx, cy = bone.point(float(s), 0.0, axis)
        half = bone.radius * rng.uniform(0.9, 1.2)
        head = (cx + half * dx, cy + half * dy)
        metal = np.maximum(metal, _line(canvas, (cx - half * dx, cy - half * dy), head, max(1.0, size * 0.016)))
        metal = np.maximum(metal, _line(canvas, head, head, max(1.5, size * 0.035)))
    return rng.uniform(1.0, 2.0) * metal


def _lytic(rng: np.random.Generator, bones: list[Bone], canvas: Canvas) -> np.ndarray:
    bone = _pick_bone(rng, bones)
    axis = bone.axis(rng)
    cx, cy = bone.point(rng.uniform(0.1, 0.9), rng.uniform(-0.35, 0.35) * bone.radius, axis)
    a = canvas.size * rng.uniform(0.06, 0.1)
    b = a * rng.uniform(0.6, 1.0)
    angle = rng.uniform(0, math.pi)
    u = (canvas.xx - cx) * math.cos(angle) + (canvas.yy - cy) * math.sin(angle)
    v = -(canvas.xx - cx) * math.sin(angle) + (canvas.yy - cy) * math.cos(angle)
    radial = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    hole = np.clip((1.0 - radial) * 3.0, 0, 1)
    delta = -rng.uniform(0.5, 0.85) * hole
    if rng.random() < 0.5:  # a sclerotic rim
        rim = np.clip(1.0 - np.abs(radial - 1.15) * 6.0, 0, 1)
        delta = delta + rng.uniform(0.15, 0.35) * rim
    return delta * (canvas.density > 0.05) * np.maximum(canvas.density, 0.3)


def _degenerative(rng: np.random.Generator, bones: list[Bone], canvas: Canvas) -> np.ndarray:
    bone = _pick_bone(rng, bones)
    axis = bone.axis(rng)
    end = 1.0 if rng.random() < 0.5 else 0.0
    out = axis if end == 1.0 else (-axis[0], -axis[1])  # pointing into the joint
    ex, ey = bone.point(end, 0.0, axis)
    r, size = bone.radius, canvas.size
    delta = np.zeros_like(canvas.density)
    # Joint-space narrowing: the bone end grows into the joint.
    grow = r * rng.uniform(0.3, 0.5)
    cap = _line(canvas, (ex, ey), (ex + grow * out[0], ey + grow * out[1]), 2 * r * 0.9)
    delta += rng.uniform(0.4, 0.8) * cap * (canvas.density < 0.05)
    # Subchondral sclerosis: a denser band just inside the end.
    inside = _line(canvas, (ex, ey), (ex - 0.3 * r * out[0], ey - 0.3 * r * out[1]), 2 * r)
    delta += rng.uniform(0.15, 0.4) * inside * (canvas.density > 0.05)
    # Osteophytes: small spurs at one or both margins of the joint.
    for side in rng.permutation([-1.0, 1.0])[: int(rng.integers(1, 3))]:
        sx = ex + side * r * -out[1] + 0.15 * r * out[0]
        sy = ey + side * r * out[0] + 0.15 * r * out[1]
        tip = (sx + side * -out[1] * size * 0.07, sy + side * out[0] * size * 0.07)
        delta += rng.uniform(0.7, 1.0) * _line(canvas, (sx, sy), tip, max(1.0, size * rng.uniform(0.035, 0.05)))
    return delta


def _periosteal(rng: np.random.Generator, bones: list[Bone], canvas: Canvas) -> np.ndarray:
    bone = _pick_bone(rng, bones, long_only=True)
    axis = bone.axis(rng)
    size = canvas.size
    side = rng.choice([-1.0, 1.0])
    t0 = rng.uniform(0.1, 0.55)
    t1 = t0 + rng.uniform(0.2, 0.4)
    delta = np.zeros_like(canvas.density)
    gap = bone.radius + size * rng.uniform(0.01, 0.02)
    for layer in range(int(rng.integers(1, 3))):  # lamellated: sometimes two layers
        offset = side * (gap + layer * size * 0.018)
        band = _line(
            canvas, bone.point(t0, offset, axis), bone.point(t1, offset, axis), size * rng.uniform(0.025, 0.04)
        )
        delta = np.maximum(delta, rng.uniform(0.45, 0.8) * band)
    return delta


_DRAW: dict[str, Callable[[np.random.Generator, list[Bone], Canvas], np.ndarray]] = {
    "fracture": _fracture,
    "hardware": _hardware,
    "lytic": _lytic,
    "degenerative": _degenerative,
    "periosteal": _periosteal,
}
