"""Reading DICOM files: recognising them, their header, and the pixels a radiologist's viewer shows.

A file is DICOM when bytes 128-131 are ``DICM`` (after the 128-byte
preamble), whatever its name or extension: :func:`is_dicom`. pydicom (the
``[dicom]`` extra) is imported only when a DICOM file is read, so the core
works without it; a DICOM file met without it gets the status
``decoder_missing`` naming the extra.

**Pixel pipeline** (:func:`display_pixels`, docs/dicom.md), for MONOCHROME1/2:

1. Modality LUT: *Rescale Slope/Intercept* or a *Modality LUT Sequence*
   (``pydicom.pixels.apply_modality_lut``).
2. VOI: the first item of a *VOI LUT Sequence*, scaled from its output range
   (``2**bits - 1``, bits from its *LUT Descriptor*) to 0-255; else the first
   *Window Center/Width* with the *VOI LUT Function* (``LINEAR`` by default,
   ``LINEAR_EXACT``, ``SIGMOID``; DICOM PS3.3 C.11.2.1.2) straight to 0-255;
   else the full range: the smallest value to 0 and the largest to 255 (a
   constant image is all 0). A VOI LUT or window that cannot be read is skipped
   (the next rule applies).
3. MONOCHROME1 (white is the smallest value) inverted: ``255 - y``.
4. Rounded to uint8.

Colour images (RGB, YBR_* converted to RGB by pydicom, PALETTE COLOR through
its palette) are scaled from their bit depth to 8 bits, no VOI.

Multi-frame files (*Number of Frames* > 1) are not scored: status
``multi_frame`` (radiographs are single frames; a cine or a tomosynthesis
stack is not one radiograph).

Every file that cannot give an image raises :class:`DicomError` with a status
(:data:`DICOM_STATUSES`, or ``truncated``/``too_large`` as for other images);
:mod:`mura_ens.data.images` turns it into an ``ImageError``.

**Scanning** (:func:`scan_dicom_files`): a DICOM file outside any MURA study
folder is grouped by its header: study key ``<part>/<StudyInstanceUID>``
(``XR_HAND/1.2.840...``), patient = *Patient ID*, body part from
:func:`mura_ens.data.body_parts.map_body_part`. A study whose header names
none of the seven parts keeps ``body_part`` empty and its key names what the
header said, the way a MURA ``XR_KNEE`` folder does: ``XR_<Body Part
Examined>/<uid>`` (``XR_EXTREMITY/...``), or ``XR_UNSPECIFIED/<uid>`` when
there is no *Body Part Examined*; the scan summary lists those
(:func:`mura_ens.data.layout.unknown_parts`). A file whose header cannot be
read, or that has no *Study Instance UID*, is a study of its own folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .body_parts import PartMatch, map_body_part, words

if TYPE_CHECKING:
    from PIL import Image

PREAMBLE_BYTES = 128
MAGIC = b"DICM"
#: Statuses only DICOM files get (``ImageError.status``); damaged files are ``truncated`` like other images.
DICOM_STATUSES: tuple[str, ...] = (
    "no_pixel_data",
    "multi_frame",
    "decoder_missing",
    "unsupported_transfer_syntax",
    "unsupported_photometric",
)
EXTRA_HINT = "pip install 'mura-ens[dicom]'"
#: SOP class of a DICOMDIR (the media's index): never an image.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Skip reason of a DICOMDIR (:data:`mura_ens.data.layout.SKIP_REASONS`).
DICOMDIR_REASON = "dicomdir"
#: Study-key prefix of a study whose header names no body part at all.
UNSPECIFIED_PART = "XR_UNSPECIFIED"

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) little / big endian
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


class DicomError(Exception):
    """A DICOM file that gives no image: ``status`` (as ``ImageError.status``) and a one-line ``detail``."""

    def __init__(self, status: str, detail: str):
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {detail}")


def starts_as_dicom(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) has ``DICM`` after the 128-byte preamble."""
    return head[PREAMBLE_BYTES : PREAMBLE_BYTES + len(MAGIC)] == MAGIC


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True for a readable regular file whose bytes 128-131 are ``DICM``, whatever its name."""
    try:
        with open(path, "rb") as fh:
            return starts_as_dicom(fh.read(PREAMBLE_BYTES + len(MAGIC)))
    except OSError:
        return False


def looks_like_uid(text: str) -> bool:
    """True for a DICOM UID (digits and dots, e.g. ``1.2.840.113619.2.55``)."""
    return bool(_UID.match(text))


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise DicomError("decoder_missing", f"reading DICOM needs the [dicom] extra: {EXTRA_HINT}") from exc
    return pydicom


@dataclass(frozen=True)
class DicomHeader:
    """What mura-ens reads from a DICOM header (no pixels): grouping, body part and how to decode."""

    study_uid: str
    patient_id: str
    body_part_examined: str
    study_description: str
    series_description: str
    n_frames: int
    photometric: str
    transfer_syntax: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    sop_class: str
    patient_name: str = ""
    accession_number: str = ""

    def identifiers(self) -> set[str]:
        """What identifies the patient or the examination (``--pseudonymize`` replaces them in every output):
        Patient ID, Study Instance UID, Accession Number, and the Patient's Name with each of its parts
        (``SMITH^JOHN``: also ``SMITH``, ``JOHN``, ``SMITH_JOHN``, ``SMITH JOHN``, as a folder may be named)."""
        found = {self.study_uid, self.patient_id, self.accession_number}
        name = self.patient_name.strip()
        if name:
            parts = [piece for piece in re.split(r"[\^=,\s]+", name) if len(piece) >= 2]
            found |= {name, *parts, "_".join(parts), " ".join(parts), "^".join(parts)}
        return {i for i in found if i.strip()}

    @property
    def is_dicomdir(self) -> bool:
        """True for a DICOMDIR: the index of a DICOM medium, not an image."""
        return self.sop_class == DICOMDIR_SOP_CLASS

    def body_part(self) -> PartMatch:
        """The MURA part the header names (:func:`mura_ens.data.body_parts.map_body_part`)."""
        return map_body_part(self.body_part_examined, self.study_description, self.series_description)

    def part_label(self) -> str:
        """The study key's part: the MURA part, else ``XR_<Body Part Examined>``, else :data:`UNSPECIFIED_PART`."""
        part = self.body_part().part
        if part:
            return part
        named = [word for word in words(self.body_part_examined) if word != "XR"]
        return f"XR_{'_'.join(named)}" if named else UNSPECIFIED_PART


