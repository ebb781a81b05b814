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
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UsageError
from ..run_folder import RESIZE_POLICIES  # stretch (MURA paper) or pad to square; part of the model metadata contract

#: Images with more pixels than this raise ``ImageError(status="too_large")``.
DEFAULT_MAX_PIXELS = 64_000_000

#: Every value ``ImageError.status`` can take.
IMAGE_STATUSES: tuple[str, ...] = ("unreadable", "not_an_image", "truncated", "empty_file", "too_large")

# Leading bytes of formats we may meet; a file that starts like one of these
# but cannot be opened is a damaged image, not a non-image.
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_ALPHA_MODES = {"LA": "L", "La": "L", "RGBA": "RGB", "RGBa": "RGB", "PA": "RGB"}
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "I;32", "I;32L", "I;32B")


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


def decode(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode ``path``; return an 8-bit ``"L"`` or ``"RGB"`` image.

    Decoding every pixel is the integrity check: it catches truncated files
    and broken compressed streams, which Pillow's ``verify()`` (a second
    open) would only partly add to. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
    left alone, so cut-off files fail instead of being padded with grey.

    Raises :class:`ImageError` with status ``empty_file`` (zero bytes),
    ``not_an_image`` (not a format Pillow knows, e.g. a macOS ``._x.png``),
    ``truncated`` (recognised header but damaged or cut-off data),
    ``too_large`` (more than ``max_pixels`` pixels) or ``unreadable``
    (missing file, permission or I/O error).
    """
    path = os.fspath(path)
    try:
        if os.stat(path).st_size == 0:
            raise ImageError("empty_file", path, "0 bytes")
        fh = open(path, "rb")
    except OSError as exc:
        raise ImageError("unreadable", path, exc.strerror or type(exc).__name__) from exc
    with fh:
        try:
            img = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise ImageError("too_large", path, str(exc)) from exc
        except (UnidentifiedImageError, SyntaxError, ValueError, EOFError, OSError) as exc:
            if _has_image_magic(fh):
                raise ImageError("truncated", path, f"damaged header: {exc}") from exc
            raise ImageError("not_an_image", path, "not a recognised image format") from exc
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError("too_large", path, f"{width}x{height} pixels > max_pixels={max_pixels}")
        if width == 0 or height == 0:
            raise ImageError("truncated", path, f"{width}x{height} pixels")
        try:
            img.load()
        except OSError as exc:
            if exc.errno is not None:  # a real read error, not a decoder complaint
                raise ImageError("unreadable", path, exc.strerror or str(exc)) from exc
            raise ImageError("truncated", path, str(exc)) from exc
        except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ImageError("truncated", path, str(exc)) from exc
    if img.format not in ("PNG", None):  # EXIF orientation only exists for JPEG/TIFF/WebP
        return to_8bit(ImageOps.exif_transpose(img))
    return to_8bit(img)


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
    values = np.asarray(img)
    if values.ndim != 2:  # pragma: no cover - these modes are single-channel
        values = values[..., 0]
    values = values.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, np.nan)
    low, high = np.nanmin(values) if values.size else 0.0, np.nanmax(values) if values.size else 0.0
    if not np.isfinite(low) or high <= low:
        return Image.new("L", img.size, 0)
    scaled = (values - low) * (255.0 / (high - low))
    scaled = np.nan_to_num(scaled, nan=0.0)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


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
    return resize_rgb(decode(path, max_pixels=max_pixels), size, policy)
