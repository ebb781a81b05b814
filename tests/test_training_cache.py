"""The decoded-image training cache (mura_ens.training.cache): no TensorFlow needed."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from mura_ens.data.images import ImageError, load_image
from mura_ens.errors import UsageError
from mura_ens.training.cache import ImageCache, cache_key


@pytest.fixture()
def images(synth_small) -> list[str]:
    """Train images of the shared synth tree, plus its zero-byte and truncated quirk files."""
    from pathlib import Path

    root = Path(synth_small["root"])
    paths = sorted(str(p) for p in root.glob("train/XR_HAND/**/*.png") if not p.name.startswith("._"))[:6]
    return paths + [synth_small["quirk_files"]["zero_byte"], synth_small["quirk_files"]["truncated"]]


def test_first_load_decodes_then_reads_the_cache(tmp_path, images, monkeypatch):
    cache = ImageCache.open(tmp_path / "cache", images, image_size=24, resize_policy="stretch")
    assert len(cache) == len(images) and cache.n_cached == 0 and not cache.complete
    first = cache.load(images[0])
    assert np.array_equal(first, load_image(images[0], 24, "stretch"))
    assert cache.n_cached == 1

    import mura_ens.training.cache as module

    calls = []
    monkeypatch.setattr(module, "load_image", lambda *a, **k: calls.append(a) or np.zeros((24, 24, 3), np.uint8))
    again = cache.load(images[0])
    assert calls == [] and np.array_equal(again, first)  # served from the memory map, no decode


def test_bad_images_fail_once_and_stay_failed(tmp_path, images, monkeypatch):
    cache = ImageCache.open(tmp_path / "cache", images, image_size=24, resize_policy="stretch")
    zero_byte, truncated = images[-2], images[-1]
    with pytest.raises(ImageError) as first:
        cache.load(zero_byte)
    assert first.value.status == "empty_file"
    import mura_ens.training.cache as module

    monkeypatch.setattr(module, "load_image", lambda *a, **k: pytest.fail("a failed image was decoded again"))
    with pytest.raises(ImageError) as again:
        cache.load(zero_byte)
    assert again.value.status == "empty_file"

    failures = {}

    class Failures:
        def add(self, path, status):
            failures[path] = status

    monkeypatch.undo()
    load = cache.numpy_loader(Failures())
    pixels, ok = load(truncated.encode())
    assert not ok and pixels.shape == (24, 24, 3) and not pixels.any()
    assert failures == {truncated: "truncated"}


def test_entry_is_reused_across_opens_and_keyed_by_content(tmp_path, images):
    cache = ImageCache.open(tmp_path / "cache", images, image_size=24, resize_policy="stretch")
    assert cache.fill(workers=3) == len(images)
    assert cache.complete and cache.n_cached == len(images) - 2
    reopened = ImageCache.open(tmp_path / "cache", images, image_size=24, resize_policy="stretch")
    assert reopened.folder == cache.folder and reopened.n_cached == len(images) - 2
    assert np.array_equal(reopened.load(images[3]), load_image(images[3], 24, "stretch"))

    other_size = ImageCache.open(tmp_path / "cache", images, image_size=32, resize_policy="stretch")
    other_policy = ImageCache.open(tmp_path / "cache", images, image_size=24, resize_policy="pad")
    assert len({cache.folder, other_size.folder, other_policy.folder}) == 3

    import shutil

    own = [shutil.copy(p, tmp_path / f"own{i}.png") for i, p in enumerate(images[:2])]
    key = cache_key(own, image_size=24, resize_policy="stretch")
    assert cache_key(own, image_size=24, resize_policy="stretch") == key
    stat = os.stat(own[0])
    os.utime(own[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file changed
    assert cache_key(own, image_size=24, resize_policy="stretch") != key


def test_parallel_loads_from_threads(tmp_path, images):
    cache = ImageCache.open(tmp_path / "cache", images[:6], image_size=24, resize_policy="pad")
    results: dict[str, np.ndarray] = {}

    def worker(path):
        results[path] = cache.load(path)

    threads = [threading.Thread(target=worker, args=(p,)) for p in images[:6] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for path in images[:6]:
        assert np.array_equal(results[path], load_image(path, 24, "pad"))
    assert cache.n_cached == 6


def test_bad_arguments(tmp_path, images):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="must be a folder"):
        ImageCache.open(tmp_path / "file", images, image_size=24)
    with pytest.raises(UsageError, match="resize policy"):
        ImageCache.open(tmp_path / "cache", images, image_size=24, resize_policy="crop")
