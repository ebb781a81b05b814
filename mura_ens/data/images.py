"""Image decoding and resizing with Pillow: any input mode in, uint8 RGB out.

Choices (documented because they change pixels):

- **Alpha** (LA, RGBA, PA, palette with transparency) is composited onto
  black, so transparent areas look like the black padding of ``pad``.
- **Palette** images become RGB.
- **16-bit and 32-bit** images (``I;16*``, ``I``, ``F``) are scaled to 0-255
  by their *actual* min/max, not by the type's range: radiographs stored in
  16 bits often use only 10-12 of them, and a fixed ``/257`` would leave them
  nearly black. A constant image becomes all zeros. Nothing is clipped.
- **Resizing** is bilinear (as in the MURA paper) and happens while a
  grayscale image is still one channel; the three RGB channels are stacked
  afterwards (measured faster than converting first).

Failures raise :class:`ImageError` whose ``status`` callers record per image;
a bad image never needs to stop a run.

**Memory.** What decoding one image costs is known from its header before a
pixel is decoded: width x height x (bytes per pixel of Pillow's storage for
its mode + what the conversion to 8 bits allocates), :func:`decode_cost`. So a
16-bit image counts twice an 8-bit one and RGBA (stored in 4 bytes, composited
through three more images) thirteen times. An image over ``max_bytes``
(default :data:`DEFAULT_MAX_BYTES`) or ``max_pixels`` is ``too_large`` without
being decoded. The images being decoded at one time, by any thread of the
process, share :data:`DECODE_BUDGET` (:class:`MemoryBudget`, a semaphore on
bytes): a thread whose image does not fit waits until others release theirs
(:func:`decoded` holds the reservation until the caller is done with the
image). The 16/32-bit scaling works in bands of rows (a lookup table for
16 bits), so it never holds the float64 copies of a whole image.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UsageError
from ..run_folder import RESIZE_POLICIES  # stretch (MURA paper) or pad to square; part of the model metadata contract

#: Images with more pixels than this raise ``ImageError(status="too_large")``.
DEFAULT_MAX_PIXELS = 64_000_000
#: Images whose decoding would take more bytes than this (:func:`decode_cost`) are ``too_large`` too.
#: 256 MiB: an 8-bit RGB image at the pixel cap fits, a 16-bit 8000 x 8000 one (192 MB) too, RGBA of that size not.
DEFAULT_MAX_BYTES = 256 * 2**20
#: Bytes that all the images being decoded in this process may take together (:data:`DECODE_BUDGET`).
DEFAULT_DECODE_BUDGET = 512 * 2**20

#: Every value ``ImageError.status`` can take.
IMAGE_STATUSES: tuple[str, ...] = ("unreadable", "not_an_image", "truncated", "empty_file", "too_large")

# Leading bytes of formats we may meet; a file that starts like one of these
# but cannot be opened is a damaged image, not a non-image.
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_ALPHA_MODES = {"LA": "L", "La": "L", "RGBA": "RGB", "RGBa": "RGB", "PA": "RGB"}
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "I;32", "I;32L", "I;32B")
_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: Bytes per pixel of Pillow's storage (multi-band modes take 4); modes not listed: 4.
_STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, **{mode: 2 for mode in _16_BIT_MODES}}
#: Bytes per pixel that :func:`to_8bit` allocates on top of the decoded image (not listed: 4, a convert to RGB).
_CONVERT_BYTES = {
    "L": 0,
    "RGB": 0,
    "1": 1,
    "P": 4,
    "LA": 3,  # alpha + L + result
    "RGBA": 9,  # alpha + RGB + result
    **{mode: 13 for mode in ("La", "RGBa", "PA", "P+transparency")},  # convert("RGBA") first
    **{mode: 1 for mode in _HIGH_DEPTH_MODES},  # the 8-bit result; scaled in bands of rows
}
#: Pixels per band of the 16/32-bit scaling.
_BAND_PIXELS = 1 << 20


class ImageError(Exception):
    """An image that cannot be used. ``status`` is one of :data:`IMAGE_STATUSES`."""

    def __init__(self, status: str, path: str | os.PathLike, detail: str = ""):
        if status not in IMAGE_STATUSES:
            raise ValueError(f"unknown image status {status!r}; expected one of {', '.join(IMAGE_STATUSES)}")
        self.status = status
        self.path = str(path)
        self.detail = detail
        message = f"{status}: {self.path}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class MemoryBudget:
    """Bytes that threads may hold at once: :meth:`reserve` waits until ``nbytes`` fit.

    A request larger than the whole budget waits until nothing else is held
    and then runs alone, so nothing waits forever.
    """

    def __init__(self, total_bytes: int):
        if total_bytes < 1:
            raise ValueError(f"total_bytes must be >= 1, got {total_bytes!r}")
        self.total = int(total_bytes)
        self._used = 0
        self._peak = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    @property
    def peak(self) -> int:
        """The most bytes reserved at one time so far."""
        return self._peak

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block."""
        nbytes = max(0, int(nbytes))
        with self._cond:
            while self._used and self._used + nbytes > self.total:
                self._cond.wait()
            self._used += nbytes
            self._peak = max(self._peak, self._used)
        try:
            yield
        finally:
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()