def header_of(ds: Any) -> DicomHeader:
    """A :class:`DicomHeader` from a pydicom dataset (missing elements: ``""`` or 0, one frame)."""
    meta = getattr(ds, "file_meta", None)

    def text(keyword: str, source: Any = ds) -> str:
        value = source.get(keyword, "") if source is not None else ""
        return " ".join(str(value if value is not None else "").split())

    def number(keyword: str, default: int) -> int:
        try:
            return int(ds.get(keyword, default) or default)
        except (TypeError, ValueError):
            return default

    return DicomHeader(
        study_uid=text("StudyInstanceUID"),
        patient_id=text("PatientID"),
        body_part_examined=text("BodyPartExamined"),
        study_description=text("StudyDescription"),
        series_description=text("SeriesDescription"),
        n_frames=number("NumberOfFrames", 1),
        photometric=text("PhotometricInterpretation").upper(),
        transfer_syntax=text("TransferSyntaxUID", meta),
        rows=number("Rows", 0),
        columns=number("Columns", 0),
        samples_per_pixel=number("SamplesPerPixel", 1),
        bits_allocated=number("BitsAllocated", 8),
        sop_class=text("MediaStorageSOPClassUID", meta) or text("SOPClassUID"),
        patient_name=text("PatientName"),
        accession_number=text("AccessionNumber"),
    )


def read_header(path: str | os.PathLike[str]) -> DicomHeader:
    """The header of a DICOM file, without reading its pixel data.

    Raises :class:`DicomError`: ``decoder_missing`` without pydicom, ``truncated`` for a header pydicom cannot
    parse or that names no SOP Class UID (what pydicom makes of a damaged one).
    """
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for damaged headers
        raise DicomError("truncated", f"damaged DICOM header: {type(exc).__name__}: {exc}") from exc
    header = header_of(ds)
    if not header.sop_class:  # every DICOM object names its SOP class: pydicom read bytes that are not one
        raise DicomError("truncated", "damaged DICOM header: no SOP Class UID")
    return header


# ----------------------------------------------------------------------------------------------- the pixel pipeline


