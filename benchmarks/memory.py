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
    return 0


if __name__ == "__main__":
    sys.exit(main())
