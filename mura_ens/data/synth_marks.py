"""What real radiographs carry besides anatomy, drawn on the ``mura`` synthetic images.

A model must learn to ignore all of it (none of it depends on the label):

- a laterality marker: a lead "L" or "R" in a square, in one corner;
- the technologist's initials (two or three letters) in another corner;
- collimation borders: zero to three sides cut off by a straight, slightly tilted edge,
  bright (unexposed) or dark (masked by the digitiser).

:func:`draw_marks` paints them onto a float image and returns the mask of the pixels
it replaced, so that a finding hidden under a mark is not reported as visible.
"""

from __future__ import annotations

import math

import numpy as np

#: A 5 x 7 bitmap font for the letters the marks use (one string of 5 characters per row).
_FONT: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".###."),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "J": ("..###", "...#.", "...#.", "...#.", "#..#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "##.##", "#...#"),
}
_INITIALS = "ABCDEGHJKMNPRSTW"
_CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (bottom?, right?)


def glyphs(text: str, scale: int) -> np.ndarray:
    """``text`` in the 5 x 7 font as a boolean array, each font pixel ``scale`` x ``scale``, one column apart."""
    columns = []
    for index, char in enumerate(text):
        if index:
            columns.append(np.zeros((7, 1), dtype=bool))
        columns.append(np.array([[c == "#" for c in row] for row in _FONT[char]], dtype=bool))
    bitmap = np.concatenate(columns, axis=1)
    return np.kron(bitmap, np.ones((scale, scale), dtype=bool))


def draw_marks(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint collimation, the laterality marker and the initials on ``image`` (in place); return the covered mask."""
    height, width = image.shape
    covered = _collimate(image, rng)
    unit = min(height, width)
    scale = max(1, int(round(unit * 0.012)))
    corners = [int(i) for i in rng.permutation(4)[:2]]
    margin = max(1, int(round(unit * rng.uniform(0.02, 0.06))))

    letter = glyphs("L" if rng.random() < 0.5 else "R", scale)
    pad = scale
    box = np.zeros((letter.shape[0] + 2 * pad, letter.shape[1] + 2 * pad), dtype=bool)
    box[pad:-pad, pad:-pad] = letter
    bright_box = rng.random() < 0.5  # a bright square with a dark letter, or a bright letter alone
    marker_level = rng.uniform(215, 250)
    region = _corner_slice(image.shape, box.shape, _CORNERS[corners[0]], margin)
    if region is not None:
        if bright_box:
            image[region] = np.where(box, rng.uniform(20, 60), marker_level)
            covered[region] = True
        else:
            image[region] = np.where(box, marker_level, image[region])
            covered[region] |= box

    initials = "".join(rng.choice(list(_INITIALS), size=int(rng.integers(2, 4))))
    text = glyphs(initials, scale)
    region = _corner_slice(image.shape, text.shape, _CORNERS[corners[1]], margin)
    if region is not None:
        image[region] = np.where(text, rng.uniform(150, 240), image[region])
        covered[region] |= text
    return covered


def _corner_slice(shape: tuple[int, ...], size: tuple[int, ...], corner: tuple[int, int], margin: int):
    height, width = shape[:2]
    h, w = size
    if h + 2 * margin > height or w + 2 * margin > width:
        return None
    y0 = height - margin - h if corner[0] else margin
    x0 = width - margin - w if corner[1] else margin
    return slice(y0, y0 + h), slice(x0, x0 + w)


def _collimate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut 0-3 sides off with a tilted straight edge (bright or dark); the covered mask."""
    height, width = image.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    covered = np.zeros((height, width), dtype=bool)
    n_sides = int(rng.choice([0, 1, 2, 3], p=[0.5, 0.25, 0.18, 0.07]))
    bright = rng.random() < 0.7
    level = rng.uniform(190, 235) if bright else rng.uniform(0, 15)
    for side in rng.permutation(4)[:n_sides]:
        depth = rng.uniform(0.03, 0.12)
        tilt = math.radians(rng.uniform(-4, 4))
        # side 0: top, 1: bottom, 2: left, 3: right; a pixel is covered when it lies beyond the edge.
        if side in (0, 1):
            edge = depth * height + (xx - width / 2) * math.tan(tilt)
            beyond = yy < edge if side == 0 else (height - 1 - yy) < edge
        else:
            edge = depth * width + (yy - height / 2) * math.tan(tilt)
            beyond = xx < edge if side == 2 else (width - 1 - xx) < edge
        covered |= beyond
    if covered.any():
        texture = rng.normal(0, 3.0, size=int(covered.sum())).astype(np.float32)
        image[covered] = level + texture
    return covered
