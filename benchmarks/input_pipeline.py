"""Training input: tf.data throughput per core vs a bare Pillow loop, and the epoch-2 speed-up of the decoded-image cache.

    python benchmarks/input_pipeline.py [--quick] [--images N] [--repeats N] [--cache DIR]

On a folder of MURA-like 512-px PNGs (grayscale and RGB), at 256 px, batch 16:

- ``pillow_img_s``: one thread, ``load_image`` (decode + resize, what every
  pipeline does per image) in a plain loop: one core's worth;
- ``tfdata_img_s``: one epoch of the training ``tf.data`` pipeline
  (``mura_ens.training.pipeline.training_dataset``: shuffle, parallel decode
  and resize, batching, random flips and rotation), iterated without a
  model; ``tfdata_img_s_per_core`` divides it by the usable CPUs;
- ``cached_epoch1_img_s`` / ``cached_epoch2_img_s``: the same pipeline
  reading through ``mura_ens.training.cache.ImageCache`` (``--cache DIR``,
  default a fresh folder): epoch 1 decodes and stores, epoch 2 reads the
  memory-mapped pixels.

The same two pipelines without augmentation (``--no-augment`` training, and
what validation batches cost) show the decode side alone.

- ``tfdata_free_order_img_s`` (and ``*_no_augment``): the training pipeline
  with ``StreamSettings(deterministic=False)``, i.e. the parallel decode hands
  images over as they finish instead of in the seeded order. Training uses
  ``deterministic=True`` (reproducible seeded runs); this is what it costs.

Ratios: ``tfdata_per_core_vs_pillow`` and ``cache_epoch2_speedup`` (cached
epoch 2 vs an uncached epoch, alternated in the same run), and both again
``*_no_augment``; ``deterministic_vs_free_order`` (and ``*_no_augment``): the
seeded order's speed relative to the free order (1.0 = no cost), the median of the
per-round ratios.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    alternate,
    base_parser,
    header,
    make_png_folder,
    median,
    note,
    ratio,
    result,
    safe_ratio,
    work_dir,
)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def make_dataset(frame, *, size: int, batch_size: int, cache=None, augment: bool = True, deterministic: bool = True):
    """The training pipeline (``training_dataset``) over ``frame``; with ``cache``, reading through the ImageCache."""
    import numpy as np

    from mura_ens.training import pipeline

    settings = pipeline.StreamSettings(
        image_size=size,
        resize_policy="stretch",
        batch_size=batch_size,
        seed=0,
        deterministic=deterministic,
        cache=cache,
    )
    return pipeline.training_dataset(
        frame,
        np.ones(len(frame), np.float32),
        settings,
        failures=pipeline.LoadFailures(),
        shuffle=True,
        augment=augment,
    )


def epoch_rate(dataset, n_images: int) -> float:
    """Images/s of one full pass over ``dataset`` (the batches are materialised, nothing else)."""
    start = time.perf_counter()
    seen = 0
    for images, _labels, _weights in dataset:
        seen += int(images.shape[0])
    elapsed = time.perf_counter() - start
    if seen != n_images:
        raise RuntimeError(f"epoch yielded {seen} images, expected {n_images}")
    return seen / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="PNGs per epoch (default 640)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache", default=None, help="cache folder (default: a fresh folder in the work folder)")
    args = parser.parse_args(argv)
    n_images = args.images or (48 if args.quick else 640)
    repeats = args.repeats or (1 if args.quick else 3)
    size = args.image_size
    header("input_pipeline.py", args)
    work = work_dir(args, "input")
    folder = make_png_folder(work / "pngs", n_images, distinct=min(n_images, 320))

    import pandas as pd

    from mura_ens.data.images import load_image
    from mura_ens.data.manifest import scan_source
    from mura_ens.training.cache import ImageCache
    from mura_ens.training.tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    frame = scan_source(folder).manifest
    frame = frame.assign(label=pd.array(frame["label"].fillna(0).astype(int), dtype="Int64"))
    paths = frame["path"].astype(str).tolist()
    cpus = usable_cpus()
    note(f"{len(paths)} PNGs (512 px) -> {size} px, batch {args.batch_size}, {cpus} usable CPUs, TF {tf.__version__}")

    def pillow() -> float:
        start = time.perf_counter()
        for path in paths:
            load_image(path, size, "stretch")
        return len(paths) / (time.perf_counter() - start)

    cache_dir = Path(args.cache) if args.cache else work / "cache"
    if not args.cache:
        shutil.rmtree(cache_dir, ignore_errors=True)
    cache = ImageCache.open(cache_dir, paths, image_size=size, resize_policy="stretch")
    fresh = cache.n_cached == 0
    cached_dataset = make_dataset(frame, size=size, batch_size=args.batch_size, cache=cache)
    epoch1 = epoch_rate(cached_dataset, len(paths))  # fills the cache (unless --cache held it already)
    note(
        f"cache {cache.folder}: {cache.n_cached} images stored"
        + ("" if fresh else " (entry existed: epoch 1 read it too)")
    )
    plain_dataset = make_dataset(frame, size=size, batch_size=args.batch_size)
    plain_noaug = make_dataset(frame, size=size, batch_size=args.batch_size, augment=False)
    cached_noaug = make_dataset(frame, size=size, batch_size=args.batch_size, cache=cache, augment=False)
    free = make_dataset(frame, size=size, batch_size=args.batch_size, deterministic=False)
    free_noaug = make_dataset(frame, size=size, batch_size=args.batch_size, augment=False, deterministic=False)
    for dataset in (plain_dataset, plain_noaug, cached_noaug, free, free_noaug):
        epoch_rate(dataset, len(paths))  # warm-up: graph tracing, file cache
    values = alternate(
        {
            "pillow": pillow,
            "tfdata": lambda: epoch_rate(plain_dataset, len(paths)),
            "cached": lambda: epoch_rate(cached_dataset, len(paths)),
            "tfdata_noaug": lambda: epoch_rate(plain_noaug, len(paths)),
            "cached_noaug": lambda: epoch_rate(cached_noaug, len(paths)),
            "free": lambda: epoch_rate(free, len(paths)),
            "free_noaug": lambda: epoch_rate(free_noaug, len(paths)),
        },
        repeats,
    )
    rates = {key: median(v) for key, v in values.items()}
    note("images/s per repeat " + "; ".join(f"{k} {[round(x, 1) for x in v]}" for k, v in values.items()))
    result("pillow_img_s", rates["pillow"], "images/s, one thread")
    result("tfdata_img_s", rates["tfdata"], f"images/s, training pipeline with augmentation, {cpus} CPUs")
    result("tfdata_img_s_per_core", rates["tfdata"] / cpus, "images/s per CPU")
    result("cached_epoch1_img_s", epoch1, "images/s, decoding and storing" if fresh else "images/s")
    result("cached_epoch2_img_s", rates["cached"], "images/s, reading the cache, with augmentation")
    result("tfdata_no_augment_img_s", rates["tfdata_noaug"], "images/s, decode + resize + batch only")
    result("cached_no_augment_epoch2_img_s", rates["cached_noaug"], "images/s, reading the cache, no augmentation")
    result("tfdata_free_order_img_s", rates["free"], "images/s, training pipeline, deterministic=False")
    result("tfdata_free_order_no_augment_img_s", rates["free_noaug"], "images/s, deterministic=False, no augmentation")
    ratio("tfdata_per_core_vs_pillow", safe_ratio(rates["tfdata"] / cpus, rates["pillow"]))
    ratio("tfdata_no_augment_per_core_vs_pillow", safe_ratio(rates["tfdata_noaug"] / cpus, rates["pillow"]))
    ratio("cache_epoch2_speedup", safe_ratio(rates["cached"], rates["tfdata"]))
    ratio("cache_epoch2_speedup_no_augment", safe_ratio(rates["cached_noaug"], rates["tfdata_noaug"]))
    # Paired per round (the two sides ran back to back): steadier than a ratio of medians on a shared machine.
    ratio("deterministic_vs_free_order", median([a / b for a, b in zip(values["tfdata"], values["free"])]))
    ratio(
        "deterministic_vs_free_order_no_augment",
        median([a / b for a, b in zip(values["tfdata_noaug"], values["free_noaug"])]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
