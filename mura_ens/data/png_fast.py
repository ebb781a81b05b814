"""The libspng path of the image loader: which PNGs it takes, what they cost, the decode itself.

Only the kinds of PNG radiographs are stored as take this path (:data:`KINDS`):
8-bit and 16-bit greyscale and 8-bit RGB, interlaced or not. Everything else
(palette, alpha, 1/2/4-bit grey, 16-bit RGB), every PNG whose chunks are not
all complete with the right CRCs up to ``IEND``, and every PNG libspng cannot
decode is left to the Pillow path of :mod:`mura_ens.data.images`, which then
decides the pixels or the status exactly as before libspng was added.

libspng comes with the ``pyspng`` wheel, compiled into its extension module.
This module calls libspng's C API there through :mod:`ctypes` rather than
``pyspng.load``: a ctypes call releases the GIL (``pyspng.load`` holds it, so
threads decoding at once would take turns), and the pixels go straight into
a numpy array (no copy of the file). Like ``pyspng.load``, it has libspng skip
CRCs (and so the zlib checksum): :func:`chunks_sound` has already checked
every chunk's CRC, which is what catches damage on disk (a PNG whose chunks
are intact but whose compressed data is wrong, an encoder's bug, inflates to
whatever it inflates to, where Pillow may reject it). :func:`load_libspng` is
None — and every image takes the Pillow path — without ``pyspng``, when its
extension does not export the C API (the Linux and macOS wheels of pyspng
0.1.4 do, the Windows one does not), or when it carries another libspng
series than 0.7 (whose API this module declares).
"""

from __future__ import annotations

import ctypes
import functools
import zlib
from dataclasses import dataclass

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Bytes that hold the signature and the IHDR chunk's length, type and the fields :func:`read_header` reads.
HEADER_BYTES = 26

#: (colour type, bit depth) of the PNGs this path decodes -> the kind's name.
KINDS = {(0, 8): "grey8", (0, 16): "grey16", (2, 8): "rgb8"}
#: Bytes per pixel this path holds at its peak: libspng's array (16-bit grey comes as grey + alpha, 4 bytes)
#: plus what the 8-bit, one- or three-channel image made from it takes (RGB: Pillow stores 4 bytes a pixel).
PIXEL_BYTES = {"grey8": 1, "grey16": 5, "rgb8": 7}
#: libspng's output format per kind (``enum spng_format`` of spng.h 0.7: G8, GA16, RGB8) and its channels.
_SPNG_FORMATS = {"grey8": (64, 1), "grey16": (32, 2), "rgb8": (4, 3)}
#: Largest chunk libspng may buffer (its default is unlimited; pyspng uses the same figure).
_CHUNK_LIMIT = 64 * 2**20
#: ``SPNG_CRC_USE``: use chunk data without computing CRCs or the zlib checksum (chunks_sound checks the CRCs).
_SPNG_CRC_USE = 2


@dataclass(frozen=True)
class PngHeader:
    """What the IHDR chunk says about a PNG this path can decode."""

    width: int
    height: int
    kind: str  # a value of KINDS

    @property
    def pixels(self) -> int:
        """Width x height."""
        return self.width * self.height

    def cost(self, file_bytes: int) -> int:
        """Bytes decoding it here takes at its peak: the pixels (:data:`PIXEL_BYTES`) and the file, read whole."""
        return self.pixels * PIXEL_BYTES[self.kind] + file_bytes


def read_header(head: bytes) -> PngHeader | None:
    """The :class:`PngHeader` of a PNG starting with ``head`` (>= :data:`HEADER_BYTES`), or None.

    None when ``head`` is not the start of a PNG, has no IHDR chunk first, has
    a zero side, or is a kind this path does not decode.
    """
    if len(head) < HEADER_BYTES or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width = int.from_bytes(head[16:20], "big")
    height = int.from_bytes(head[20:24], "big")
    kind = KINDS.get((head[25], head[24]))
    if kind is None or width == 0 or height == 0:
        return None
    return PngHeader(width, height, kind)


