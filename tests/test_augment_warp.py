"""Augmentation in one warp: the flips folded into the rotation give the same transforms as flipping, then rotating.

``augment_batch`` samples each image through one projective transform that
holds the two random flips and the rotation; ``_augment_batch_before`` (the
previous code, kept as the reference) flips with ``tf.reverse`` first and then
rotates. From the same draws the two must give the same matrices, the same
pixels (up to float rounding of the sampling coordinates) and therefore the
same distribution: flips with probability 1/2 each, independent, and angles
uniform in +-30 degrees about the image centre. A grey batch (every channel
equal, as radiographs stored as RGB are) is warped on one channel and
repeated: the same bits as the full warp.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.tf

N_DRAWS = 20_000


def _tf():
    from mura_ens.training.tf_runtime import import_tensorflow

    return import_tensorflow()[0]


def _flips_then_rotation(flip_lr, flip_ud, angles, height, width) -> np.ndarray:
    """(N, 3, 3) output -> input maps of "flip, then rotate about the centre", composed in float64 (numpy)."""
    cos, sin = np.cos(angles), np.sin(angles)
    maps = np.zeros((len(angles), 3, 3))
    maps[:, 0] = np.stack([cos, -sin, ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2], axis=1)
    maps[:, 1] = np.stack([sin, cos, ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2], axis=1)
    maps[:, 2, 2] = 1
    # The rotated image reads the flipped one at T(x); the flipped image reads the input at flip(T(x)).
    flip = np.tile(np.eye(3), (len(angles), 1, 1))
    flip[flip_lr, 0, :] = [-1, 0, width - 1]
    flip[flip_ud, 1, :] = [0, -1, height - 1]
    return flip @ maps


def test_one_warp_holds_the_same_transforms_and_distribution_as_flips_then_rotation():
    from mura_ens.training.pipeline import MAX_ROTATION_DEGREES, _augment_draws, _augment_transforms

    tf = _tf()
    height, width = 40, 56
    shape = tf.constant([N_DRAWS, height, width, 3])
    seed = tf.constant([11, 3], tf.int64)
    transforms = _augment_transforms(shape, seed).numpy().astype(np.float64)
    flip_lr, flip_ud, angles = (t.numpy() for t in _augment_draws(N_DRAWS, seed))

    reference = _flips_then_rotation(flip_lr, flip_ud, angles.astype(np.float64), height, width)
    assert transforms.shape == (N_DRAWS, 8) and np.all(transforms[:, 6:] == 0)  # affine: no projective part
    np.testing.assert_allclose(transforms[:, :3], reference[:, 0], atol=1e-4)
    np.testing.assert_allclose(transforms[:, 3:6], reference[:, 1], atol=1e-4)

    # The statistics, read back from the matrices alone: [[sx cos, -sx sin], [sy sin, sy cos]], |angle| <= 30 deg.
    sx, sy = np.sign(transforms[:, 0]), np.sign(transforms[:, 4])
    recovered = np.degrees(np.arctan2(sy * transforms[:, 3], sy * transforms[:, 4]))
    np.testing.assert_array_equal(sx < 0, flip_lr)
    np.testing.assert_array_equal(sy < 0, flip_ud)
    sigma = math.sqrt(0.25 / N_DRAWS)
    assert abs(np.mean(sx < 0) - 0.5) < 4 * sigma and abs(np.mean(sy < 0) - 0.5) < 4 * sigma
    assert abs(np.mean((sx < 0) & (sy < 0)) - 0.25) < 4 * math.sqrt(0.1875 / N_DRAWS)  # independent flips
    assert -MAX_ROTATION_DEGREES <= recovered.min() < -29.9 and 29.9 < recovered.max() <= MAX_ROTATION_DEGREES
    # Uniform angles: the empirical CDF stays within a Kolmogorov-Smirnov band (p = 0.001) of the uniform one.
    cdf = np.sort(recovered + MAX_ROTATION_DEGREES) / (2 * MAX_ROTATION_DEGREES)
    ks = np.max(np.abs(cdf - (np.arange(1, N_DRAWS + 1) - 0.5) / N_DRAWS))
    assert ks < 1.95 / math.sqrt(N_DRAWS)
    # Each image turns about its centre, whatever the flips.
    centre = np.array([(width - 1) / 2, (height - 1) / 2, 1.0])
    mapped = np.stack([transforms[:, :3] @ centre, transforms[:, 3:6] @ centre], axis=1)
    np.testing.assert_allclose(mapped, np.broadcast_to(centre[:2], mapped.shape), atol=1e-3)


def _test_images(count: int, height: int, width: int) -> np.ndarray:
    """Smooth gradients with a bright off-centre block and noise, 0-255 float32 (N, H, W, 3); channels differ."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    images = np.repeat(base[None], count, axis=0) + rng.normal(0, 20, (count, height, width, 3))
    images[:, 4:12, 6:16] = 250.0
    return np.clip(images, 0, 255).astype(np.float32)


