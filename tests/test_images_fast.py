"""The libspng PNG path of the loader: the same pixels and statuses as the Pillow path, and its fallbacks."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mura_ens.data import images as images_module
from mura_ens.data import png_fast
from mura_ens.data.images import ImageError, MemoryBudget, decode, decoded, load_image

TOLERANCE = 1  # grey levels; the module docstring documents it (0 is what the two paths give)


@pytest.fixture
def spng_calls(monkeypatch):
    """The headers libspng decoded during the test (to tell which path an image took)."""
    calls: list[png_fast.PngHeader] = []
    real = png_fast.decode

    def counting(data, header):
        calls.append(header)
        return real(data, header)

    monkeypatch.setattr(png_fast, "decode", counting)
    return calls


@pytest.fixture
def no_pyspng(monkeypatch):
    """pyspng made unimportable (as on a platform without its wheel) for one test."""
    monkeypatch.setitem(sys.modules, "pyspng", None)  # `import pyspng` now raises ImportError
    png_fast.load_libspng.cache_clear()
    yield
    png_fast.load_libspng.cache_clear()


def _status(path, **kwargs) -> str:
    try:
        load_image(path, 24, **kwargs)
    except ImageError as exc:
        return exc.status
    return "ok"


def _max_diff(path, size=48, policy="stretch") -> int:
    new = load_image(path, size, policy).astype(int)
    old = load_image(path, size, policy, backend="pillow").astype(int)
    return int(np.abs(new - old).max())


def _png(path: Path, width: int, height: int, depth: int, colour: int, rows: bytes, *extra: bytes) -> Path:
    """A PNG written by hand (for what Pillow cannot save): filter 0 on every row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(
        png_fast.PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def _radiograph(seed: int, height: int = 70, width: int = 53) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(20, 220, width)[None, :] + np.linspace(0, 30, height)[:, None]
    return np.clip(ramp + rng.normal(0, 6, (height, width)), 0, 255).astype(np.uint8)


def test_the_synthetic_set_decodes_to_the_same_pixels_through_libspng(synth_small, spng_calls):
    paths = sorted(p for p in Path(synth_small["root"]).rglob("*.png") if p.name[0] != "." and p.stat().st_size)
    paths = [p for p in paths if str(p) != synth_small["quirk_files"]["truncated"]]
    assert len(paths) > 40
    assert png_fast.load_libspng().version.startswith("0.7.")  # the C API of the libspng inside pyspng
    worst = max(_max_diff(p, 32, policy) for p in paths for policy in ("stretch", "pad"))
    assert worst <= TOLERANCE
    assert len(spng_calls) == 2 * len(paths)  # every one of them took the libspng path (grey and RGB)
    assert {h.kind for h in spng_calls} == {"grey8", "rgb8"}


def test_every_png_kind_gives_the_pillow_paths_pixels(tmp_path, spng_calls):
    grey = _radiograph(1)
    colour = np.dstack([grey, np.roll(grey, 3, axis=1), 255 - grey])
    palette = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    twelve_bit = (grey.astype(np.uint16) * 13 + 700).astype(np.uint16)  # a 12-bit radiograph in 16 bits
    rgba = np.dstack([colour, np.where(grey > 100, 255, 40).astype(np.uint8)])
    cases = {
        "grey8.png": (Image.fromarray(grey), "grey8"),
        "grey16.png": (Image.fromarray(twelve_bit), "grey16"),
        "rgb_grey.png": (Image.fromarray(np.dstack([grey] * 3)), "rgb8"),
        "rgb_colour.png": (Image.fromarray(colour), "rgb8"),
        "rgba.png": (Image.fromarray(rgba), None),
        "palette.png": (palette, None),
    }
    for name, (img, _kind) in cases.items():
        img.save(tmp_path / name)
    Image.fromarray(grey).save(tmp_path / "grey8_trns.png", transparency=17)  # a colour key, ignored by both
    cases["grey8_trns.png"] = (None, "grey8")
    rgb16 = (np.dstack([grey, grey, grey]).astype(">u2") * 257).tobytes()
    rows = b"".join(b"\0" + rgb16[r * grey.shape[1] * 6 : (r + 1) * grey.shape[1] * 6] for r in range(grey.shape[0]))
    _png(tmp_path / "rgb16.png", grey.shape[1], grey.shape[0], 16, 2, rows)
    cases["rgb16.png"] = (None, None)
    for name, (_, kind) in cases.items():
        spng_calls.clear()
        for policy in ("stretch", "pad"):
            assert _max_diff(tmp_path / name, 40, policy) <= TOLERANCE, name
        assert [h.kind for h in spng_calls] == ([kind] * 2 if kind else []), name
    # Grey content stored as RGB is one channel before resizing; colour stays RGB.
    assert decode(tmp_path / "rgb_grey.png").mode == "L"
    assert decode(tmp_path / "rgb_grey.png", backend="pillow").mode == "RGB"
    assert decode(tmp_path / "rgb_colour.png").mode == "RGB"


def test_16_bit_grey_is_scaled_by_its_own_range_as_before(tmp_path, spng_calls):
    ramp = np.tile(np.linspace(1000, 3000, 64).astype(np.uint16), (5, 1))
    path = tmp_path / "r16.png"
    Image.fromarray(ramp).save(path)
    out = np.asarray(decode(path))
    assert np.array_equal(out, np.asarray(decode(path, backend="pillow")))
    assert out.min() == 0 and out.max() == 255 and [h.kind for h in spng_calls] == ["grey16"]
    Image.fromarray(np.full((6, 7), 4000, np.uint16)).save(path)
    assert np.asarray(decode(path)).max() == 0  # a constant image becomes black, as before


def test_bad_pngs_get_the_same_status_on_both_paths(tmp_path, synth_small):
    good = tmp_path / "good.png"
    Image.fromarray(_radiograph(2, 90, 60)).save(good)
    data = good.read_bytes()
    damaged = {}
    for cut in (0, 5, 20, 40, 60, 200, len(data) // 2, len(data) - 30, len(data) - 12, len(data) - 5):
        damaged[f"cut{cut}"] = data[:cut]
    idat = data.index(b"IDAT")
    flipped = bytearray(data)
    flipped[idat + 40] ^= 0xFF  # a damaged compressed stream (its CRC no longer matches)
    damaged["flipped"] = bytes(flipped)
    bad_crc = bytearray(data)
    bad_crc[data.index(b"IEND") - 1] ^= 0x01  # the last IDAT's CRC is wrong, the data intact
    damaged["bad_crc"] = bytes(bad_crc)
    damaged["garbage"] = png_fast.PNG_SIGNATURE + b"\0\0\0\rIHDR" + bytes(range(200))
    damaged["not_png"] = b"hello, this is text" * 20
    seen = {}
    for name, content in damaged.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(content)
        seen[name] = _status(path)
        assert seen[name] == _status(path, backend="pillow"), name
    assert seen["cut0"] == "empty_file" and seen["not_png"] == "not_an_image"
    assert seen["cut200"] == seen["flipped"] == "truncated"
    quirks = synth_small["quirk_files"]
    for name in ("truncated", "zero_byte", "appledouble"):
        assert _status(quirks[name]) == _status(quirks[name], backend="pillow"), name


def test_the_size_guards_run_before_libspng_decodes(tmp_path, spng_calls):
    path = tmp_path / "g.png"
    Image.fromarray(_radiograph(3, 100, 80)).save(path)
    with pytest.raises(ImageError) as caught:
        load_image(path, 16, max_pixels=5000)
    assert caught.value.status == "too_large" and spng_calls == []
    # A 16-bit image costs libspng 5 bytes a pixel, Pillow 3: over the cap for one, under it for the other.
    wide = tmp_path / "w16.png"
    Image.fromarray(_radiograph(4, 100, 80).astype(np.uint16) * 200).save(wide)
    cap = 100 * 80 * 4
    assert np.array_equal(np.asarray(decode(wide, max_bytes=cap)), np.asarray(decode(wide, backend="pillow")))
    assert spng_calls == []
    with pytest.raises(ImageError) as caught:
        decode(wide, max_bytes=100 * 80 * 2)
    assert caught.value.status == "too_large" and spng_calls == []


def test_libspng_reserves_its_bytes_of_the_budget(tmp_path):
    path = tmp_path / "c.png"
    Image.fromarray(np.dstack([_radiograph(5)] * 3)).save(path)
    budget = MemoryBudget(2**30)
    with decoded(path, budget=budget) as img:
        assert img.mode == "L" and budget.used == 70 * 53 * 7 + path.stat().st_size
    assert budget.used == 0


def test_without_pyspng_every_image_takes_the_pillow_path(tmp_path, no_pyspng, spng_calls):
    assert png_fast.load_libspng() is None
    path = tmp_path / "x.png"
    Image.fromarray(np.dstack([_radiograph(6)] * 3)).save(path)
    assert np.array_equal(load_image(path, 20), load_image(path, 20, backend="pillow"))
    assert decode(path).mode == "RGB" and spng_calls == []
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:300])
    assert _status(cut) == "truncated"


