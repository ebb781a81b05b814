"""DICOM input (docs/dicom.md): recognition, the viewer's pixel pipeline, bad files as statuses, PACS folders,
labels joined from a CSV, and ``--pseudonymize``.

Real radiographs come from ``pydicom-data`` (computed radiography ``RG1``/``RG3``, uncompressed and JPEG 2000);
the other files are written here with pydicom (native, RLE and JPEG 2000 through pydicom's encoders, JPEG
baseline through Pillow + ``pydicom.encaps``). No TensorFlow: the models are the tiny ONNX ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
from onnx_graphs import make_explain_run
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)
from scoring_fixtures import TINY, expected_prob, make_tree, read_images, read_studies, tiny

from mura_ens.cli.main import main
from mura_ens.data import dicom
from mura_ens.data.body_parts import BODY_PART_SYNONYMS, map_body_part
from mura_ens.data.images import IMAGE_STATUSES, ImageError, decode, load_image, resize_rgb
from mura_ens.data.layout import unknown_parts, walk_mura
from mura_ens.data.manifest import scan_source
from mura_ens.errors import ManifestError, UsageError
from mura_ens.pseudonym import PSEUDONYM_KEY_ENV, Pseudonymizer, pseudonym
from mura_ens.scoring.score import ScoreSettings, score

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    patient: str = "P1",
    study_uid: str | None = None,
    body_part: str = "",
    sop_class: str = CR_STORAGE,
    **elements,
) -> Path:
    """A DICOM file with a preamble (``save_as(enforce_file_format=True)``); ``elements``: extra keywords."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientID = patient
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if body_part:
        ds.BodyPartExamined = body_part
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def pixels_of(path: Path) -> np.ndarray:
    """What mura-ens decodes (``images.decode``, the hook every loader goes through) as an array."""
    return np.asarray(decode(path))


def status_of(path: Path) -> str:
    with pytest.raises(ImageError) as caught:
        decode(path)
    assert caught.value.status in IMAGE_STATUSES
    return caught.value.status


@pytest.fixture(scope="module")
def rg3() -> SimpleNamespace:
    """The real CR radiograph RG3 (1760 x 1760, 10 bits, MONOCHROME1, window 550/1024) decoded once per module."""
    uncompressed = get_testdata_file("RG3_UNCR.dcm")
    return SimpleNamespace(
        uncompressed=uncompressed,
        lossless=get_testdata_file("RG3_J2KR.dcm"),
        pixels=pixels_of(Path(uncompressed)),
    )


# ------------------------------------------------------------------------------------------- recognition


def test_dicom_is_recognised_by_its_preamble_whatever_the_name(tmp_path):
    real = Path(get_testdata_file("RG3_J2KI.dcm")).read_bytes()
    for name in ("IM000001", "image.png", "x.dcm"):
        (tmp_path / name).write_bytes(real)
        assert dicom.is_dicom(tmp_path / name), name
    (tmp_path / "text.dcm").write_bytes(b"DICM" + b"\0" * 200)  # DICM, but not after the 128-byte preamble
    (tmp_path / "short").write_bytes(b"\0" * 100)
    assert not dicom.is_dicom(tmp_path / "text.dcm")
    assert not dicom.is_dicom(tmp_path / "short")
    assert not dicom.is_dicom(tmp_path / "missing")
    # a DICOM named like a PNG decodes as DICOM, not as a broken PNG
    assert pixels_of(tmp_path / "image.png").shape == (1760, 1760)


def test_header_is_read_without_pixels(tmp_path):
    header = dicom.read_header(get_testdata_file("RG1_J2KR.dcm"))
    assert (header.patient_id, header.body_part_examined, header.study_description) == ("9RG1", "CHEST", "THORAX")
    assert (header.photometric, header.rows, header.columns, header.n_frames) == ("MONOCHROME1", 1955, 1841, 1)
    assert header.transfer_syntax == JPEG2000Lossless
    assert header.study_uid.startswith("1.3.6.1.4.1.5962.")
    assert header.body_part() == (
        "",
        "BodyPartExamined 'CHEST'; StudyDescription 'THORAX': none names one of the seven parts",
    )
    assert header.part_label() == "XR_CHEST"