def window_to_8bit(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window ``values`` to 0-255 (uint8) as DICOM PS3.3 C.11.2.1.2 defines it, for output range 0-255.

    ``LINEAR``: ``x <= c - 0.5 - (w-1)/2`` -> 0, ``x > c - 0.5 + (w-1)/2`` -> 255, else
    ``((x - (c - 0.5)) / (w - 1) + 0.5) * 255`` (``w == 1``: a threshold at ``c - 0.5``).
    ``LINEAR_EXACT``: ``((x - c) / w + 0.5) * 255`` clipped. ``SIGMOID``: ``255 / (1 + exp(-4 (x - c) / w))``.
    """
    x = np.asarray(values, dtype=np.float64)
    function = function.upper() or "LINEAR"
    if function == "SIGMOID":
        scaled = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        scaled = np.clip((x - center) / width + 0.5, 0.0, 1.0)
    elif width <= 1:
        scaled = (x > center - 0.5).astype(np.float64)
    else:
        scaled = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.rint(scaled * 255.0).astype(np.uint8)


def full_range_to_8bit(values: np.ndarray) -> np.ndarray:
    """Scale ``values`` linearly so that their minimum is 0 and their maximum 255 (constant: all 0)."""
    x = np.asarray(values, dtype=np.float64)
    low, high = float(x.min()), float(x.max())
    if not high > low:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.rint((x - low) * (255.0 / (high - low))).astype(np.uint8)


def first_window(ds: Any) -> tuple[float, float, str] | None:
    """The first *Window Center*/*Width* and the *VOI LUT Function*, or None when absent or unusable."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if _is_multi(center) else center)
        w = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    smallest = 1.0 if function == "LINEAR" else 0.0
    if not (np.isfinite(c) and np.isfinite(w)) or w < smallest or (w == smallest and function != "LINEAR"):
        return None
    return c, w, function


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _voi_lut_to_8bit(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The first VOI LUT of ``ds`` applied and scaled to 0-255, or None when there is none usable."""
    if not ds.get("VOILUTSequence"):
        return None
    from pydicom.pixels import apply_voi

    try:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, NotImplementedError):
        return None
    return np.rint(mapped.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)


def monochrome_to_8bit(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values of a MONOCHROME1/2 image -> the uint8 grey levels a viewer shows (module docstring)."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(arr, ds)
    out = _voi_lut_to_8bit(values, ds)
    if out is None:
        window = first_window(ds)
        out = window_to_8bit(values, *window) if window is not None else full_range_to_8bit(values)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _bits_to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8 and bits <= 8:
        return arr
    return np.rint(np.clip(arr.astype(np.float64), 0, None) * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)


def display_pixels(ds: Any, arr: np.ndarray) -> np.ndarray:
    """The decoded pixels ``arr`` of ``ds`` as a viewer shows them: (H, W) or (H, W, 3) uint8 (module docstring)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in _MONOCHROME:
        return monochrome_to_8bit(arr, ds)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _bits_to_8bit(apply_color_lut(arr, ds), bits)
    return _bits_to_8bit(arr, int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8))


# ------------------------------------------------------------------------------------------------- reading a file


@dataclass(frozen=True)
class DicomImage:
    """A DICOM file checked from its header and ready to decode (:func:`open_dicom`)."""

    path: str
    header: DicomHeader
    #: Bytes decoding it takes at its peak (file, decoded pixels, float64 working copies, result).
    cost: int

    def pixels(self) -> np.ndarray:
        """Read the whole file, decode it and run :func:`display_pixels`; failures as :class:`DicomError`."""
        pydicom = _pydicom()
        try:
            ds = pydicom.dcmread(self.path)
        except Exception as exc:
            raise DicomError("truncated", f"damaged DICOM file: {type(exc).__name__}: {exc}") from exc
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise _no_pixel_data(self.path, self.header.sop_class)
        try:
            arr = ds.pixel_array
        except Exception as exc:  # decoders raise ValueError, RuntimeError, OSError, ... for damaged data
            raise DicomError("truncated", f"pixel data not decodable: {type(exc).__name__}: {exc}") from exc
        try:
            return display_pixels(ds, arr)
        except Exception as exc:
            raise DicomError("truncated", f"pixel pipeline failed: {type(exc).__name__}: {exc}") from exc

    def image(self) -> Image.Image:
        """:meth:`pixels` as a Pillow ``L`` or ``RGB`` image."""
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(self.pixels()))


def _no_pixel_data(path: str, sop_class: str) -> DicomError:
    """``truncated`` when the file should hold an image it lacks, else ``no_pixel_data``.

    Should: its SOP class is an image storage class (``... Image Storage``), or the
    file holds a Pixel Data tag pydicom did not get to (the file ends inside it).
    """
    from pydicom.uid import UID

    if sop_class and "Image Storage" in UID(sop_class).name:
        return DicomError("truncated", f"a {UID(sop_class).name} object without its image (the file is cut short?)")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        data = b""
    if any(tag in data for tag in _PIXEL_TAGS):
        return DicomError("truncated", "the Pixel Data element is cut short")
    return DicomError("no_pixel_data", "no Pixel Data element (not an image, e.g. a report or presentation state)")


def open_dicom(path: str | os.PathLike[str], *, max_pixels: int, max_bytes: int) -> DicomImage:
    """Read and check a DICOM file's header: a :class:`DicomImage` to decode, or :class:`DicomError`.

    Checks, in order: a DICOMDIR or no image size (``no_pixel_data``), more than
    one frame (``multi_frame``), a photometric interpretation not read
    (``unsupported_photometric``), the transfer syntax's decoder
    (``unsupported_transfer_syntax`` / ``decoder_missing``), the size
    (``too_large`` over ``max_pixels`` pixels or ``max_bytes`` to decode).
    """
    path = os.fspath(path)
    header = read_header(path)
    if header.is_dicomdir:
        raise DicomError("no_pixel_data", "a DICOMDIR (the index of a DICOM medium), not an image")
    if header.rows < 1 or header.columns < 1:
        raise _no_pixel_data(path, header.sop_class)
    if header.n_frames > 1:
        raise DicomError(
            "multi_frame", f"{header.n_frames} frames: mura-ens scores single-frame radiographs (docs/dicom.md)"
        )
    if header.photometric not in (*_MONOCHROME, *_COLOUR, "PALETTE COLOR"):
        raise DicomError("unsupported_photometric", f"Photometric Interpretation {header.photometric or 'missing'}")
    check_decoder(header.transfer_syntax)
    pixels = header.rows * header.columns
    if pixels > max_pixels:
        raise DicomError("too_large", f"{header.columns}x{header.rows} pixels > max_pixels={max_pixels}")
    per_pixel = header.samples_per_pixel * (max(1, header.bits_allocated // 8) + 1) + 16
    cost = os.path.getsize(path) + pixels * per_pixel
    if cost > max_bytes:
        raise DicomError("too_large", f"{header.columns}x{header.rows} pixels need {cost >> 20} MiB to decode")
    return DicomImage(path=path, header=header, cost=cost)


def check_decoder(transfer_syntax: str) -> None:
    """Raise :class:`DicomError` unless pydicom can decode pixel data of ``transfer_syntax`` here."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(transfer_syntax or "1.2.840.10008.1.2")  # none in the file meta: pydicom reads it as Implicit VR LE
    name = uid.name if uid.is_transfer_syntax else uid
    try:
        decoder = get_decoder(uid)
    except (NotImplementedError, ValueError) as exc:
        raise DicomError("unsupported_transfer_syntax", f"{name}: pydicom has no decoder for it") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise DicomError("decoder_missing", f"{name}: no decoder installed ({missing}); {EXTRA_HINT}")


# ---------------------------------------------------------------------------------------------------- scanning


def scan_dicom_files(paths: Iterable[str], root: str) -> tuple[list[dict], list[dict]]:
    """Manifest rows for DICOM files outside any study folder, grouped by their headers (module docstring).

    Returns ``(rows, skipped)``: manifest row dicts, and ``{"path", "reason"}``
    for DICOMDIR files. ``root`` is the folder scanned: a file without a usable
    header is a study of its folder, keyed by the folder's path relative to
    ``root``'s parent (as :func:`mura_ens.data.layout.walk_mura` keys clashing folders).
    """
    from ..console import echo

    rows: list[dict] = []
    skipped: list[dict] = []
    missing_extra = 0
    base = os.path.dirname(root) or root
    for path in paths:
        try:
            header: DicomHeader | None = read_header(path)
        except DicomError as exc:
            header, missing_extra = None, missing_extra + (exc.status == "decoder_missing")
        if header is not None and header.is_dicomdir:
            skipped.append({"path": path, "reason": DICOMDIR_REASON})
            continue
        rows.append(_header_row(path, header, base))
    if missing_extra:
        echo(
            f"mura-ens: {missing_extra} DICOM files found but pydicom is not installed ({EXTRA_HINT}): "
            "each is a study of its folder and cannot be decoded"
        )
    return rows, skipped


def _header_row(path: str, header: DicomHeader | None, base: str) -> dict:
    """A manifest row; ``identifiers`` (not a manifest column) holds the header's (:meth:`DicomHeader.identifiers`)."""
    row: dict[str, Any] = {"path": path, "patient": "", "body_part": "", "label": None, "split": ""}
    if header is None:
        return {**row, "study": _folder_key(path, base)}
    row["identifiers"] = header.identifiers()
    if not header.study_uid:
        return {
            **row,
            "study": _folder_key(path, base),
            "patient": header.patient_id,
            "body_part": header.body_part().part,
        }
    return {
        **row,
        "study": f"{header.part_label()}/{header.study_uid}",
        "patient": header.patient_id,
        "body_part": header.body_part().part,
    }


def _folder_key(path: str, base: str) -> str:
    return os.path.relpath(os.path.dirname(path), base).replace(os.sep, "/")