#: The budget every decode of this process shares (scoring's decode threads, the training loaders).
DECODE_BUDGET = MemoryBudget(DEFAULT_DECODE_BUDGET)


def decode_cost(img: Image.Image) -> int:
    """Bytes decoding ``img`` (opened, not loaded) and converting it to 8 bits takes at its peak."""
    width, height = img.size
    mode = img.mode
    key = "P+transparency" if mode == "P" and "transparency" in img.info else mode
    per_pixel = _STORAGE_BYTES.get(mode, 4) + _CONVERT_BYTES.get(key, 4)
    if img.format not in ("PNG", None):  # exif_transpose may copy the decoded image
        per_pixel += _STORAGE_BYTES.get(mode, 4)
    return width * height * per_pixel


def decode(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """Open and fully decode ``path``; return an 8-bit ``"L"`` or ``"RGB"`` image.

    Decoding every pixel is the integrity check: it catches truncated files
    and broken compressed streams, which Pillow's ``verify()`` (a second
    open) would only partly add to. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
    left alone, so cut-off files fail instead of being padded with grey.

    Raises :class:`ImageError` with status ``empty_file`` (zero bytes),
    ``unreadable`` (also: not a regular file, e.g. a FIFO, which is never opened),
    ``not_an_image`` (not a format Pillow knows, e.g. a macOS ``._x.png``),
    ``truncated`` (recognised header but damaged or cut-off data),
    ``too_large`` (more than ``max_pixels`` pixels, or more than ``max_bytes``
    to decode: :func:`decode_cost`) or ``unreadable`` (missing file, dangling
    symlink, permission or I/O error). Decodes within :data:`DECODE_BUDGET`; a caller
    that keeps working on the large image (resizing it) should use
    :func:`decoded`, which holds the reservation meanwhile.
    """
    with decoded(path, max_pixels=max_pixels, max_bytes=max_bytes) as img:
        return img


@contextmanager
def decoded(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    budget: MemoryBudget | None = None,
) -> Iterator[Image.Image]:
    """:func:`decode` as a ``with`` block that holds the image's bytes of ``budget`` until it ends.

    ``budget`` defaults to the process-wide :data:`DECODE_BUDGET`.
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the reader, a device never end
            raise ImageError("unreadable", path, f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size == 0:
            raise ImageError("empty_file", path, "0 bytes")
        fh = open(path, "rb")
    except OSError as exc:
        raise ImageError("unreadable", path, exc.strerror or type(exc).__name__) from exc
    with fh:
        img = _open(fh, path)
        cost = _check_size(img, path, max_pixels=max_pixels, max_bytes=max_bytes)
        with (budget if budget is not None else DECODE_BUDGET).reserve(cost):
            _load(img, path)
            if img.format not in ("PNG", None):  # EXIF orientation only exists for JPEG/TIFF/WebP
                img = ImageOps.exif_transpose(img)
            yield to_8bit(img)


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _file_kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a file")


def _open(fh, path: str) -> Image.Image:
    """``Image.open`` (the header only), its failures as :class:`ImageError`."""
    try:
        return Image.open(fh)
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", path, str(exc)) from exc
    except (UnidentifiedImageError, SyntaxError, ValueError, EOFError, OSError) as exc:
        if _has_image_magic(fh):
            raise ImageError("truncated", path, f"damaged header: {exc}") from exc
        raise ImageError("not_an_image", path, "not a recognised image format") from exc


def _check_size(img: Image.Image, path: str, *, max_pixels: int, max_bytes: int) -> int:
    """The image's :func:`decode_cost`; ``too_large`` over either cap, ``truncated`` for 0 pixels."""
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError("too_large", path, f"{width}x{height} pixels > max_pixels={max_pixels}")
    if width == 0 or height == 0:
        raise ImageError("truncated", path, f"{width}x{height} pixels")
    cost = decode_cost(img)
    if cost > max_bytes:
        raise ImageError(
            "too_large",
            path,
            f"{width}x{height} {img.mode} pixels need {_mib(cost)} to decode > max_bytes={_mib(max_bytes)}",
        )
    return cost


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


def _load(img: Image.Image, path: str) -> None:
    """Decode every pixel, failures as :class:`ImageError` (``truncated``, or ``unreadable`` for an I/O error)."""
    try:
        img.load()
    except OSError as exc:
        if exc.errno is not None:  # a real read error, not a decoder complaint
            raise ImageError("unreadable", path, exc.strerror or str(exc)) from exc
        raise ImageError("truncated", path, str(exc)) from exc
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError("truncated", path, str(exc)) from exc


def to_8bit(img: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to 8-bit ``"L"`` or ``"RGB"`` (see the module docstring)."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode == "P":
        if "transparency" in img.info:
            img, mode = img.convert("RGBA"), "RGBA"
        else:
            return img.convert("RGB")
    if mode in _ALPHA_MODES:
        return _composite_on_black(img, _ALPHA_MODES[mode])
    if mode in _HIGH_DEPTH_MODES:
        return _scale_to_8bit(img)
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def _composite_on_black(img: Image.Image, target: str) -> Image.Image:
    if img.mode != ("LA" if target == "L" else "RGBA"):  # PA and premultiplied La/RGBa
        img = img.convert("RGBA")
        target = "RGB"
    alpha = img.getchannel("A")
    colour = img.convert(target)
    out = Image.new(target, img.size, 0)
    out.paste(colour, (0, 0), alpha)
    return out


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit image to 0-255 by its finite min/max, in bands of rows (same values as whole-image numpy)."""
    width, height = img.size
    rows = max(1, _BAND_PIXELS // max(1, width))
    bands = [(top, min(height, top + rows)) for top in range(0, height, rows)]
    low, high = _finite_range(img, bands)
    if low is None or high is None or not high > low:
        return Image.new("L", img.size, 0)
    factor = 255.0 / (high - low)
    out = np.empty((height, width), dtype=np.uint8)
    if img.mode in _16_BIT_MODES:  # every possible value once, then a lookup per pixel
        table = np.rint((np.arange(65536, dtype=np.float64) - low) * factor)
        lut = np.clip(table, 0, 255).astype(np.uint8)  # values outside [low, high] do not occur
        for top, bottom in bands:
            out[top:bottom] = lut[_band(img, top, bottom)]
        return Image.fromarray(out)
    for top, bottom in bands:
        values = _band(img, top, bottom).astype(np.float64)
        scaled = np.nan_to_num((np.where(np.isfinite(values), values, np.nan) - low) * factor, nan=0.0)
        out[top:bottom] = np.rint(scaled).astype(np.uint8)
    return Image.fromarray(out)


def _band(img: Image.Image, top: int, bottom: int) -> np.ndarray:
    values = np.asarray(img.crop((0, top, img.size[0], bottom)))
    return values if values.ndim == 2 else values[..., 0]


def _finite_range(img: Image.Image, bands: list[tuple[int, int]]) -> tuple[float | None, float | None]:
    """The smallest and largest finite value (None, None when there is none)."""
    low = high = None
    for top, bottom in bands:
        values = _band(img, top, bottom)
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size:
            lo, hi = float(values.min()), float(values.max())
            low = lo if low is None else min(low, lo)
            high = hi if high is None else max(high, hi)
    return low, high


def _has_image_magic(fh) -> bool:
    try:
        fh.seek(0)
        head = fh.read(8)
    except OSError:
        return False
    return any(head.startswith(magic) for magic in _MAGIC)


def check_policy(policy: str) -> str:
    """Return ``policy`` if it is a known resize policy, else raise :class:`UsageError`."""
    if policy not in RESIZE_POLICIES:
        raise UsageError(f"unknown resize policy {policy!r}; expected one of {', '.join(RESIZE_POLICIES)}")
    return policy


def resize_rgb(img: Image.Image, size: int, policy: str = "stretch") -> np.ndarray:
    """Resize an ``L``/``RGB`` image to a ``(size, size, 3)`` uint8 array.

    ``stretch`` resizes both sides to ``size`` (aspect ratio not kept);
    ``pad`` scales the longest side to ``size``, keeps the aspect ratio and
    centres the result on black. Bilinear in both cases.
    """
    check_policy(policy)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size!r}")
    if img.mode not in ("L", "RGB"):
        img = to_8bit(img)
    if policy == "stretch":
        out = img.resize((size, size), Image.Resampling.BILINEAR) if img.size != (size, size) else img
    else:
        width, height = img.size
        scale = size / max(width, height)
        new_w = min(size, max(1, round(width * scale)))
        new_h = min(size, max(1, round(height * scale)))
        inner = img.resize((new_w, new_h), Image.Resampling.BILINEAR) if (new_w, new_h) != img.size else img
        out = Image.new(img.mode, (size, size), 0)
        out.paste(inner, ((size - new_w) // 2, (size - new_h) // 2))
    pixels = np.asarray(out, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def load_image(
    path: str | os.PathLike,
    size: int,
    policy: str = "stretch",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``path`` and resize it: a ``(size, size, 3)`` uint8 RGB array.

    Raises :class:`ImageError` for an unusable file (see :func:`decode`).
    """
    check_policy(policy)
    with decoded(path, max_pixels=max_pixels) as img:
        return resize_rgb(img, size, policy)