# ------------------------------------------------------------------------------------ the pixel pipeline


def test_real_cr_radiograph_is_windowed_and_inverted_as_pydicom_windows_it(rg3):
    """RG3 (MONOCHROME1, window 550/1024): ours = 255 - pydicom's apply_windowing scaled from 10 bits to 8."""
    from pydicom.pixels import apply_windowing

    ds = pydicom.dcmread(rg3.uncompressed)
    reference = 255 - np.rint(apply_windowing(ds.pixel_array, ds) * (255 / 1023))
    diff = np.abs(rg3.pixels.astype(np.float64) - reference)
    assert diff.max() <= 1 and diff.mean() < 0.01
    # MONOCHROME1: the smallest stored values are white; at or below the window (549.5 - 511.5 = 38): 255
    stored = ds.pixel_array
    assert rg3.pixels[stored <= 38].min() == 255
    # the largest stored value, 1023: 255 - rint(((1023 - 549.5) / 1023 + 0.5) * 255) = 255 - 246
    assert set(rg3.pixels[stored == 1023].tolist()) == {9}


def test_jpeg2000_lossless_decodes_to_the_uncompressed_pixels(rg3):
    assert np.array_equal(pixels_of(Path(rg3.lossless)), rg3.pixels)


def test_load_image_of_a_dicom_is_the_training_and_scoring_input(rg3):
    loaded = load_image(rg3.uncompressed, 64)
    assert loaded.shape == (64, 64, 3) and loaded.dtype == np.uint8
    assert np.array_equal(loaded, resize_rgb(Image.fromarray(rg3.pixels), 64))


STORED = np.array([[74, 75, 99], [124, 125, 1000]], dtype=np.uint16)
WINDOWED = np.array([[0, 3, 125], [252, 255, 255]], dtype=np.uint8)  # c=100, w=51 (LINEAR, PS3.3 C.11.2.1.2.1)


@pytest.mark.parametrize(
    ("photometric", "elements", "expected"),
    [
        ("MONOCHROME2", {"WindowCenter": 100, "WindowWidth": 51}, WINDOWED),
        ("MONOCHROME1", {"WindowCenter": 100, "WindowWidth": 51}, 255 - WINDOWED),
        # several windows: the first
        ("MONOCHROME2", {"WindowCenter": [100, 2000], "WindowWidth": [51, 10]}, WINDOWED),
        # SIGMOID: 255 / (1 + exp(-4 (x - c) / w)), c=100, w=50
        (
            "MONOCHROME2",
            {"WindowCenter": 100, "WindowWidth": 50, "VOILUTFunction": "SIGMOID"},
            np.rint(255 / (1 + np.exp(-4 * (STORED.astype(float) - 100) / 50))).astype(np.uint8),
        ),
        # LINEAR_EXACT: ((x - c) / w + 0.5) * 255 clipped, c=100, w=50
        (
            "MONOCHROME2",
            {"WindowCenter": 100, "WindowWidth": 50, "VOILUTFunction": "LINEAR_EXACT"},
            np.array([[0, 0, 122], [250, 255, 255]], dtype=np.uint8),  # 99: 0.48 * 255 = 122.4
        ),
        # no window: the full range, smallest value 0, largest 255
        ("MONOCHROME2", {}, np.rint((STORED.astype(float) - 74) * 255 / 926).astype(np.uint8)),
        ("MONOCHROME1", {}, 255 - np.rint((STORED.astype(float) - 74) * 255 / 926).astype(np.uint8)),
    ],
    ids=["window", "monochrome1", "first-window", "sigmoid", "linear-exact", "full-range", "full-range-mono1"],
)
def test_window_and_photometric(tmp_path, photometric, elements, expected):
    path = write_dicom(tmp_path / "x.dcm", STORED, photometric=photometric, **elements)
    assert np.array_equal(pixels_of(path), expected)


