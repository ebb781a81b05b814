"""Image decoding: every input mode to uint8 RGB, 16-bit scaling, resize policies, typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mura_ens.data.images import (
    IMAGE_STATUSES,
    ImageError,
    decode,
    load_image,
    resize_rgb,
)
from mura_ens.errors import UsageError


def _gradient(width=40, height=30):
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def _save(tmp_path, name, img):
    path = tmp_path / name
    img.save(path)
    return path


@pytest.mark.parametrize(
    "mode, make",
    [
        ("L", lambda g: Image.fromarray(g)),
        ("LA", lambda g: Image.fromarray(np.dstack([g, np.full_like(g, 255)]), "LA")),
        ("RGB", lambda g: Image.fromarray(np.dstack([g, g, g]))),
        ("RGBA", lambda g: Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]))),
        ("P", lambda g: Image.fromarray(np.dstack([g, g, g])).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)),
        ("I;16", lambda g: Image.fromarray(g.astype(np.uint16) * 257)),
        ("I", lambda g: Image.fromarray(g.astype(np.int32) * 1000).convert("I")),
        ("1", lambda g: Image.fromarray(g).convert("1")),
        ("CMYK", lambda g: Image.fromarray(np.dstack([g, g, g])).convert("CMYK")),
    ],
)
def test_every_mode_becomes_uint8_rgb(tmp_path, mode, make):
    gradient = _gradient()
    img = make(gradient)
    assert img.mode == mode
    suffix = ".jpg" if mode == "CMYK" else (".tif" if mode == "I" else ".png")
    path = _save(tmp_path, f"x{suffix}", img)

    decoded = decode(path)
    assert decoded.mode in ("L", "RGB")
    pixels = load_image(path, 16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    if mode not in ("1", "CMYK", "P"):  # lossless modes keep the gradient: dark left, bright right
        assert pixels[:, 0].mean() < 20 and pixels[:, -1].mean() > 235


def test_alpha_is_composited_on_black(tmp_path):
    gray = np.full((10, 10), 200, np.uint8)
    alpha = np.zeros((10, 10), np.uint8)
    alpha[:, 5:] = 255
    path = _save(tmp_path, "la.png", Image.fromarray(np.dstack([gray, alpha]), "LA"))
    out = np.asarray(decode(path))
    assert out[:, :5].max() == 0  # transparent -> black
    assert out[:, 5:].min() == 200  # opaque -> unchanged


def test_palette_with_transparency_becomes_rgb(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    out = decode(_save(tmp_path, "p.png", img))
    assert out.mode == "RGB"
    assert np.asarray(out)[0, 0].tolist() == [255, 0, 0]


def test_16bit_is_scaled_not_clipped(tmp_path):
    # A 12-bit radiograph stored in 16 bits: 0..4095. Clipping to 255 would saturate
    # 94% of it; dividing by 257 would leave it nearly black.
    ramp = np.tile(np.linspace(0, 4095, 256).astype(np.uint16), (4, 1))
    path = _save(tmp_path, "r16.png", Image.fromarray(ramp))
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(decode(path)).astype(int)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0]) >= 0)  # monotone
    assert len(np.unique(out[0])) > 200  # the ramp keeps its levels
    assert (out[0] == 255).sum() <= 2


def test_constant_16bit_image_is_black(tmp_path):
    path = _save(tmp_path, "c16.png", Image.fromarray(np.full((4, 4), 1000, np.uint16)))
    assert np.asarray(decode(path)).max() == 0


def test_stretch_and_pad_geometry():
    img = Image.fromarray(np.full((20, 40), 255, np.uint8))  # 40 wide, 20 high
    stretched = resize_rgb(img, 32, "stretch")
    assert stretched.shape == (32, 32, 3)
    assert stretched.min() == 255  # fills the square
    padded = resize_rgb(img, 32, "pad")
    assert padded.shape == (32, 32, 3)
    bright_rows = np.flatnonzero(padded[:, :, 0].max(axis=1) > 0)
    assert bright_rows.min() == 8 and bright_rows.max() == 23  # 16 rows, centred
    assert padded[:, :, 0].min(axis=0).max() == 0  # black bars above and below
    assert padded[8:24].min() == 255
    assert np.array_equal(padded[..., 0], padded[..., 2])  # gray stacked to 3 channels


def test_pad_keeps_portrait_centred():
    img = Image.fromarray(np.full((30, 10), 255, np.uint8))  # portrait 10 x 30
    padded = resize_rgb(img, 30, "pad")
    cols = np.flatnonzero(padded[:, :, 0].max(axis=0) > 0)
    assert cols.min() == 10 and cols.max() == 19


def test_rgb_resize_keeps_colours():
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 255
    out = resize_rgb(Image.fromarray(rgb), 5)
    assert out.shape == (5, 5, 3) and out[..., 0].min() == 255 and out[..., 1:].max() == 0


def test_unknown_policy_is_a_usage_error(tmp_path):
    path = _save(tmp_path, "a.png", Image.fromarray(_gradient()))
    with pytest.raises(UsageError, match="'crop'"):
        load_image(path, 8, "crop")


def _status(path, **kwargs):
    with pytest.raises(ImageError) as info:
        decode(path, **kwargs)
    error = info.value
    assert error.status in IMAGE_STATUSES
    assert error.path == str(path) and str(path) in str(error) and error.status in str(error)
    return error.status


def test_error_statuses(tmp_path):
    good = _save(tmp_path, "good.png", Image.fromarray(_gradient(200, 150)))
    data = good.read_bytes()

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert _status(empty) == "empty_file"

    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    assert _status(text) == "not_an_image"

    apple = tmp_path / "._good.png"
    apple.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(range(200)))
    assert _status(apple) == "not_an_image"

    for keep in (0.6, 0.1):
        cut = tmp_path / f"cut{keep}.png"
        cut.write_bytes(data[: int(len(data) * keep)])
        assert _status(cut) == "truncated"
    header_only = tmp_path / "header.png"
    header_only.write_bytes(data[:20])  # PNG signature, then half an IHDR
    assert _status(header_only) == "truncated"

    assert _status(tmp_path / "missing.png") == "unreadable"
    assert _status(good, max_pixels=100) == "too_large"
    assert decode(good).size == (200, 150)


def test_io_errors_are_unreadable(tmp_path):
    # A folder named like an image: open() fails with an OS error for any user, root included.
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert _status(folder) == "unreadable"


def test_truncated_images_are_not_loaded_leniently(tmp_path):
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = _save(tmp_path, "g.png", Image.fromarray(_gradient(100, 100))).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError):
        load_image(cut, 8)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
