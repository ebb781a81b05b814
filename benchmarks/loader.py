"""Image loading: the loader (libspng for PNGs) vs its Pillow path, decode + resize, one thread.

    python benchmarks/loader.py [--quick] [--images 400] [--size 256] [--repeats 5]

The images: ``--images`` MURA-like PNGs, 512 px on the longest side with
varied aspect (rendered radiographs, :func:`_common.render_pool`), 37 of
every 80 stored as RGB with three equal channels and the rest as 8-bit grey,
as in a sample of real MURA (FACTS.md).

One thread: in every round each image is loaded with
``mura_ens.data.images.load_image(path, size)`` (the default backend:
libspng, grey content resized as one channel), with ``backend="pillow"``
(the loader as it was before libspng), and decoded alone from its bytes by
libspng (``png_fast.decode``, what the loader calls) and by Pillow's ``open``
+ ``load`` — the four side by side,
image after image, their order rotating, each call timed. So the sides are
alternated at the grain of one image and a busy spell of a shared machine
hits all four alike. A side's rate in a round is images / its summed time;
figures are medians over rounds, ratios the medians of the per-round ratios.

- ``loader_img_s`` / ``pillow_loader_img_s``, ``RATIO loader_vs_pillow``
  (goal >= 2.0), and the same per stored mode (``[grey]``, ``[rgb]``);
- ``decode_libspng_img_s`` / ``decode_pillow_img_s``: the inflate alone;
- two threads (``--threads``, alternated per pass): ``loader_2threads_img_s``
  / ``pillow_loader_2threads_img_s`` (both decoders release the GIL);
- ``loader_max_abs_diff``: the largest pixel difference between the two
  backends over all the images and both resize policies (tolerance 1).
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MURA_RGB_SHARE,
    alternate,
    base_parser,
    header,
    median,
    note,
    ratio,
    render_pool,
    result,
    safe_ratio,
    work_dir,
)

GOAL = 2.0


def pool(work: Path, count: int, size: int) -> dict[Path, str]:
    """The MURA-like PNGs and how each is stored (``grey`` or ``rgb``)."""
    from PIL import Image

    modes = {}
    for path in render_pool(work / "pool", count, size=size, rgb_share=MURA_RGB_SHARE):
        with Image.open(path) as img:
            modes[path] = "grey" if img.mode == "L" else "rgb"
    return modes


def sides(size: int) -> dict[str, Callable[[Path, bytes], object]]:
    """What is timed per image: the two loaders (from the file) and the two decoders (from its bytes)."""
    from PIL import Image

    from mura_ens.data import png_fast
    from mura_ens.data.images import load_image

    def pillow_decode(path: Path, data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as img:
            img.load()

    def libspng_decode(path: Path, data: bytes) -> None:
        png_fast.decode(data, png_fast.read_header(data[: png_fast.HEADER_BYTES]))

    chosen: dict[str, Callable[[Path, bytes], object]] = {
        "loader": lambda path, data: load_image(path, size),
        "pillow_loader": lambda path, data: load_image(path, size, backend="pillow"),
    }
    if png_fast.load_libspng() is not None:
        chosen["decode_libspng"] = libspng_decode
        chosen["decode_pillow"] = pillow_decode
    return chosen


def interleaved(modes: dict[Path, str], timed: dict[str, Callable], rounds: int) -> list[dict[tuple[str, str], float]]:
    """Per round: seconds per (side, mode) and (side, "all"), every image through every side in turn."""
    names = list(timed)
    datas = {path: path.read_bytes() for path in modes}
    out = []
    for round_number in range(rounds):
        seconds = {(name, mode): 0.0 for name in names for mode in ("grey", "rgb", "all")}
        for index, (path, mode) in enumerate(modes.items()):
            shift = (round_number + index) % len(names)
            for name in names[shift:] + names[:shift]:
                tick = time.perf_counter()
                timed[name](path, datas[path])
                spent = time.perf_counter() - tick
                seconds[(name, mode)] += spent
                seconds[(name, "all")] += spent
        out.append(seconds)
    return out


def threaded(paths: Sequence[Path], size: int, backend: str, threads: int) -> Callable[[], float]:
    """A measure: images/s of ``load_image`` over ``paths`` split over ``threads`` threads."""
    from mura_ens.data.images import load_image

    def one_thread(part: Sequence[Path]) -> None:
        for path in part:
            load_image(path, size, backend=backend)

    def measure() -> float:
        parts = [paths[i::threads] for i in range(threads)]
        workers = [threading.Thread(target=one_thread, args=(part,)) for part in parts[1:]]
        tick = time.perf_counter()
        for worker in workers:
            worker.start()
        one_thread(parts[0])
        for worker in workers:
            worker.join()
        return len(paths) / (time.perf_counter() - tick)

    return measure


def report_one_thread(rounds: list[dict[tuple[str, str], float]], counts: dict[str, int]) -> None:
    """RESULT lines per side and mode, RATIO lines (medians of the per-round ratios)."""
    names = list(dict.fromkeys(name for name, _ in rounds[0]))  # loader, pillow_loader, decode_libspng, ...
    for mode in ("all", "grey", "rgb"):
        if not counts[mode]:
            continue
        suffix = "" if mode == "all" else f"[{mode}]"
        for name in names:
            rate = median([counts[mode] / r[(name, mode)] for r in rounds])
            result(f"{name}_img_s{suffix}", rate, "images/s, one thread")
        per_round = [safe_ratio(r[("pillow_loader", mode)], r[("loader", mode)]) for r in rounds]
        ratio(f"loader_vs_pillow{suffix}", median([v for v in per_round if v]), goal=f">= {GOAL}" if not suffix else "")
    if ("decode_libspng", "all") in rounds[0]:
        per_round = [safe_ratio(r[("decode_pillow", "all")], r[("decode_libspng", "all")]) for r in rounds]
        ratio("decode_libspng_vs_pillow", median([v for v in per_round if v]))


def max_abs_diff(paths: Sequence[Path], size: int) -> int:
    """Largest |difference| of any pixel between the two backends, both resize policies."""
    import numpy as np

    from mura_ens.data.images import load_image

    worst = 0
    for path in paths:
        for policy in ("stretch", "pad"):
            new = load_image(path, size, policy).astype(np.int16)
            old = load_image(path, size, policy, backend="pillow").astype(np.int16)
            worst = max(worst, int(np.abs(new - old).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="MURA-like PNGs (default 400)")
    parser.add_argument("--png-size", type=int, default=None, help="their longest side (default 512, like MURA)")
    parser.add_argument("--size", type=int, default=256, help="the side they are resized to (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the threaded measure (0: skip it)")
    args = parser.parse_args(argv)
    count = args.images or (12 if args.quick else 400)
    png_size = args.png_size or (128 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 5)
    header("loader.py", args)
    from mura_ens.data.png_fast import load_libspng

    libspng = load_libspng()
    note(f"libspng {libspng.version} (GIL released)" if libspng else "no libspng: both loaders take the Pillow path")
    modes = pool(work_dir(args, "loader"), count, png_size)
    counts = {mode: sum(m == mode for m in modes.values()) for mode in ("grey", "rgb")}
    counts["all"] = len(modes)
    kb = sum(p.stat().st_size for p in modes) / len(modes) / 1024
    note(
        f"{len(modes)} PNGs, {png_size} px longest side: {counts['grey']} 8-bit grey, {counts['rgb']} RGB with equal "
        f"channels; {kb:.0f} KB average; resized to {args.size} px; {repeats} rounds"
    )
    timed = sides(args.size)
    interleaved(dict(list(modes.items())[:8]), timed, 1)  # warm-up: lazy imports, first allocations
    rounds = interleaved(modes, timed, repeats)
    note("seconds per round: " + "; ".join(f"{n} {[round(r[(n, 'all')], 2) for r in rounds]}" for n in timed))
    report_one_thread(rounds, counts)
    if args.threads > 1:
        paths = list(modes)
        values = alternate(
            {
                f"loader_{args.threads}threads": threaded(paths, args.size, "auto", args.threads),
                f"pillow_loader_{args.threads}threads": threaded(paths, args.size, "pillow", args.threads),
            },
            repeats,
        )
        for name, rates in values.items():
            result(f"{name}_img_s", median(rates), f"images/s, {args.threads} threads")
        new, old = values.values()
        ratio(f"loader_vs_pillow_{args.threads}threads", median([a / b for a, b in zip(new, old)]))
    result("loader_max_abs_diff", max_abs_diff(list(modes), args.size), "grey levels, both backends (tolerance 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
