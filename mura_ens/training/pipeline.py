"""The ``tf.data`` input pipeline: parallel decode + resize with our Pillow loader, augmentation.

Images are decoded and resized by :func:`mura_ens.data.images.load_image`
(inside ``tf.numpy_function``, ``num_parallel_calls=AUTOTUNE``; Pillow drops
the GIL while decoding), so training sees exactly the pixels scoring will.
An image that fails to load never stops training: it is recorded in a
:class:`LoadFailures` and dropped from the training and validation streams;
prediction streams keep the row and flag it instead, so outputs stay aligned
with their manifest rows.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..data.images import ImageError, load_image
from .tf_runtime import import_tensorflow, model_inputs

#: Largest rotation applied by augmentation, in degrees (either way).
MAX_ROTATION_DEGREES = 30.0


class LoadFailures:
    """Thread-safe record of images that could not be loaded: path -> status."""

    def __init__(self):
        self._lock = threading.Lock()
        self._failed: dict[str, str] = {}

    def add(self, path: str, status: str) -> None:
        with self._lock:
            self._failed[path] = status

    def __len__(self) -> int:
        with self._lock:
            return len(self._failed)

    def as_dict(self) -> dict[str, str]:
        with self._lock:
            return dict(sorted(self._failed.items()))

    def by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in self.as_dict().values():
            counts[status] = counts.get(status, 0) + 1
        return counts


def _numpy_loader(size: int, policy: str, failures: LoadFailures):
    def load(path_bytes: bytes) -> tuple[np.ndarray, np.bool_]:
        path = path_bytes.decode("utf-8")
        try:
            return load_image(path, size, policy), np.bool_(True)
        except ImageError as exc:
            failures.add(path, exc.status)
        except Exception as exc:
            failures.add(path, f"unreadable ({type(exc).__name__})")
        return np.zeros((size, size, 3), dtype=np.uint8), np.bool_(False)

    return load


def _load_map(size: int, policy: str, failures: LoadFailures, cache=None):
    tf, _ = import_tensorflow()
    # With a decoded-image cache (mura_ens.training.cache.ImageCache), epochs after the first read pixels from it.
    load = cache.numpy_loader(failures) if cache is not None else _numpy_loader(size, policy, failures)

    def load_tf(path):
        pixels, ok = tf.numpy_function(load, [path], [tf.uint8, tf.bool], stateful=False)
        pixels.set_shape((size, size, 3))
        ok.set_shape(())
        return tf.cast(pixels, tf.float32), ok

    return load_tf


def augment_batch(images: Any, seed: Any = None) -> Any:
    """Random horizontal and vertical flips and a rotation within +-30 degrees, per image, in one warp.

    ``images``: float32 (N, H, W, 3). Each image is flipped left-right with
    probability 1/2, up-down with probability 1/2 (independently), then
    rotated by an angle drawn uniformly in +-30 degrees about its centre:
    bilinear, black fill (the background of a radiograph). The flips are
    folded into the rotation's projective transform, so the whole
    augmentation is one ``ImageProjectiveTransformV3`` per batch (the same
    transforms as flipping first, then rotating), on one channel when the
    batch is grey (:func:`_warp`).
    ``seed``: an int64 tensor of shape (2,) for stateless random draws (the
    same seed gives the same augmentation, whatever thread runs it); ``None``
    draws from TF's stateful generator.
    """
    tf, _ = import_tensorflow()
    return _warp(images, _augment_transforms(tf.shape(images), seed))


def _augment_transforms(shape: Any, seed: Any) -> Any:
    """The (N, 8) transforms :func:`augment_batch` applies to a batch of ``shape``: flips folded into the rotation."""
    flip_lr, flip_ud, angles = _augment_draws(shape[0], seed)
    return _fold_flips(_rotation_transforms(angles, shape), flip_lr, flip_ud, shape)


def _augment_draws(n: Any, seed: Any) -> tuple[Any, Any, Any]:
    """The per-image draws of :func:`augment_batch`: ``(flip_lr, flip_ud, angles)`` (bool, bool, radians)."""
    uniform = _uniform_draws(seed)
    limit = math.radians(MAX_ROTATION_DEGREES)
    return uniform(0, [n]) < 0.5, uniform(1, [n]) < 0.5, uniform(2, [n], -limit, limit)


def _rotation_transforms(angles: Any, shape: Any) -> Any:
    """(N, 8) projective transforms (output -> input pixel map) rotating each image about its centre.

    As in tf-addons / Keras RandomRotation. ``shape``: the batch's (N, H, W, C) shape tensor.
    """
    tf, _ = import_tensorflow()
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    zeros = tf.zeros_like(cos)
    return tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zeros, zeros], axis=1)


def _fold_flips(transforms: Any, flip_lr: Any, flip_ud: Any, shape: Any) -> Any:
    """``transforms`` preceded by the flips: the map a flip of the image followed by ``transforms`` samples.

    Flipping first, then warping, reads the input at ``flip(T(x, y))``; a
    left-right flip maps an input column ``x`` to ``W - 1 - x``, so the
    transform's first row becomes ``(W - 1) - row``; up-down does the same to
    the second row with ``H - 1``.
    """
    tf, _ = import_tensorflow()
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)

    def flipped(row: Any, flip: Any, extent: Any) -> Any:
        sign = tf.where(flip, -1.0, 1.0)[:, None]
        shift = tf.where(flip, extent - 1.0, 0.0)
        return sign * row + tf.stack([tf.zeros_like(shift), tf.zeros_like(shift), shift], axis=1)

    row_x = flipped(transforms[:, 0:3], flip_lr, width)
    row_y = flipped(transforms[:, 3:6], flip_ud, height)
    return tf.concat([row_x, row_y, transforms[:, 6:8]], axis=1)


def _warp(images: Any, transforms: Any) -> Any:
    """``images`` resampled through ``transforms`` (:func:`_warp_channels`), a third of the work for grey batches.

    Radiographs are grey, and half of MURA's PNGs store grey as RGB: when every
    channel of every image in the batch equals the first, only that channel is
    warped and then repeated. The values are the same bits (the warp samples
    each channel independently at the same coordinates); a batch with any
    colour takes the full warp.
    """
    tf, _ = import_tensorflow()
    channels = images.shape[-1] if images.shape[-1] is not None else tf.shape(images)[-1]
    grey = tf.reduce_all(tf.equal(images[..., 1:], images[..., :1]))
    warped = tf.cond(
        grey,
        lambda: tf.tile(_warp_channels(images[..., :1], transforms), [1, 1, 1, channels]),
        lambda: _warp_channels(images, transforms),
    )
    warped.set_shape(images.shape)
    return warped


def _warp_channels(images: Any, transforms: Any) -> Any:
    """``images`` resampled through ``transforms``: bilinear, black fill, same size, every channel."""
    tf, _ = import_tensorflow()
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _augment_batch_before(images: Any, seed: Any = None) -> Any:
    """The augmentation as it was before the flips were folded into the warp (flips, then a rotation).

    Two ``tf.reverse`` + ``tf.where``, then the warp, from the same draws as
    :func:`augment_batch` (same seed, same transforms). Kept only as the
    reference of ``tests/test_augment_warp.py`` and the baseline of
    ``benchmarks/input_pipeline.py``; training never calls it.
    """
    tf, _ = import_tensorflow()
    shape = tf.shape(images)
    flip_lr, flip_ud, angles = _augment_draws(shape[0], seed)
    images = tf.where(flip_lr[:, None, None, None], tf.reverse(images, axis=[2]), images)
    images = tf.where(flip_ud[:, None, None, None], tf.reverse(images, axis=[1]), images)
    return _warp_channels(images, _rotation_transforms(angles, shape))


def _uniform_draws(seed: Any) -> Any:
    """``uniform(k, shape, lo=0, hi=1)``: the k-th independent draw, stateless from ``seed`` unless it is None."""
    tf, _ = import_tensorflow()
    if seed is None:
        return lambda k, shape, lo=0.0, hi=1.0: tf.random.uniform(shape, lo, hi)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    return lambda k, shape, lo=0.0, hi=1.0: tf.random.stateless_uniform(shape, seeds[k], lo, hi)


@dataclass(frozen=True)
class StreamSettings:
    """How a ``fit`` stream decodes and batches images.

    ``batch_size`` is the size of the batches the stream yields (the global
    batch under a distribution strategy). ``seed`` seeds the shuffle and the
    augmentation. ``deterministic`` (default True): the parallel decode hands
    images over in the (seeded) order, so a seeded run is reproducible; False
    lets images go by as they finish decoding (the order then depends on thread
    timing; benchmarks/input_pipeline.py measures what that saves). Multi-worker
    training needs True (every worker must see the same stream to shard it by
    element). ``cache``: an
    :class:`~mura_ens.training.cache.ImageCache` holding the stream's paths at
    this size and policy; decoded pixels are then stored once and reused.
    """

    image_size: int
    resize_policy: str
    batch_size: int
    seed: int = 0
    deterministic: bool = True
    cache: Any = None


def training_dataset(
    frame: pd.DataFrame,
    weights: np.ndarray,
    settings: StreamSettings,
    *,
    failures: LoadFailures,
    shuffle: bool,
    augment: bool,
) -> Any:
    """Batches of ``(images, labels, sample_weights)`` for ``fit`` (training or validation).

    Images that fail to load are filtered out (and recorded in ``failures``).
    ``shuffle`` reshuffles every epoch; ``augment`` applies
    :func:`augment_batch` (training only).
    """
    tf, _ = import_tensorflow()
    paths = frame["path"].astype(str).to_numpy(dtype=object).astype(str)
    labels = pd.to_numeric(frame["label"]).to_numpy(dtype=np.float32).reshape(-1, 1)
    data = tf.data.Dataset.from_tensor_slices((paths, labels, np.asarray(weights, dtype=np.float32)))
    if shuffle:
        data = data.shuffle(len(paths), seed=settings.seed, reshuffle_each_iteration=True)
    load = _load_map(settings.image_size, settings.resize_policy, failures, settings.cache)

    def load_row(path, label, weight):
        pixels, ok = load(path)
        return pixels, label, weight, ok

    deterministic = bool(settings.deterministic)
    data = data.map(load_row, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    data = data.filter(lambda pixels, label, weight, ok: ok)
    data = data.map(lambda pixels, label, weight, ok: (pixels, label, weight))
    data = data.batch(settings.batch_size)
    if augment:
        data = _augmented(data, settings.seed, deterministic)
    return data.prefetch(tf.data.AUTOTUNE)


def _augmented(data, seed: int, deterministic: bool):
    """``data`` with :func:`augment_batch` applied per batch, each batch drawing from its own stateless seed.

    The seeds come from a seeded ``Dataset.random`` (a new sequence every epoch),
    so the augmentation of a batch does not depend on which thread runs it.
    """
    tf, _ = import_tensorflow()
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((data, seeds)).map(
        lambda batch, batch_seed: (augment_batch(batch[0], batch_seed), batch[1], batch[2]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def prediction_dataset(
    paths: list[str] | np.ndarray,
    *,
    image_size: int,
    resize_policy: str,
    batch_size: int,
    failures: LoadFailures,
) -> Any:
    """Batches of ``(images, ok)`` in ``paths`` order; a failed image is all zeros with ``ok`` False."""
    tf, _ = import_tensorflow()
    data = tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=str))
    data = data.map(_load_map(image_size, resize_policy, failures), num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_paths(
    model,
    paths: list[str] | np.ndarray,
    *,
    image_size: int,
    resize_policy: str,
    batch_size: int,
    failures: LoadFailures | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities for ``paths`` (NaN where the image failed to load) and the ok mask."""
    failures = failures if failures is not None else LoadFailures()
    probs: list[np.ndarray] = []
    oks: list[np.ndarray] = []
    data = prediction_dataset(
        paths, image_size=image_size, resize_policy=resize_policy, batch_size=batch_size, failures=failures
    )
    for images, ok in data:
        probs.append(np.asarray(model.predict_on_batch(model_inputs(model, images)), dtype=np.float64).reshape(-1))
        oks.append(ok.numpy())
    if not probs:
        return np.zeros(0), np.zeros(0, dtype=bool)
    prob = np.concatenate(probs)
    ok = np.concatenate(oks).astype(bool)
    prob[~ok] = np.nan
    return prob, ok


def load_batch(paths: list[str], *, image_size: int, resize_policy: str, limit: int) -> tuple[np.ndarray, list[str]]:
    """Up to ``limit`` images that load, as float32 (N, S, S, 3) 0-255, and their paths (no TF)."""
    images, used = [], []
    for path in paths:
        try:
            images.append(load_image(path, image_size, resize_policy))
        except ImageError:
            continue
        used.append(path)
        if len(images) >= limit:
            break
    if not images:
        return np.zeros((0, image_size, image_size, 3), dtype=np.float32), []
    return np.stack(images).astype(np.float32), used