def test_one_warp_gives_the_pixels_of_flips_then_rotation():
    from mura_ens.training.pipeline import _augment_batch_before, augment_batch

    tf = _tf()
    images = tf.constant(_test_images(64, 40, 56))
    for k in range(4):
        seed = tf.constant([k, 9], tf.int64)
        warped = augment_batch(images, seed).numpy()
        before = _augment_batch_before(images, seed).numpy()
        assert warped.shape == before.shape == (64, 40, 56, 3) and warped.dtype == np.float32
        # Bilinear sampling at coordinates that differ by float rounding only (~1e-5 px): a tiny fraction of a level.
        assert np.max(np.abs(warped - before)) < 0.05
        assert not np.allclose(warped, images.numpy(), atol=1.0)  # something did happen
        np.testing.assert_array_equal(warped, augment_batch(images, seed).numpy())  # stateless: same seed, same bytes


def test_grey_batches_warp_one_channel_to_the_same_bits():
    """A batch whose channels are all equal warps one channel and repeats it: bit for bit the full warp."""
    from mura_ens.training.pipeline import _augment_batch_before, _augment_transforms, _warp_channels, augment_batch

    tf = _tf()
    grey = np.repeat(_test_images(32, 48, 48)[..., :1], 3, axis=-1)
    mixed = grey.copy()
    mixed[5, 10:20, 10:20, 2] += 1.0  # one image with a touch of colour: the whole batch takes the full warp
    for images in (grey, mixed):
        batch = tf.constant(images)
        seed = tf.constant([3, 1], tf.int64)
        warped = augment_batch(batch, seed)
        full = _warp_channels(batch, _augment_transforms(tf.shape(batch), seed))
        assert warped.shape == full.shape == images.shape
        np.testing.assert_array_equal(warped.numpy(), full.numpy())
        assert np.max(np.abs(warped.numpy() - _augment_batch_before(batch, seed).numpy())) < 0.05
    channels = augment_batch(tf.constant(grey), tf.constant([3, 1], tf.int64)).numpy()
    np.testing.assert_array_equal(channels[..., 0], channels[..., 2])


def _quadrant_counts(batch: np.ndarray) -> np.ndarray:
    """How many images of ``batch`` hold their bright marker in each quadrant (TL, TR, BL, BR)."""
    half_h, half_w = batch.shape[1] // 2, batch.shape[2] // 2
    quadrants = [batch[:, :half_h, :half_w], batch[:, :half_h, half_w:], batch[:, half_h:, :half_w]]
    quadrants.append(batch[:, half_h:, half_w:])
    sums = np.stack([q[..., 0].sum(axis=(1, 2)) for q in quadrants], axis=1)
    return np.bincount(np.argmax(sums, axis=1), minlength=4)


def test_unseeded_draws_flip_a_marker_into_each_quadrant_as_often_as_before():
    """Stateful draws (seed None): a marker at 45 degrees off-centre ends in each quadrant with probability 1/4."""
    from mura_ens.training.pipeline import _augment_batch_before, augment_batch

    tf = _tf()
    n, size = 1600, 32
    marker = np.zeros((n, size, size, 3), np.float32)
    marker[:, 5:10, 5:10] = 255.0  # top-left, on the diagonal: a +-30 degree turn keeps it in its quadrant
    counts = {
        name: _quadrant_counts(fn(tf.constant(marker)).numpy())
        for name, fn in (("warp", augment_batch), ("before", _augment_batch_before))
    }
    sigma = math.sqrt(n * 0.25 * 0.75)
    for name, count in counts.items():
        assert count.sum() == n
        assert np.all(np.abs(count - n / 4) < 4 * sigma), (name, count)
    # The two samples agree with each other (difference of two binomials).
    assert np.all(np.abs(counts["warp"] - counts["before"]) < 4 * math.sqrt(2) * sigma), counts
