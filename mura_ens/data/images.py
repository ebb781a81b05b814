"""Image decoding and resizing: any input mode in, uint8 RGB out.

**Decoders.** PNGs of the kinds radiographs are stored as (8/16-bit grey,
8-bit RGB) are decoded by libspng (from the ``pyspng`` wheel, through its C
API with the GIL released: :mod:`mura_ens.data.png_fast`); everything else,
and any PNG that path declines (a damaged file, no libspng on this
platform), by Pillow, as before. ``backend="pillow"`` forces the Pillow
path everywhere (the loader as it was before libspng; kept for
comparisons: ``benchmarks/loader.py``). On the libspng path an RGB
image whose three channels are equal (half of MURA's radiographs are stored
so) becomes one grey channel before resizing, and 16-bit grey is scaled by the
same rule as below. **Tolerance:** both paths give the same pixels: the
resize filter and the 16-bit rule are Pillow's and this module's in both, and
resizing one channel gives what resizing three equal ones gives channel by
channel. ``tests/test_images_fast.py`` holds every pixel to max |difference|
<= 1 grey level against ``backend="pillow"`` and observes 0. Bad files get
the same statuses: the byte and pixel caps are checked from the PNG header
before anything is decoded, and whatever libspng does not decode cleanly is
decoded by Pillow, whose outcome (pixels or status) is then the answer.

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
16 bits), so it never holds the float64 copies of a whole image. The libspng
path reserves its own cost (:meth:`png_fast.PngHeader.cost`: 1, 5 or 7 bytes
a pixel for 8-bit grey, 16-bit grey, RGB, plus the file read whole); an
image over ``max_bytes`` that way but not Pillow's is decoded by Pillow.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UsageError
from ..run_folder import RESIZE_POLICIES  # stretch (MURA paper) or pad to square; part of the model metadata contract
from . import png_fast
from .dicom import DICOM_STATUSES, MAGIC, PREAMBLE_BYTES, starts_as_dicom

#: Images with more pixels than this raise ``ImageError(status="too_large")``.
DEFAULT_MAX_PIXELS = 64_000_000
#: Images whose decoding would take more bytes than this (:func:`decode_cost`) are ``too_large`` too.
#: 256 MiB: an 8-bit RGB image at the pixel cap fits, a 16-bit 8000 x 8000 one (192 MB) too, RGBA of that size not.
DEFAULT_MAX_BYTES = 256 * 2**20
#: Bytes that all the images being decoded in this process may take together (:data:`DECODE_BUDGET`).
DEFAULT_DECODE_BUDGET = 512 * 2**20

#: Decoder choices: ``auto`` (libspng for the PNGs it takes, else Pillow) or ``pillow`` (Pillow for every file).
BACKENDS: tuple[str, ...] = ("auto", "pillow")

#: Every value ``ImageError.status`` can take (DICOM files add theirs: :mod:`mura_ens.data.dicom`).
IMAGE_STATUSES: tuple[str, ...] = (
    "unreadable",
    "not_an_image",
    "truncated",
    "empty_file",
    "too_large",
    *DICOM_STATUSES,
)

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
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backend: str = "auto",
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
    :func:`decoded`, which holds the reservation meanwhile. ``backend``: one
    of :data:`BACKENDS` (module docstring).
    """
    with decoded(path, max_pixels=max_pixels, max_bytes=max_bytes, backend=backend) as img:
        return img


@contextmanager
def decoded(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    budget: MemoryBudget | None = None,
    backend: str = "auto",
) -> Iterator[Image.Image]:
    """:func:`decode` as a ``with`` block that holds the image's bytes of ``budget`` until it ends.

    ``budget`` defaults to the process-wide :data:`DECODE_BUDGET`.
    """
    path = os.fspath(path)
    check_backend(backend)
    fh, file_bytes = _open_file(path)
    with fh:
        if _is_dicom_stream(fh):  # by its preamble, whatever the file's name: data/dicom.py decodes it
            yield from _decoded_dicom(path, max_pixels=max_pixels, max_bytes=max_bytes, budget=budget)
            return
        header = _libspng_header(fh, file_bytes, max_pixels, max_bytes) if backend == "auto" else None
        if header is not None:
            with (budget if budget is not None else DECODE_BUDGET).reserve(header.cost(file_bytes)):
                fast = _decode_with_libspng(fh, header)
                if fast is not None:
                    yield fast
                    return
            fh.seek(0)  # declined: Pillow decides the pixels or the status
        img = _open(fh, path)
        cost = _check_size(img, path, max_pixels=max_pixels, max_bytes=max_bytes)
        with (budget if budget is not None else DECODE_BUDGET).reserve(cost):
            _load(img, path)
            if img.format not in ("PNG", None):  # EXIF orientation only exists for JPEG/TIFF/WebP
                img = ImageOps.exif_transpose(img)
            yield to_8bit(img)


def _is_dicom_stream(fh) -> bool:
    """True when the open file is DICOM (``DICM`` after the preamble); the file is rewound either way."""
    try:
        head = fh.read(PREAMBLE_BYTES + len(MAGIC))
        fh.seek(0)
    except OSError:
        return False
    return starts_as_dicom(head)