def test_rescale_slope_and_intercept_come_before_the_window(tmp_path):
    # modality values 2x - 100: 74, 76, 100, 124, 126; then the window c=100, w=51
    stored = np.array([[87, 88, 100, 112, 113]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "x.dcm", stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100, WindowWidth=51
    )
    assert pixels_of(path).tolist() == [[0, 8, 130, 252, 255]]
    # and before the full range: 0.5 x + 10 = 10, 60, 111, 210 -> 0, 63.75, 128.775, 255
    stored = np.array([[0, 100, 202, 400]], dtype=np.uint16)
    path = write_dicom(tmp_path / "y.dcm", stored, RescaleSlope=0.5, RescaleIntercept=10)
    assert pixels_of(path).tolist() == [[0, 64, 129, 255]]


def voi_lut(bits: int, data: list[int]) -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [len(data), 10, bits])
    item.add_new("LUTData", "US", data)
    return item


def test_voi_lut_sequence_wins_over_the_window_and_is_scaled_from_its_bits(tmp_path):
    stored = np.array([[5, 10, 11, 12, 13, 20]], dtype=np.uint16)
    eight = write_dicom(
        tmp_path / "8.dcm",
        stored,
        VOILUTSequence=[voi_lut(8, [0, 50, 200, 255])],
        WindowCenter=0,
        WindowWidth=2,  # would make everything 255
    )
    assert pixels_of(eight).tolist() == [[0, 0, 50, 200, 255, 255]]
    sixteen = write_dicom(tmp_path / "16.dcm", stored, VOILUTSequence=[voi_lut(16, [0, 1000, 30000, 65535])])
    assert pixels_of(sixteen).tolist() == [[0, 0, 4, 117, 255, 255]]  # 1000 * 255 / 65535 = 3.9, 30000 -> 116.7


def test_real_voi_lut_and_modality_lut_files_decode():
    """pydicom-data's VOI LUT (vlut_04) and Modality LUT (mlut_18) test images use their full 8-bit range."""
    for name in ("vlut_04.dcm", "mlut_18.dcm"):
        pixels = pixels_of(Path(get_testdata_file(name)))
        assert pixels.shape == (512, 512) and pixels.min() == 0 and pixels.max() == 255, name