def test_an_unknown_backend_is_refused(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(_radiograph(7)).save(path)
    with pytest.raises(ValueError, match="unknown image backend 'spng'"):
        load_image(path, 8, backend="spng")
    assert images_module.BACKENDS == ("auto", "pillow")


def test_threads_sharing_the_decoders_give_the_sequential_pixels(synth_small):
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted(p for p in Path(synth_small["root"]).rglob("*.png") if p.name[0] != "." and p.stat().st_size > 500)
    paths = [p for p in paths if str(p) != synth_small["quirk_files"]["truncated"]]
    sequential = [load_image(p, 32) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda p: load_image(p, 32), paths * 3))
    assert all(np.array_equal(a, b) for a, b in zip(sequential * 3, threaded))


@pytest.mark.parametrize("why", ["no C API exported", "another libspng series"])
def test_a_pyspng_without_a_usable_libspng_leaves_every_png_to_pillow(tmp_path, monkeypatch, spng_calls, why):
    import types

    import pyspng

    if why == "no C API exported":  # e.g. an extension built without exporting libspng's symbols
        fake = types.SimpleNamespace(__file__=str(tmp_path / "not_a_library.so"))
        (tmp_path / "not_a_library.so").write_text("no symbols here")
        monkeypatch.setattr(pyspng, "_pyspng_c", fake)
    else:
        monkeypatch.setattr(png_fast, "Libspng", lambda path: types.SimpleNamespace(version="0.8.0"))
    png_fast.load_libspng.cache_clear()
    try:
        assert png_fast.load_libspng() is None
        path = tmp_path / "g.png"
        Image.fromarray(np.dstack([_radiograph(9)] * 3)).save(path)
        assert decode(path).mode == "RGB" and spng_calls == []  # the Pillow path, unchanged
    finally:
        png_fast.load_libspng.cache_clear()  # found again once monkeypatch restores pyspng