def _decoded_dicom(path: str, *, max_pixels: int, max_bytes: int, budget: MemoryBudget | None) -> Iterator[Image.Image]:
    """:func:`decoded` for a DICOM file (:mod:`mura_ens.data.dicom`): its failures as :class:`ImageError`."""
    from .dicom import DicomError, open_dicom

    try:
        dicom = open_dicom(path, max_pixels=max_pixels, max_bytes=max_bytes)
    except DicomError as exc:
        raise ImageError(exc.status, path, exc.detail) from exc
    with (budget if budget is not None else DECODE_BUDGET).reserve(dicom.cost):
        try:
            img = dicom.image()
        except DicomError as exc:
            raise ImageError(exc.status, path, exc.detail) from exc
        yield img


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is one of :data:`BACKENDS`, else raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown image backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return backend


def _open_file(path: str) -> tuple[BinaryIO, int]:
    """``path`` opened for reading and its size; ``unreadable`` / ``empty_file`` as :class:`ImageError`."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the reader, a device never end
            raise ImageError("unreadable", path, f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size == 0:
            raise ImageError("empty_file", path, "0 bytes")
        return open(path, "rb"), info.st_size
    except OSError as exc:
        raise ImageError("unreadable", path, exc.strerror or type(exc).__name__) from exc


def _libspng_header(fh: BinaryIO, file_bytes: int, max_pixels: int, max_bytes: int) -> png_fast.PngHeader | None:
    """The header of a PNG the libspng path takes, or None; ``fh`` is rewound either way.

    Declined, so that Pillow reports what it always did: no libspng, not a
    kind of :data:`png_fast.KINDS`, over ``max_pixels`` or Pillow's
    decompression-bomb limit, or more than ``max_bytes`` to decode this way
    (Pillow's leaner decode of a large 16-bit image may still fit).
    """
    if png_fast.load_libspng() is None:
        return None
    try:
        header = png_fast.read_header(fh.read(png_fast.HEADER_BYTES))
        fh.seek(0)
    except OSError:
        return None
    bomb = Image.MAX_IMAGE_PIXELS
    if header is None or header.pixels > max_pixels or (bomb and header.pixels > 2 * bomb):
        return None
    return header if header.cost(file_bytes) <= max_bytes else None


def _decode_with_libspng(fh: BinaryIO, header: png_fast.PngHeader) -> Image.Image | None:
    """The 8-bit ``L``/``RGB`` image, or None when libspng cannot be trusted with this file (Pillow decides)."""
    try:
        data = fh.read()
        if not png_fast.chunks_sound(data):
            return None
        pixels = png_fast.decode(data, header)
    except Exception:  # an I/O error, or libspng's RuntimeError: any failure leaves the file to Pillow
        return None
    del data
    if header.kind == "grey16":
        return Image.fromarray(_scale_uint16(pixels))
    if header.kind == "rgb8":
        pixels = _single_channel_if_grey(pixels)
    return Image.fromarray(pixels)


def _single_channel_if_grey(rgb: np.ndarray) -> np.ndarray:
    """The first channel of an (H, W, 3) array whose three channels are equal (contiguous), else ``rgb``."""
    first = rgb[..., 0]
    if np.array_equal(first, rgb[..., 1]) and np.array_equal(first, rgb[..., 2]):
        return np.ascontiguousarray(first)
    return rgb


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
        lut = _lut_16bit(low, high)
        for top, bottom in bands:
            out[top:bottom] = lut[_band(img, top, bottom)]
        return Image.fromarray(out)
    for top, bottom in bands:
        values = _band(img, top, bottom).astype(np.float64)
        scaled = np.nan_to_num((np.where(np.isfinite(values), values, np.nan) - low) * factor, nan=0.0)
        out[top:bottom] = np.rint(scaled).astype(np.uint8)
    return Image.fromarray(out)


def _lut_16bit(low: float, high: float) -> np.ndarray:
    """The 8-bit value of every 16-bit one when ``low``..``high`` (high > low) spans 0..255."""
    table = np.rint((np.arange(65536, dtype=np.float64) - low) * (255.0 / (high - low)))
    return np.clip(table, 0, 255).astype(np.uint8)  # values outside [low, high] do not occur


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    """:func:`_scale_to_8bit`'s rule for an (H, W) uint16 array (libspng's 16-bit grey): the same pixels."""
    height, width = values.shape
    low, high = int(values.min()), int(values.max())
    out = np.zeros((height, width), dtype=np.uint8)  # a constant image becomes all zeros
    if high > low:
        lut = _lut_16bit(low, high)
        rows = max(1, _BAND_PIXELS // max(1, width))  # the lookup's index copy stays one band
        for top in range(0, height, rows):
            out[top : top + rows] = lut[values[top : top + rows]]
    return out


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
        pixels = np.stack((pixels, pixels, pixels), axis=-1)  # twice as fast as np.repeat on the channel axis
    return pixels


def load_image(
    path: str | os.PathLike,
    size: int,
    policy: str = "stretch",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: str = "auto",
) -> np.ndarray:
    """Decode ``path`` and resize it: a ``(size, size, 3)`` uint8 RGB array.

    Raises :class:`ImageError` for an unusable file (see :func:`decode`).
    ``backend``: one of :data:`BACKENDS` (module docstring); ``"pillow"`` is
    the loader as it was before libspng.
    """
    check_policy(policy)
    with decoded(path, max_pixels=max_pixels, backend=backend) as img:
        return resize_rgb(img, size, policy)
