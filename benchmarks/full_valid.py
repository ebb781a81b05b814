"""The real job's size: `mura-ens score` on a MURA-valid-shaped set with one generalist and seven specialists.

    python benchmarks/full_valid.py [--quick] [--plugin custom_cnn] [--image-size 256] [--repeats 1]

The set: MURA v1.1's validation split in shape — per body part the same
number of studies and images (:data:`VALID`: 1,199 studies, 3,197 images,
7 parts; 1-8 images per study, drawn), study labels in the published
proportions (MURA paper, table 1) — filled with MURA-like 512-px PNGs of
varied aspect (rendered radiographs, 37 of every 80 stored as RGB with equal
channels, the rest 8-bit grey, as in a sample of real MURA). The pixels come
from ``--distinct`` rendered images (default 400); the other files are hard
links, and every file is still read, decoded and resized by the scorer.

The models: ``--plugin`` (default ``custom_cnn``) built by its registry
plugin with **untrained weights** (``weights=None``: the figure is a timing,
not an accuracy) at ``--image-size`` (default 256) and exported once by the
project's exporter (needs the ``[train]`` extra); the generalist and seven
specialists (one per part: the same network, stamped with its part in the
ONNX metadata) are its copies, so every image is scored by two models.
``--plugin tiny`` uses a small hand-made ONNX CNN instead (no TensorFlow;
``--quick`` does, on a set 1/50 the size).

Figures: ``full_valid_wall_s`` (the whole ``mura-ens score`` process: start-up,
scan, decode, inference, tables, metrics, report; median of ``--repeats``),
``full_valid_studies_per_s``, ``full_valid_img_s``, its peak RSS. What bounds
it: measured in this process afterwards, ``full_valid_decode_s`` (decode +
resize of every image with the scorer's loader on one thread) and
``full_valid_inference_s`` (both models on every image, preloaded, with the
session options ``mura-ens score`` uses), and their shares of their sum.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MURA_RGB_SHARE,
    base_parser,
    header,
    median,
    mura_ens_command,
    note,
    rate,
    render_pool,
    result,
    run_measured,
    tiny_cnn_onnx,
    work_dir,
)

#: MURA v1.1 valid split: body part -> (studies, images, abnormal studies).
VALID = {
    "XR_ELBOW": (158, 465, 66),
    "XR_FINGER": (175, 461, 83),
    "XR_FOREARM": (133, 301, 64),
    "XR_HAND": (167, 460, 66),
    "XR_HUMERUS": (135, 288, 67),
    "XR_SHOULDER": (194, 563, 95),
    "XR_WRIST": (237, 659, 97),
}


def make_valid_tree(out: Path, *, scale: float, distinct: int, png_size: int, seed: int = 0) -> Path:
    """The MURA-layout ``valid`` folder of the set (reused when made with the same arguments)."""
    import numpy as np

    root = out / "MURA-v1.1" / "valid"
    stamp = out / "MURA-v1.1" / "tree.json"
    params = {"scale": scale, "distinct": distinct, "png_size": png_size, "seed": seed, "rgb_share": MURA_RGB_SHARE}
    if root.exists() and stamp.exists() and json.loads(stamp.read_text()) == params:
        return root
    shutil.rmtree(root, ignore_errors=True)
    pool = render_pool(out / "pool", distinct, size=png_size, seed=seed, rgb_share=MURA_RGB_SHARE)
    rng = np.random.default_rng(seed)
    patient, written = 0, 0
    for part, (studies, images, abnormal) in VALID.items():
        n_studies = max(1, round(studies * scale))
        n_images = max(n_studies, round(images * scale))
        per_study = 1 + rng.multinomial(n_images - n_studies, [1 / n_studies] * n_studies)
        positive = set(rng.permutation(n_studies)[: round(abnormal * n_studies / studies)].tolist())
        for index, count in enumerate(per_study):
            label = "positive" if index in positive else "negative"
            folder = root / part / f"patient{11185 + patient:05d}" / f"study1_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(int(count)):
                target = folder / f"image{k + 1}.png"
                try:
                    os.link(pool[written % len(pool)], target)
                except OSError:
                    shutil.copyfile(pool[written % len(pool)], target)
                written += 1
            patient += 1
    stamp.write_text(json.dumps(params))
    return root


def build_models(folder: Path, plugin: str, size: int, parity_pngs: list[Path]) -> Path:
    """A folder with the generalist and the seven specialists (reused when already built)."""
    import onnx

    from mura_ens.run_folder import ModelMetadata, write_onnx_props

    folder = folder / f"{plugin}-{size}"
    names = ["generalist", *(part.lower() for part in VALID)]
    if all((folder / f"{name}.onnx").exists() for name in names):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "base.onnx.tmp"
    if plugin == "tiny":
        tiny_cnn_onnx(base, input_size=size)
    else:
        export_plugin(plugin, size, base, parity_pngs)
    proto = onnx.load(str(base))
    for name, part in zip(names, ("", *VALID)):
        metadata = ModelMetadata(plugin=plugin, model_name=name, body_parts=(part,) if part else (), input_size=size)
        write_onnx_props(proto, metadata)
        onnx.save(proto, str(folder / f"{name}.onnx"))
    base.unlink()
    return folder


def export_plugin(plugin: str, size: int, path: Path, parity_pngs: list[Path]) -> None:
    """Build ``plugin`` (untrained) at ``size`` px and export it with the project's exporter (TensorFlow)."""
    import numpy as np

    from mura_ens.data.images import load_image
    from mura_ens.plugin import resolve_params
    from mura_ens.registry import get_plugin
    from mura_ens.run_folder import ModelMetadata
    from mura_ens.training.export import export_model
    from mura_ens.training.tf_runtime import import_tensorflow

    import_tensorflow()
    spec = get_plugin(plugin)
    model = spec.build({"image_size": size, "weights": None, **resolve_params(spec)})
    parity = np.stack([load_image(p, size) for p in parity_pngs[:4]]).astype(np.float32)
    tick = time.perf_counter()
    metadata = ModelMetadata(plugin=plugin, model_name=plugin, body_parts=(), input_size=size)
    info = export_model(model, path, metadata=metadata, parity_images=parity)
    note(f"{plugin}: exported in {time.perf_counter() - tick:.1f} s (ONNX vs Keras {info['onnx_max_abs_diff']:.2g})")


