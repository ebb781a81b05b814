"""Training input: tf.data throughput per core vs a bare Pillow loop, and the epoch-2 speed-up of the decoded-image cache.

    python benchmarks/input_pipeline.py [--quick] [--images N] [--repeats N] [--cache DIR] [--augment-only]

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

Augmentation (issue 14: the flips folded into the rotation's warp):

- ``augment_img_s`` / ``augment_before_img_s``: ``augment_batch`` (one
  projective warp per batch, on one channel when the batch is grey) and
  ``_augment_batch_before`` (the previous code: two ``tf.reverse`` +
  ``tf.where``, then the warp), alone, on batches decoded beforehand
  (``--augment-images``, default 160), one stateless seed per batch as in
  training, all usable CPUs; ``augment_all_channels_img_s``: the one warp
  on all three channels (the folded flips without the grey shortcut);
- ``train_input_img_s``: the real training input on all usable CPUs, i.e.
  ``tfdata_img_s`` (decode + resize + augmentation); ``train_input_before_img_s``:
  the same pipeline with the previous augmentation.

Ratios: ``tfdata_per_core_vs_pillow`` and ``cache_epoch2_speedup`` (cached
epoch 2 vs an uncached epoch, alternated in the same run), and both again
``*_no_augment``; ``deterministic_vs_free_order`` (and ``*_no_augment``): the
seeded order's speed relative to the free order (1.0 = no cost), the median of the
per-round ratios; ``augment_vs_before`` (goal >= 1.7), ``augment_all_channels_vs_before``
and ``train_input_vs_before``, also medians of per-round ratios. ``--augment-only``
measures just these five figures and three ratios.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
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


def make_dataset(
    frame,
    *,
    size: int,
    batch_size: int,
    cache=None,
    augment: bool = True,
    deterministic: bool = True,
    before: bool = False,
):
    """The training pipeline (``training_dataset``) over ``frame``; with ``cache``, reading through the ImageCache.

    ``before``: augment with the previous code (``_augment_batch_before``) instead of ``augment_batch``: the
    pipeline traces its augmentation when it is built, so swapping the module's function while building is enough.
    """
    import numpy as np

    from mura_ens.training import pipeline

    if before:
        current = pipeline.augment_batch
        pipeline.augment_batch = pipeline._augment_batch_before
        try:
            return make_dataset(frame, size=size, batch_size=batch_size, cache=cache, deterministic=deterministic)
        finally:
            pipeline.augment_batch = current
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


def augment_rates(paths: list[str], *, size: int, batch_size: int) -> dict[str, Callable[[], float]]:
    """``augment`` / ``augment_before``: images/s of the new and the previous augmentation on preloaded batches.

    Each batch gets its own stateless seed (as ``training_dataset`` gives it); both sides see the same batches
    and seeds. The functions are compiled (``tf.function``) and warmed up here.
    """

    from mura_ens.training import pipeline
    from mura_ens.training.tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    images, _used = pipeline.load_batch(paths, image_size=size, resize_policy="stretch", limit=len(paths))
    batches = [tf.constant(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    seeds = [tf.constant([index, 1], tf.int64) for index in range(len(batches))]
    n_images = len(images)

    def measure(augment) -> Callable[[], float]:
        compiled = tf.function(augment)

        def run() -> float:
            start = time.perf_counter()
            for batch, seed in zip(batches, seeds):
                compiled(batch, seed)  # eager CPU execution is synchronous: the warp is done on return
            return n_images / (time.perf_counter() - start)

        run()  # tracing
        return run

    def all_channels(images, seed):  # the one warp without the grey shortcut: what folding the flips alone gives
        return pipeline._warp_channels(images, pipeline._augment_transforms(tf.shape(images), seed))

    return {
        "augment": measure(pipeline.augment_batch),
        "augment_before": measure(pipeline._augment_batch_before),
        "augment_all_channels": measure(all_channels),
    }


def report_augmentation(values: dict[str, list[float]], cpus: int) -> None:
    """The augmentation figures and their ratios (paired per round: steadier on a shared machine)."""
    rates = {key: median(v) for key, v in values.items()}
    result("augment_img_s", rates["augment"], f"images/s, augment_batch alone (one warp), {cpus} CPUs")
    result("augment_before_img_s", rates["augment_before"], f"images/s, previous augmentation alone, {cpus} CPUs")
    result("augment_all_channels_img_s", rates["augment_all_channels"], "images/s, one warp on all 3 channels")
    result("train_input_img_s", rates["tfdata"], f"images/s, training input (decode + augmentation), {cpus} CPUs")
    result("train_input_before_img_s", rates["tfdata_before"], "images/s, the same with the previous augmentation")
    paired = {
        "augment_vs_before": ("augment", "augment_before"),
        "augment_all_channels_vs_before": ("augment_all_channels", "augment_before"),
        "train_input_vs_before": ("tfdata", "tfdata_before"),
    }
    for name, (new, old) in paired.items():
        value = median([a / b for a, b in zip(values[new], values[old])])
        ratio(name, value, goal=">= 1.7" if name == "augment_vs_before" else "")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="PNGs per epoch (default 640)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache", default=None, help="cache folder (default: a fresh folder in the work folder)")
    parser.add_argument(
        "--augment-images", type=int, default=None, help="preloaded images for augment_vs_before (default 160)"
    )
    parser.add_argument(
        "--augment-only", action="store_true", help="only the augmentation figures (augment_vs_before, train_input)"
    )
    args = parser.parse_args(argv)
    n_images = args.images or (48 if args.quick else 640)
    repeats = args.repeats or (1 if args.quick else 3)
    size = args.image_size
    header("input_pipeline.py", args)
    work = work_dir(args, "input")
    folder = make_png_folder(work / "pngs", n_images, distinct=min(n_images, 320))

    import pandas as pd

    from mura_ens.data.manifest import scan_source
    from mura_ens.training.tf_runtime import import_tensorflow

    tf, _ = import_tensorflow()
    frame = scan_source(folder).manifest
    frame = frame.assign(label=pd.array(frame["label"].fillna(0).astype(int), dtype="Int64"))
    paths = frame["path"].astype(str).tolist()
    cpus = usable_cpus()
    note(f"{len(paths)} PNGs (512 px) -> {size} px, batch {args.batch_size}, {cpus} usable CPUs, TF {tf.__version__}")

    plain = make_dataset(frame, size=size, batch_size=args.batch_size)
    before = make_dataset(frame, size=size, batch_size=args.batch_size, before=True)
    n_augment = min(len(paths), args.augment_images or (32 if args.quick else 160))
    measures: dict[str, Callable[[], float]] = {
        **augment_rates(paths[:n_augment], size=size, batch_size=args.batch_size),
        "tfdata": lambda: epoch_rate(plain, len(paths)),
        "tfdata_before": lambda: epoch_rate(before, len(paths)),
    }
    if not args.augment_only:
        measures.update(pipeline_measures(frame, args, work))
    for name in ("tfdata", "tfdata_before", "tfdata_noaug", "cached_noaug", "free", "free_noaug"):
        if name in measures:
            measures[name]()  # warm-up: graph tracing, file cache
    values = alternate(measures, repeats)
    note("images/s per repeat " + "; ".join(f"{k} {[round(x, 1) for x in v]}" for k, v in values.items()))
    if not args.augment_only:
        report_pipeline(values, cpus)
    report_augmentation(values, cpus)
    return 0


def pipeline_measures(frame, args, work: Path) -> dict[str, Callable[[], float]]:
    """The Pillow loop, the cached pipeline (epoch 1 run here, reported as ``cached_epoch1``), no-augmentation and
    free-order variants of the training pipeline."""
    from mura_ens.data.images import load_image
    from mura_ens.training.cache import ImageCache

    paths = frame["path"].astype(str).tolist()
    size, batch = args.image_size, args.batch_size

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
    cached = make_dataset(frame, size=size, batch_size=batch, cache=cache)
    epoch1 = epoch_rate(cached, len(paths))  # fills the cache (unless --cache held it already)
    note(
        f"cache {cache.folder}: {cache.n_cached} images stored"
        + ("" if fresh else " (entry existed: epoch 1 read it too)")
    )
    result("cached_epoch1_img_s", epoch1, "images/s, decoding and storing" if fresh else "images/s")
    datasets = {
        "cached": cached,
        "tfdata_noaug": make_dataset(frame, size=size, batch_size=batch, augment=False),
        "cached_noaug": make_dataset(frame, size=size, batch_size=batch, cache=cache, augment=False),
        "free": make_dataset(frame, size=size, batch_size=batch, deterministic=False),
        "free_noaug": make_dataset(frame, size=size, batch_size=batch, augment=False, deterministic=False),
    }
    measures: dict[str, Callable[[], float]] = {"pillow": pillow}
    for name, dataset in datasets.items():
        measures[name] = lambda dataset=dataset: epoch_rate(dataset, len(paths))
    return measures


def report_pipeline(values: dict[str, list[float]], cpus: int) -> None:
    """The decode / cache / order figures and ratios (the script's figures before issue 14)."""
    rates = {key: median(v) for key, v in values.items()}
    result("pillow_img_s", rates["pillow"], "images/s, one thread")
    result("tfdata_img_s", rates["tfdata"], f"images/s, training pipeline with augmentation, {cpus} CPUs")
    result("tfdata_img_s_per_core", rates["tfdata"] / cpus, "images/s per CPU")
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


if __name__ == "__main__":
    sys.exit(main())