def test_compressed_transfer_syntaxes_decode(tmp_path):
    rng = np.random.default_rng(0)
    smooth = (np.add.outer(np.arange(48), np.arange(64)) * 36).astype(np.uint16)  # 0..3960, 12 bits
    native = write_dicom(tmp_path / "native.dcm", smooth)
    expected = pixels_of(native)
    for syntax in (RLELossless, JPEG2000Lossless):  # pydicom's own encoders
        ds = pydicom.dcmread(native)
        ds.compress(syntax, generate_instance_uid=False)
        ds.save_as(tmp_path / f"{syntax.name}.dcm", enforce_file_format=True)
        assert dicom.read_header(tmp_path / f"{syntax.name}.dcm").transfer_syntax == syntax
        assert np.array_equal(pixels_of(tmp_path / f"{syntax.name}.dcm"), expected), syntax.name
    # JPEG baseline (lossy, 8 bits): Pillow's encoder, encapsulated; close to the source, not equal
    grey = np.clip(rng.normal(120, 10, (48, 64)) + np.arange(64), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
    path = write_dicom(tmp_path / "jpeg.dcm", grey, bits_stored=8)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    decoded = pixels_of(path).astype(int)
    full_range = np.rint((grey - grey.min()) * (255 / (int(grey.max()) - int(grey.min()))))
    assert np.abs(decoded - full_range).mean() < 4


# ----------------------------------------------------------------------------------- bad files: statuses


def test_bad_dicom_files_get_statuses(tmp_path, monkeypatch):
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    good = write_dicom(tmp_path / "good.dcm", image)
    data = good.read_bytes()
    (tmp_path / "cut_pixels.dcm").write_bytes(data[: len(data) - 1000])
    (tmp_path / "cut_header.dcm").write_bytes(data[:300])
    lossless = Path(get_testdata_file("RG3_J2KI.dcm")).read_bytes()
    (tmp_path / "cut_j2k.dcm").write_bytes(lossless[: len(lossless) // 2])
    write_dicom(tmp_path / "report.dcm", None, sop_class=SR_STORAGE)
    write_dicom(tmp_path / "frames.dcm", np.stack([image, image, image]))
    write_dicom(tmp_path / "ybr.dcm", np.zeros((4, 4, 3), np.uint8), photometric="RGB", bits_stored=8)
    ds = pydicom.dcmread(tmp_path / "ybr.dcm")
    ds.PhotometricInterpretation = "HSV"
    ds.save_as(tmp_path / "hsv.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(good)
    ds.PixelData = encapsulate([b"\0" * 64])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(tmp_path / "mpeg2.dcm", enforce_file_format=True)
    expected = {
        "cut_pixels.dcm": "truncated",
        "cut_header.dcm": "truncated",
        "cut_j2k.dcm": "truncated",
        "report.dcm": "no_pixel_data",
        "frames.dcm": "multi_frame",
        "hsv.dcm": "unsupported_photometric",
        "mpeg2.dcm": "unsupported_transfer_syntax",
    }
    with pytest.warns(UserWarning):  # pydicom's own complaints about the cut files
        found = {name: status_of(tmp_path / name) for name in expected}
    assert found == expected
    assert pixels_of(good).shape == (64, 64)

    # a transfer syntax whose decoder is not installed: JPEG lossless (pylibjpeg-libjpeg or gdcm) taken away
    from pydicom.pixels import get_decoder

    decoder = get_decoder(JPEGLosslessSV1)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    with pytest.raises(ImageError) as caught:
        decode(get_testdata_file("JPEG-LL.dcm"))
    assert caught.value.status == "decoder_missing"
    assert "pylibjpeg-libjpeg" in caught.value.detail and "mura-ens[dicom]" in caught.value.detail


def test_without_pydicom_dicom_files_are_rows_with_a_status_and_the_extra_is_named(tmp_path):
    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "IM1").write_bytes(Path(get_testdata_file("RG3_J2KI.dcm")).read_bytes())
    script = f"""
import sys
sys.modules["pydicom"] = None  # import pydicom raises ImportError
from mura_ens.data.images import ImageError, decode
from mura_ens.data.layout import walk_mura
scan = walk_mura({str(folder)!r})
print(scan.manifest[["study", "body_part"]].values.tolist())
try:
    decode({str(folder / "IM1")!r})
except ImageError as exc:
    print(exc.status, exc.detail)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "[['pacs', '']]",
        "decoder_missing reading DICOM needs the [dicom] extra: pip install 'mura-ens[dicom]'",
    ]
    assert "pydicom is not installed (pip install 'mura-ens[dicom]')" in proc.stderr


# ------------------------------------------------------------------------------------- body-part mapping


@pytest.mark.parametrize(
    ("fields", "part"),
    [
        (("HUMERUS",), "XR_HUMERUS"),
        (("Upper Arm",), "XR_HUMERUS"),
        (("ARM UPPER",), "XR_HUMERUS"),
        (("RADIUS ULNA",), "XR_FOREARM"),
        (("lower arm",), "XR_FOREARM"),
        (("thumb",), "XR_FINGER"),
        (("SHOULDER",), "XR_SHOULDER"),
        (("", "XR WRIST 3+ VIEWS LT"), "XR_WRIST"),
        (("EXTREMITY", "Hand 2 views"), "XR_HAND"),  # Body Part Examined says nothing: the description decides
        (("EXTREMITY", "HAND AND WRIST", "R ELBOW"), "XR_ELBOW"),  # two parts decide nothing: the next text
        (("ARM",), ""),  # humerus or forearm: not a guess
        (("KNEE", "Knee 2 views"), ""),
        ((), ""),
    ],
)
def test_body_part_mapping(fields, part):
    assert map_body_part(*fields).part == part


def test_every_synonym_maps_to_a_mura_part_and_is_documented():
    from mura_ens.constants import BODY_PARTS

    assert set(BODY_PART_SYNONYMS.values()) == set(BODY_PARTS)
    assert all(map_body_part(phrase.lower()).part == part for phrase, part in BODY_PART_SYNONYMS.items())
    docs = (Path(__file__).parents[1] / "docs" / "dicom.md").read_text(encoding="utf-8")
    table = {
        line.split("|")[1].strip(" `"): line.split("|")[2] for line in docs.splitlines() if line.startswith("| `XR_")
    }
    documented = {phrase.strip(" `"): part for part, cell in table.items() for phrase in cell.split(",")}
    assert documented == BODY_PART_SYNONYMS
    reason = map_body_part("EXTREMITY", "HAND AND WRIST").reason
    assert reason == (
        "BodyPartExamined 'EXTREMITY'; StudyDescription 'HAND AND WRIST' (names 2 parts: XR_HAND, XR_WRIST): "
        "none names one of the seven parts"
    )


# ------------------------------------------------------------------------------------- a PACS export folder


def pacs_folder(root: Path) -> SimpleNamespace:
    """A MURA tree (2 studies) plus a PACS export: one hand study in two series folders (one file without a
    suffix), a DICOM inside a MURA study folder, a real CR radiograph (tibia: no MURA part), a DICOMDIR, and
    a DICOM whose header is damaged."""
    tree = make_tree(root, [("XR_HAND", 1, 2), ("XR_WRIST", 0, 1)], seed=4)
    pacs = root / "pacs"
    hand_uid = "1.2.826.0.1.3680043.8.498.1001"
    rng = np.random.default_rng(1)
    for series, name in (("S1", "IM0001"), ("S2", "IM0002.dcm")):
        write_dicom(
            pacs / "HOSP-7741" / series / name,
            rng.integers(0, 4000, (40, 30), dtype=np.uint16),
            patient="HOSP-7741",
            study_uid=hand_uid,
            body_part="HAND",
        )
    inside = write_dicom(
        tree / "XR_HAND" / "patient11000" / "study1_positive" / "image3.dcm",
        rng.integers(0, 4000, (32, 32), dtype=np.uint16),
        patient="other",
    )
    tibia = pacs / "RG3" / "CR0001"
    tibia.parent.mkdir(parents=True)
    tibia.write_bytes(Path(get_testdata_file("RG3_J2KI.dcm")).read_bytes())
    dicomdir = write_dicom(pacs / "DICOMDIR", None, sop_class=dicom.DICOMDIR_SOP_CLASS)
    damaged = pacs / "broken" / "IM9"
    damaged.parent.mkdir()
    damaged.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    return SimpleNamespace(
        root=root,
        tree=tree,
        pacs=pacs,
        hand_uid=hand_uid,
        inside=inside,
        tibia=tibia,
        dicomdir=dicomdir,
        damaged=damaged,
    )


@pytest.fixture(scope="module")
def pacs(tmp_path_factory) -> SimpleNamespace:
    return pacs_folder(tmp_path_factory.mktemp("pacs"))


def test_walk_groups_dicom_by_header_and_keeps_mura_folders(pacs):
    scan = walk_mura(pacs.root)
    rows = scan.manifest.set_index("path")
    hand = rows.loc[[str(p) for p in sorted((pacs.pacs / "HOSP-7741").rglob("IM*"))]]
    assert set(hand["study"]) == {f"XR_HAND/{pacs.hand_uid}"}  # two series folders, one study
    assert set(hand["patient"]) == {"HOSP-7741"} and set(hand["body_part"]) == {"XR_HAND"}
    assert hand["label"].isna().all() and set(hand["split"]) == {""}
    inside = rows.loc[str(pacs.inside)]  # the folder decides: MURA study, patient, label
    assert (inside["study"], inside["patient"], inside["label"]) == (
        "valid/XR_HAND/patient11000/study1",
        "patient11000",
        1,
    )
    tibia = rows.loc[str(pacs.tibia)]
    assert tibia["study"].startswith("XR_EXTREMITY/1.3.6.1.4.1.5962.") and tibia["body_part"] == ""
    assert rows.loc[str(pacs.damaged), "study"] == f"{pacs.root.name}/pacs/broken"  # no header: its folder
    assert scan.skipped.set_index("path").loc[str(pacs.dicomdir), "reason"] == "dicomdir"
    assert len(scan.manifest) == 3 + 1 + 2 + 1 + 1
    assert unknown_parts(scan.manifest) == {"XR_EXTREMITY": 1, "": 1}


def test_labels_csv_joins_by_study_uid_or_path(pacs, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text(f"study,label\n{pacs.hand_uid},1\nvalid/XR_WRIST/patient11001/study1,1\n9.9.9,0\n")
    manifest = scan_source(pacs.root, labels=labels).manifest.set_index("study")
    assert manifest.loc[f"XR_HAND/{pacs.hand_uid}", "label"].tolist() == [1, 1]
    assert manifest.loc["valid/XR_WRIST/patient11001/study1", "label"] == 1  # the file wins over the folder's 0
    assert "labels: 2 of 3 study rows" in capsys.readouterr().err
    by_path = tmp_path / "by_path.csv"
    by_path.write_text(f"path,label\n{os.path.relpath(pacs.tibia, tmp_path)},0\n")
    manifest = scan_source(pacs.root, labels=by_path).manifest.set_index("path")
    assert manifest.loc[str(pacs.tibia), "label"] == 0
    one_image = tmp_path / "one_image.csv"
    one_image.write_text(f"path,label\n{pacs.pacs / 'HOSP-7741' / 'S1' / 'IM0001'},1\n")
    with pytest.raises(ManifestError, match="get different labels"):
        scan_source(pacs.root, labels=one_image)
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,label\n1.2,1\n")
    with pytest.raises(ManifestError, match="needs a label column and one of study, path"):
        scan_source(pacs.root, labels=bad)


def test_mixed_folder_is_scored_end_to_end(pacs, tiny_models, tmp_path, capsys):
    """PNGs and DICOM (real CR radiograph included) in one run: generalists everywhere, the hand specialist
    on the mapped hand study, no specialist on the tibia; bad DICOM files are rows with statuses."""
    labels = tmp_path / "labels.csv"
    labels.write_text(f"study,label\n{pacs.hand_uid},1\n")
    result = score(
        pacs.root,
        tmp_path / "out",
        models_dir=tiny_models["gen_a"].parents[1],
        settings=ScoreSettings(batch_size=4, workers=1, labels=labels),
    )
    images = read_images(tmp_path / "out").set_index("path")
    status = images["status"].to_dict()
    assert status[str(pacs.damaged)] == "truncated"
    assert status[str(pacs.dicomdir)] == "dicomdir"
    assert {status[str(p)] for p in (pacs.inside, pacs.tibia)} == {"ok"}
    gen_a = TINY["gen_a"]
    for path in (*sorted((pacs.pacs / "HOSP-7741").rglob("IM*")), pacs.inside, pacs.tibia):
        assert images.loc[str(path), "prob__gen_a"] == pytest.approx(expected_prob(str(path), gen_a), abs=1e-6)
    hand = images.loc[[str(p) for p in sorted((pacs.pacs / "HOSP-7741").rglob("IM*"))]]
    assert hand["prob__spec_hand"].notna().all()
    assert np.isnan(images.loc[str(pacs.tibia), "prob__spec_hand"])  # no part: generalists only
    assert images.loc[str(pacs.tibia), "prob"] == pytest.approx(
        images.loc[str(pacs.tibia), ["prob__gen_a", "prob__gen_b"]].mean()
    )
    studies = read_studies(tmp_path / "out").set_index("study")
    assert studies.loc[f"XR_HAND/{pacs.hand_uid}", "label"] == 1
    assert studies.loc[f"XR_HAND/{pacs.hand_uid}", "n_images"] == 2
    assert result.unknown_parts == {"XR_EXTREMITY": 1, "": 1}
    assert result.metrics is not None and result.metrics["study"]["overall"]["n"] == 3


# --------------------------------------------------------------------------------------- pseudonymisation

KEY = "hospital-secret"


def test_pseudonym_is_a_truncated_hmac_sha256(monkeypatch):
    expected = "anon-" + hmac.new(KEY.encode(), b"patient11000", hashlib.sha256).hexdigest()[:16]
    assert pseudonym("patient11000", KEY.encode()) == expected
    assert pseudonym("patient11000", b"another key") != expected
    hide = Pseudonymizer(KEY.encode(), ["patient11000", "12345"])
    assert hide.text("/d/valid/XR_HAND/patient11000/study1_positive/image1.png") == (
        f"/d/valid/XR_HAND/{expected}/study1_positive/image1.png"
    )
    assert hide.text("/export/12345.dcm") == f"/export/{pseudonym('12345', KEY.encode())}.dcm"
    assert hide.text("A12345 study12345") == "A12345 study12345"  # inside a longer word: not the id
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)
    with pytest.raises(UsageError, match="needs a key"):
        ScoreSettings(pseudonymize=True)
    with pytest.raises(UsageError, match="only used with --pseudonymize"):
        ScoreSettings(pseudonym_key="k")
    assert KEY not in repr(ScoreSettings(pseudonymize=True, pseudonym_key=KEY))
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    assert ScoreSettings(pseudonymize=True).pseudonymize


def run_cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


def raw_ids_in(folder: Path, ids: list[str]) -> dict[str, list[str]]:
    """Every file under ``folder`` (hidden ones included) that holds one of ``ids`` in its name or bytes."""
    found: dict[str, list[str]] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            hits = [i for i in ids if i.encode() in text or i in str(path.relative_to(folder))]
            if hits:
                found[str(path.relative_to(folder))] = hits
    return found


def test_pseudonymize_leaves_no_patient_id_in_any_output_file(tmp_path, monkeypatch, tiny_models):
    """Interrupted (journal), resumed, with heatmaps, and the manifest: no raw id in any file written."""
    from scoring_fixtures import interrupt_after

    root = tmp_path / "data"
    make_tree(root, [("XR_HAND", 1, 2), ("XR_WRIST", 0, 1)], seed=5)
    rng = np.random.default_rng(2)
    study_uid = "1.2.826.0.1.3680043.8.498.2002"
    write_dicom(
        root / "pacs" / "PID-77431-X" / "IM1",
        rng.integers(0, 4000, (40, 40), dtype=np.uint16),
        patient="PID-77431-X",
        study_uid=study_uid,
        body_part="HAND",
    )
    write_dicom(
        root / "pacs" / "PID-88112-Y.dcm", rng.integers(0, 4000, (40, 40), dtype=np.uint16), patient="PID-88112-Y"
    )
    (root / "pacs" / "PID-88112-Y.txt").write_text("not an image")  # a skipped file named after a patient
    ids = ["patient11000", "patient11001", "PID-77431-X", "PID-88112-Y", study_uid]
    models = tmp_path / "models"
    make_explain_run(models / "explain_a", input_size=32)
    tiny.make_tiny_model(
        models / "spec" / "model.onnx", a=2.0, b=-1.0, input_size=24, model_name="spec", body_parts=("XR_HAND",)
    )
    labels = tmp_path / "labels.csv"
    labels.write_text(f"study,label\n{study_uid},0\n")
    out = tmp_path / "out"
    args = ["score", str(root), "--models", str(models), "--out", str(out), "--batch-size", "1", "--workers", "1"]
    args += ["--labels", str(labels), "--explain", "2", "--pseudonymize"]
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)

    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        assert run_cli(args)[0] == 130
    assert len((out / ".partial" / "images.jsonl").read_bytes().splitlines()) == 2
    assert raw_ids_in(out, ids) == {}
    code, stderr = run_cli([*args, "--resume"])
    assert code == 0, stderr
    assert "images already scored" in stderr
    assert (out / "heatmaps" / "index.csv").is_file() and (out / "report.html").is_file()
    assert raw_ids_in(out, ids) == {}
    studies = read_studies(out)
    key = KEY.encode()
    assert set(studies["patient"]) == {pseudonym(i, key) for i in ids[:4]}
    assert f"XR_HAND/{pseudonym(study_uid, key)}" in set(studies["study"])
    assert studies.set_index("study").loc[f"XR_HAND/{pseudonym(study_uid, key)}", "label"] == 0

    manifest = tmp_path / "shared" / "manifest.csv"
    code, stderr = run_cli(["manifest", str(root), "--out", str(manifest), "--pseudonymize", "--labels", str(labels)])
    assert code == 0, stderr
    assert raw_ids_in(manifest.parent, ids) == {}
    assert len(pd.read_csv(manifest)) == 5 and len(pd.read_csv(manifest.parent / "skipped.csv")) == 1

    monkeypatch.delenv(PSEUDONYM_KEY_ENV)
    code, stderr = run_cli(args)
    assert code == 2 and stderr.strip().splitlines() == [
        f"mura-ens: error: --pseudonymize needs a key: --pseudonym-key KEY or the environment variable {PSEUDONYM_KEY_ENV}"
    ]