def score_once(root: Path, models: Path, out: Path, batch_size: int) -> tuple[float, int]:
    """Wall seconds and peak RSS of one ``mura-ens score`` process; checks that every image was scored."""
    import pandas as pd

    shutil.rmtree(out, ignore_errors=True)
    command = [*mura_ens_command(), "score", str(root), "--models", str(models), "--out", str(out)]
    command += ["--batch-size", str(batch_size), "--no-progress"]
    wall, rss, _ = run_measured(command)
    images = pd.read_csv(out / "images.csv")
    studies = pd.read_csv(out / "studies.csv")
    bad = images[images["status"] != "ok"]
    if len(bad):
        raise RuntimeError(f"{len(bad)} images were not scored: {bad['status'].value_counts().to_dict()}")
    note(f"scored {len(images)} images in {len(studies)} studies in {wall:.1f} s: {' '.join(command)}")
    return wall, rss


def bounds(root: Path, models: Path, size: int, batch_size: int, *, min_seconds: float) -> dict[str, float]:
    """Seconds of decode + resize (one thread) and of inference (both models) for every image of the set."""
    import numpy as np

    from mura_ens.data.images import load_image
    from mura_ens.scoring.models import load_model_spec
    from mura_ens.scoring.score import default_workers
    from mura_ens.scoring.sessions import SessionConfig, default_intra_op_threads, get_session

    paths = sorted(root.rglob("*.png"))
    distinct = list({p.stat().st_ino: p for p in paths}.values())[:400]
    loaded = []
    tick = time.perf_counter()
    for path in distinct:
        loaded.append(load_image(path, size))
    decode_rate = len(distinct) / (time.perf_counter() - tick)
    batch = np.stack([loaded[i % len(loaded)] for i in range(batch_size)]).astype(np.float32)
    config = SessionConfig(
        providers=("CPUExecutionProvider",), intra_op_threads=default_intra_op_threads(default_workers())
    )
    spec = load_model_spec(models / "generalist.onnx")
    session = get_session(spec, config)
    session.run(None, {spec.input_name: batch})  # warm-up
    infer_rate = rate(lambda: session.run(None, {spec.input_name: batch}), batch_size, min_seconds=min_seconds)
    n = len(paths)
    return {"decode_s": n / decode_rate, "inference_s": 2 * n / infer_rate, "images": n}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--plugin", default=None, help="registry plugin of the models, or tiny (default custom_cnn)")
    parser.add_argument("--image-size", type=int, default=None, help="model input side (default 256)")
    parser.add_argument("--scale", type=float, default=None, help="fraction of MURA valid's size (default 1)")
    parser.add_argument("--distinct", type=int, default=None, help="distinct rendered images (default 400)")
    parser.add_argument("--png-size", type=int, default=None, help="longest side of the PNGs (default 512)")
    parser.add_argument("--batch-size", type=int, default=32, help="mura-ens score --batch-size (default 32)")
    parser.add_argument("--skip-bounds", action="store_true", help="no decode / inference breakdown")
    args = parser.parse_args(argv)
    quick = args.quick
    plugin = args.plugin or ("tiny" if quick else "custom_cnn")
    size = args.image_size or (64 if quick else 256)
    scale = args.scale or (0.02 if quick else 1.0)
    header("full_valid.py", args)
    work = work_dir(args, "full-valid")
    root = make_valid_tree(
        work / "set",
        scale=scale,
        distinct=args.distinct or (16 if quick else 400),
        png_size=args.png_size or (128 if quick else 512),
    )
    paths = sorted(root.rglob("*.png"))
    n_studies = len({p.parent for p in paths})
    note(f"{len(paths)} PNGs in {n_studies} studies of {len({p.parts[-4] for p in paths})} parts in {root}")
    models = build_models(work / "models", plugin, size, paths)
    note(f"models: {', '.join(sorted(p.name for p in models.glob('*.onnx')))} ({plugin}, {size} px, untrained)")
    walls, rss = [], []
    for _ in range(args.repeats or 1):
        wall, peak = score_once(root, models, work / "out", args.batch_size)
        walls.append(wall)
        rss.append(peak)
    wall = median(walls)
    result("full_valid_wall_s", wall, f"s, mura-ens score of {len(paths)} images, {n_studies} studies, 8 models")
    result("full_valid_studies_per_s", n_studies / wall, "studies/s, whole process")
    result("full_valid_img_s", len(paths) / wall, "images/s, whole process")
    result("full_valid_peak_rss_mb", median(rss) / 2**20, "MiB")
    if not args.skip_bounds:
        parts = bounds(root, models, size, args.batch_size, min_seconds=0.2 if quick else 3.0)
        result("full_valid_decode_s", parts["decode_s"], "s, decode + resize of every image, one thread")
        result("full_valid_inference_s", parts["inference_s"], "s, both models on every image, preloaded")
        total = parts["decode_s"] + parts["inference_s"]
        result("full_valid_decode_share", parts["decode_s"] / total, "of decode + inference")
        result("full_valid_inference_share", parts["inference_s"] / total, "of decode + inference")
        note(f"the rest of the wall time (start-up, scan, tables, metrics, report): {wall - total:.1f} s at most")
    return 0


if __name__ == "__main__":
    sys.exit(main())