def chunks_sound(data: bytes) -> bool:
    """True when ``data`` is a PNG signature, then whole chunks with matching CRCs, up to ``IEND``."""
    view = memoryview(data)
    end = len(data)
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= end:
        length = int.from_bytes(view[pos : pos + 4], "big")
        stop = pos + 12 + length
        if stop > end or zlib.crc32(view[pos + 4 : stop - 4]) != int.from_bytes(view[stop - 4 : stop], "big"):
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos = stop
    return False


class Libspng:
    """libspng's C API (the few calls a decode needs), bound with :mod:`ctypes` from the library at ``path``."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)  # raises OSError; a missing symbol raises AttributeError below
        void_p, size_t, c_int = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        signatures = {
            "spng_ctx_new": ([c_int], void_p),
            "spng_ctx_free": ([void_p], None),
            "spng_set_chunk_limits": ([void_p, size_t, size_t], c_int),
            "spng_set_crc_action": ([void_p, c_int, c_int], c_int),
            "spng_set_png_buffer": ([void_p, ctypes.c_char_p, size_t], c_int),
            "spng_decoded_image_size": ([void_p, c_int, ctypes.POINTER(size_t)], c_int),
            "spng_decode_image": ([void_p, void_p, size_t, c_int, c_int], c_int),
            "spng_strerror": ([c_int], ctypes.c_char_p),
            "spng_version_string": ([], ctypes.c_char_p),
        }
        for name, (argtypes, restype) in signatures.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, restype
        self._lib = lib
        self.version = lib.spng_version_string().decode()

    def decode_into(self, data: bytes, spng_format: int, out: np.ndarray) -> None:
        """Decode the PNG ``data`` into ``out`` (C-contiguous, exactly the decoded size); ``RuntimeError`` if not."""
        lib = self._lib
        ctx = lib.spng_ctx_new(0)
        if not ctx:
            raise MemoryError("libspng could not make a decoding context")
        try:
            self._check(lib.spng_set_chunk_limits(ctx, _CHUNK_LIMIT, _CHUNK_LIMIT))
            self._check(lib.spng_set_crc_action(ctx, _SPNG_CRC_USE, _SPNG_CRC_USE))
            self._check(lib.spng_set_png_buffer(ctx, data, len(data)))
            size = ctypes.c_size_t()
            self._check(lib.spng_decoded_image_size(ctx, spng_format, ctypes.byref(size)))
            if size.value != out.nbytes or not out.flags.c_contiguous:
                raise RuntimeError(f"libspng decodes {size.value} bytes, the array holds {out.nbytes}")
            self._check(lib.spng_decode_image(ctx, out.ctypes.data, out.nbytes, spng_format, 0))
        finally:
            lib.spng_ctx_free(ctx)

    def _check(self, code: int) -> None:
        if code != 0:
            raise RuntimeError(f"libspng: {self._lib.spng_strerror(code).decode(errors='replace')}")


@functools.cache
def load_libspng() -> Libspng | None:
    """libspng from the ``pyspng`` extension, or None (no pyspng, no exported C API, not libspng 0.7)."""
    try:
        from pyspng import _pyspng_c  # type: ignore[import-untyped]  # no stubs, no py.typed
    except ImportError:
        return None
    try:
        libspng = Libspng(_pyspng_c.__file__)
    except (OSError, AttributeError, TypeError):
        return None
    return libspng if libspng.version.startswith("0.7.") else None


def decode(data: bytes, header: PngHeader) -> np.ndarray:
    """The pixels of the PNG ``data`` whose header is ``header``, decoded by libspng (the GIL released).

    ``grey8``: (H, W) uint8; ``grey16``: (H, W) uint16 (a view of the grey
    channel of libspng's grey + alpha); ``rgb8``: (H, W, 3) uint8.
    Transparency (a ``tRNS`` colour key) and gamma are ignored, as in the
    Pillow path for these modes. Raises ``RuntimeError`` when libspng cannot
    decode the data (damaged, or not what the header says), ``ImportError``
    without libspng (:func:`load_libspng`).
    """
    libspng = load_libspng()
    if libspng is None:
        raise ImportError("libspng (the pyspng package) is not available")
    spng_format, channels = _SPNG_FORMATS[header.kind]
    dtype = np.uint16 if header.kind == "grey16" else np.uint8
    out = np.empty((header.height, header.width, channels), dtype=dtype)
    libspng.decode_into(data, spng_format, out)
    return out if header.kind == "rgb8" else out[..., 0]
