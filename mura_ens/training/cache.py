"""Decoded-image cache for training: each PNG is decoded and resized once, later epochs (and runs) read pixels.

A cache entry is a folder ``<cache_dir>/<key>/`` holding

- ``images.u8``: a memory-mapped uint8 array (N, S, S, 3) of resized RGB pixels,
- ``state.u8``: one byte per image: 0 not decoded yet, 1 cached, 2+k failed
  with ``IMAGE_STATUSES[k]`` (a bad image is not retried on every epoch),
- ``index.json``: the paths (row order), size, resize policy and key.

The key is a hash of the image list — each path with its file size and
modification time — and of the size and resize policy, so a changed file, a
different manifest or another input size gets a new entry, and the same
data reuse it across runs. Pixels are written by the first epoch that needs
them (:meth:`ImageCache.load`, safe from the parallel threads of a
``tf.data`` map: every image has its own row) or up front by
:meth:`ImageCache.fill`. Nothing here imports TensorFlow; the loader has the
signature of :func:`mura_ens.training.pipeline._numpy_loader`'s function.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..data.images import IMAGE_STATUSES, ImageError, check_policy, load_image
from ..errors import UsageError

#: Bump when the file layout changes: old entries are then ignored.
CACHE_FORMAT = 1
_MISSING, _OK, _FAILED = 0, 1, 2


def cache_key(paths: Sequence[str], *, image_size: int, resize_policy: str) -> str:
    """Hex key of an image list (paths, file sizes, mtimes) at one size and policy."""
    digest = hashlib.sha256(f"mura-ens-cache/{CACHE_FORMAT}/{int(image_size)}/{resize_policy}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            signature = f"{stat.st_size}/{stat.st_mtime_ns}"
        except OSError:
            signature = "missing"
        digest.update(f"{path}\t{signature}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


class ImageCache:
    """Resized uint8 pixels of a fixed list of images, memory-mapped from ``folder``; see the module docstring."""

    def __init__(self, folder: Path, paths: Sequence[str], *, image_size: int, resize_policy: str):
        self.folder = Path(folder)
        self.paths = [str(p) for p in paths]
        self.image_size = int(image_size)
        self.resize_policy = resize_policy
        self._row = {path: i for i, path in reversed(list(enumerate(self.paths)))}
        shape = (len(self.paths), self.image_size, self.image_size, 3)
        self.images = (
            np.memmap(self.folder / "images.u8", dtype=np.uint8, mode="r+", shape=shape)
            if len(self.paths)
            else np.zeros(shape, np.uint8)
        )
        self.state = (
            np.memmap(self.folder / "state.u8", dtype=np.uint8, mode="r+", shape=(len(self.paths),))
            if len(self.paths)
            else np.zeros(0, np.uint8)
        )

    @classmethod
    def open(
        cls, cache_dir: str | os.PathLike, paths: Sequence[str], *, image_size: int, resize_policy: str = "stretch"
    ) -> ImageCache:
        """The cache entry of ``paths`` at ``image_size`` / ``resize_policy`` under ``cache_dir``, created if new.

        A new entry is built in a temporary folder and renamed into place, so
        two runs starting together end up sharing one complete entry.
        """
        check_policy(resize_policy)
        if int(image_size) < 1:
            raise UsageError(f"cache image size must be >= 1, got {image_size}")
        cache_dir = Path(cache_dir)
        if cache_dir.exists() and not cache_dir.is_dir():
            raise UsageError(f"--cache must be a folder, got a file: {cache_dir}")
        paths = [str(p) for p in paths]
        key = cache_key(paths, image_size=image_size, resize_policy=resize_policy)
        folder = cache_dir / key
        if not (folder / "index.json").is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
            try:
                n, size = len(paths), int(image_size)
                with open(staging / "images.u8", "wb") as fh:
                    fh.truncate(n * size * size * 3)  # sparse: disk is used as images arrive
                with open(staging / "state.u8", "wb") as fh:
                    fh.truncate(n)
                index = {
                    "format": CACHE_FORMAT,
                    "key": key,
                    "image_size": size,
                    "resize_policy": resize_policy,
                    "count": n,
                    "paths": paths,
                }
                (staging / "index.json").write_text(json.dumps(index), encoding="utf-8")
                try:
                    os.rename(staging, folder)
                except OSError:  # another process made it first (or a stale empty folder is in the way)
                    if not (folder / "index.json").is_file():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return cls(folder, paths, image_size=image_size, resize_policy=resize_policy)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_cached(self) -> int:
        """Images whose pixels are in the cache."""
        return int(np.count_nonzero(self.state == _OK))

    @property
    def complete(self) -> bool:
        """True when every image has been decoded once (cached or known to fail)."""
        return not bool(np.any(self.state == _MISSING))

    def load(self, path: str) -> np.ndarray:
        """Pixels of ``path`` (a copy, (S, S, 3) uint8): from the cache, or decoded now and stored.

        Raises :class:`~mura_ens.data.images.ImageError` for an image that
        failed (now or on an earlier epoch) and ``KeyError`` for a path not
        in the list.
        """
        row = self._row[path]
        state = int(self.state[row])
        if state == _OK:
            return np.array(self.images[row])
        if state >= _FAILED:
            raise ImageError(IMAGE_STATUSES[state - _FAILED], path, "failed when first decoded (cached)")
        try:
            pixels = load_image(path, self.image_size, self.resize_policy)
        except ImageError as exc:
            self.state[row] = _FAILED + IMAGE_STATUSES.index(exc.status)
            raise
        self.images[row] = pixels
        self.state[row] = _OK  # after the pixels: a reader never sees a half-written row marked cached
        return pixels

    def numpy_loader(self, failures=None) -> Callable[[bytes], tuple[np.ndarray, np.bool_]]:
        """``load(path_bytes) -> (pixels, ok)`` for ``tf.numpy_function``, like the pipeline's uncached loader.

        A failed image gives zeros and ``ok`` False and is recorded in
        ``failures`` (a :class:`~mura_ens.training.pipeline.LoadFailures`).
        """
        size = self.image_size

        def load(path_bytes: bytes) -> tuple[np.ndarray, np.bool_]:
            path = path_bytes.decode("utf-8") if isinstance(path_bytes, bytes) else str(path_bytes)
            try:
                return self.load(path), np.bool_(True)
            except ImageError as exc:
                if failures is not None:
                    failures.add(path, exc.status)
            except Exception as exc:
                if failures is not None:
                    failures.add(path, f"unreadable ({type(exc).__name__})")
            return np.zeros((size, size, 3), dtype=np.uint8), np.bool_(False)

        return load

    def fill(self, *, workers: int | None = None) -> int:
        """Decode every image not yet decoded, ``workers`` threads at a time; return how many were tried."""
        from concurrent.futures import ThreadPoolExecutor

        todo = [self.paths[i] for i in np.flatnonzero(self.state == _MISSING)]

        def one(path: str) -> None:
            try:
                self.load(path)
            except ImageError:
                pass

        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(one, todo))
        self.flush()
        return len(todo)

    def flush(self) -> None:
        """Write dirty pages to disk now (the OS does it anyway, eventually)."""
        for array in (self.images, self.state):
            if isinstance(array, np.memmap):
                array.flush()
