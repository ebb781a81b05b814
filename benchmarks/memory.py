"""Memory: peak RSS of ``mura-ens score`` on 1,000 vs 8,000 images (scoring must stream).

    python benchmarks/memory.py [--quick] [--repeats N] [--model FILE]

Both folders are MURA-layout trees of 512-px PNGs (grayscale and RGB, 1-4
per study, labelled so that metrics and the report are computed too). The
pixels come from a pool of distinct rendered radiographs, and the extra files
are hard links into it, so the 8,000-image tree is made in seconds; every
file is still read, decoded and resized by the scorer. The model is a small
ONNX CNN at 256 px by default (``--model`` takes a real one), so that the
figure shows what grows with the number of images, not the model's weights.

Figures: ``peak_rss_mb_<n>`` (median of ``--repeats`` runs, small and large
alternated), ``images_per_s_<n>``, and the ratio ``rss_8000_vs_1000``
(goal <= 1.15).

Then huge images (issue 10): a tree of 4 studies, each one 512-px PNG plus one
**16-bit 8000 x 8000 PNG** (a ramp: under 1 MB on disk, 128 MB once decoded,
under the 64-Mpx pixel cap), scored with 4 decode threads and batches of one
study, against the same tree without the huge images: ``peak_rss_mb_huge16x4``,
``peak_rss_mb_plain4`` and ``rss_huge16x4_vs_plain`` (goal <= 3: each huge
image costs its decoded bytes once, and the decode threads share one byte
budget, :data:`mura_ens.data.images.DECODE_BUDGET`), and the same with one huge
image and one thread: ``peak_rss_mb_huge16x1``. ``--huge-only`` skips the
1,000/8,000 part; ``--huge-size`` changes the side (``--quick``: 2000).

Then the number of models (issue 25), per ``--model-kinds`` (default
``custom_cnn:256,densenet201:320``): a generalist and seven specialists of that
registry plugin (**untrained**, ``weights=None``, exported once with the
project's exporter and cached in the work folder, as ``full_valid.py`` builds
them; needs the ``[train]`` extra), scoring a MURA-valid-shaped set of about
205 images (``--models-scale``) at ``--batch-size``: the generalist alone
(``--model``) against all eight (``--models``), alternated:
``peak_rss_mb_1model[<kind>]``, ``peak_rss_mb_8models[<kind>]`` and
``rss_8models_vs_1model[<kind>]`` (goal <= 1.5; for ``densenet201`` also
``peak_rss_gib_8models[densenet201]``, goal < 3 GiB). ``--models-only`` runs
just this part, ``--skip-models`` skips it (``--quick``: a tiny ONNX CNN).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    alternate,
    base_parser,
    header,
    make_png_folder,
    median,
    mura_ens_command,
    note,
    ratio,
    result,
    run_measured,
    safe_ratio,
    tiny_cnn_onnx,
    work_dir,
)

GOAL = 1.15


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=None, help="images in the small run (default 1000)")
    parser.add_argument("--large", type=int, default=None, help="images in the large run (default 8000)")
    parser.add_argument(
        "--distinct", type=int, default=None, help="distinct rendered images behind the links (default 400)"
    )
    parser.add_argument("--model", default=None, help="ONNX model to score with (default: a small CNN at 256 px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--huge-only", action="store_true", help="only the huge 16-bit image figures")
    parser.add_argument("--huge-size", type=int, default=None, help="side of the 16-bit images (default 8000)")
    parser.add_argument("--models-only", action="store_true", help="only the 8-models-vs-1 figures")
    parser.add_argument("--skip-models", action="store_true", help="no 8-models-vs-1 figures")
    parser.add_argument(
        "--model-kinds",
        default=None,
        help="plugin:size list for the 8-vs-1 figures (default custom_cnn:256,densenet201:320)",
    )
    parser.add_argument("--models-scale", type=float, default=None, help="fraction of MURA valid (default 0.064)")
    args = parser.parse_args(argv)
    small = args.small or (40 if args.quick else 1000)
    large = args.large or (320 if args.quick else 8000)
    distinct = args.distinct or (40 if args.quick else 400)
    repeats = args.repeats or (1 if args.quick else 3)
    header("memory.py", args)
    work = work_dir(args, "memory")
    model = Path(args.model) if args.model else tiny_cnn_onnx(work / "models" / "tiny_cnn" / "model.onnx")
    folders = {n: make_png_folder(work / f"tree{n}", n, distinct=distinct) for n in (small, large)}
    cli = mura_ens_command()

    def command(n: int) -> list[str]:
        return [
            *cli,
            "score",
            str(folders[n]),
            "--model",
            str(model),
            "--out",
            str(work / f"out{n}"),
            "--batch-size",
            str(args.batch_size),
            "--no-progress",
        ]

    if args.models_only:
        return models_memory(args, work, cli)
    if args.huge_only:
        return huge_images(args, work, model, cli)
    note(f"command: {' '.join(command(large))}")
    runs: dict[int, list[tuple[float, int]]] = {small: [], large: []}

    def measure(n: int):
        def run() -> float:
            wall, rss, _ = run_measured(command(n))
            runs[n].append((wall, rss))
            return rss

        return run

    alternate({f"{small}": measure(small), f"{large}": measure(large)}, repeats)
    peak = {}
    for n in (small, large):
        peak[n] = median([rss for _, rss in runs[n]]) / 2**20
        result(f"peak_rss_mb_{n}", peak[n], "MiB, whole mura-ens score process")
        result(f"images_per_s_{n}", median([n / wall for wall, _ in runs[n]]), "images/s, whole process")
    value = safe_ratio(peak[large], peak[small])
    name = "rss_8000_vs_1000" if (small, large) == (1000, 8000) else f"rss_{large}_vs_{small}"
    ratio(name, value, goal=f"<= {GOAL}")
    note("goal held" if value is not None and value <= GOAL else "goal did not hold")
    huge_images(args, work, model, cli)
    return 0 if args.skip_models else models_memory(args, work, cli)


HUGE_GOAL = 3.0


def png_16bit(path: Path, side: int) -> Path:
    """A 16-bit grayscale ``side`` x ``side`` PNG of a horizontal ramp, written with zlib (fast, tiny on disk)."""
    import struct
    import zlib

    import numpy as np

    if path.exists():
        return path
    row = b"\x00" + (np.arange(side) * 7 % 65536).astype(">u2").tobytes()
    packer = zlib.compressobj(6)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _huge_trees(work: Path, side: int) -> dict[str, Path]:
    """``plain4``: 4 studies of one 512-px PNG; ``huge16x4``: the same plus a 16-bit PNG each; ``huge16x1``: one study."""
    import shutil

    plain = make_png_folder(work / "plain4", 4, distinct=4)
    studies = sorted(p.parent for p in plain.rglob("image1.png"))
    trees = {"plain4": plain}
    for name, n in (("huge16x4", 4), ("huge16x1", 1)):
        root = work / f"{name}_{side}" / "valid"
        for study in studies[:n]:
            target = root / study.relative_to(plain)
            if not target.exists():
                shutil.copytree(study, target)
            png_16bit(target / "image9.png", side)
        trees[name] = root
    return trees


def huge_images(args, work: Path, model: Path, cli: list[str]) -> int:
    """Peak RSS with 16-bit ``side`` x ``side`` images (4 decode threads) against the same tree without them."""
    side = args.huge_size or (2000 if args.quick else 8000)
    trees = _huge_trees(work, side)
    repeats = args.repeats or (1 if args.quick else 3)

    def measure(name: str, workers: int):
        def run() -> float:
            out = work / f"out_{name}"
            command = [*cli, "score", str(trees[name]), "--model", str(model), "--out", str(out), "--no-progress"]
            _, rss, _ = run_measured([*command, "--batch-size", "1", "--workers", str(workers)])
            return rss / 2**20

        return run

    note(f"16-bit images of {side} x {side} px ({side * side * 2 / 2**20:.0f} MiB decoded each), batches of one study")
    values = alternate({"plain4": measure("plain4", 4), "huge16x4": measure("huge16x4", 4)}, repeats)
    values |= alternate({"huge16x1": measure("huge16x1", 1)}, repeats)
    peak = {name: median(v) for name, v in values.items()}
    result("peak_rss_mb_plain4", peak["plain4"], "MiB, 4 studies of one 512-px PNG, 4 decode threads")
    result("peak_rss_mb_huge16x4", peak["huge16x4"], f"MiB, the same + one 16-bit {side}-px PNG per study")
    result("peak_rss_mb_huge16x1", peak["huge16x1"], f"MiB, one study with one 16-bit {side}-px PNG, 1 thread")
    value = safe_ratio(peak["huge16x4"], peak["plain4"])
    ratio("rss_huge16x4_vs_plain", value, goal=f"<= {HUGE_GOAL}")
    note("goal held" if value is not None and value <= HUGE_GOAL else "goal did not hold")
    return 0


MODELS_GOAL = 1.5
DENSENET_GOAL_GIB = 3.0


def models_memory(args, work: Path, cli: list[str]) -> int:
    """Peak RSS of ``mura-ens score`` with a generalist + 7 specialists vs the generalist alone, per model kind."""
    import importlib.util

    from full_valid import build_models, make_valid_tree

    kinds = args.model_kinds or ("tiny:256" if args.quick else "custom_cnn:256,densenet201:320")
    scale = args.models_scale or (0.01 if args.quick else 0.064)
    repeats = args.repeats or (1 if args.quick else 2)
    root = make_valid_tree(work / "models-set", scale=scale, distinct=16 if args.quick else 200, png_size=512)
    paths = sorted(root.rglob("*.png"))
    note(f"8 models vs 1: {len(paths)} PNGs in {len({p.parent for p in paths})} studies, batch {args.batch_size}")
    for kind in kinds.split(","):
        plugin, _, size_text = kind.partition(":")
        if plugin != "tiny" and importlib.util.find_spec("tensorflow") is None:
            note(f"{plugin}: skipped (exporting it needs TensorFlow, the [train] extra)")
            continue
        models = build_models(work / "models8", plugin, int(size_text or 256), paths)
        base = [*cli, "score", str(root), "--batch-size", str(args.batch_size), "--no-progress"]
        commands = {
            "1model": [*base, "--model", str(models / "generalist.onnx"), "--out", str(work / "out-1model")],
            "8models": [*base, "--models", str(models), "--out", str(work / "out-8models")],
        }
        peaks, walls = _peaks_alternated(commands, repeats)
        for name, peak in peaks.items():
            result(
                f"peak_rss_mb_{name}[{plugin}]", peak, f"MiB, {plugin} @ {size_text} px, whole mura-ens score process"
            )
            result(f"images_per_s_{name}[{plugin}]", len(paths) / median(walls[name]), "images/s, whole process")
        value = safe_ratio(peaks["8models"], peaks["1model"])
        ratio(f"rss_8models_vs_1model[{plugin}]", value, goal=f"<= {MODELS_GOAL}")
        if plugin == "densenet201":
            gib = peaks["8models"] / 1024
            result(f"peak_rss_gib_8models[{plugin}]", gib, f"GiB (goal < {DENSENET_GOAL_GIB})")
            note("8 x DenseNet201 under 3 GiB: " + ("held" if gib < DENSENET_GOAL_GIB else "not held"))
        note("goal held" if value is not None and value <= MODELS_GOAL else "goal did not hold")
    return 0


def _peaks_alternated(commands: dict[str, list[str]], repeats: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median peak RSS (MiB) of each command over ``repeats`` alternated rounds, and the wall times."""
    walls: dict[str, list[float]] = {name: [] for name in commands}

    def measure(name: str):
        def run() -> float:
            wall, rss, _ = run_measured(commands[name])
            walls[name].append(wall)
            return rss / 2**20

        return run

    values = alternate({name: measure(name) for name in commands}, repeats)
    return {name: median(v) for name, v in values.items()}, walls


if __name__ == "__main__":
    sys.exit(main())
