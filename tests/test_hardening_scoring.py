"""Issue 10, the scoring side: hostile file names, output paths that cannot be made, one run per output
folder, decoding memory in bytes, and the quiet surprises (unknown body parts, duplicated study rows,
files outside study folders). Each case: what the user sees, and that nothing is lost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scoring_fixtures import interrupt_after, random_image, study_folder, write_png

from mura_ens.cli.main import main
from mura_ens.data import images as images_module
from mura_ens.data.images import ImageError, MemoryBudget, decode, decode_cost, decoded
from mura_ens.errors import UsageError
from mura_ens.io import OutputError
from mura_ens.metrics import NO_BOOTSTRAP
from mura_ens.scoring import journal as journal_module
from mura_ens.scoring.lock import LOCK_FILE, OutputLock, OutputLocked
from mura_ens.scoring.score import ScoreSettings, score

REPO = Path(__file__).resolve().parents[1]
SLOW_BATCHES = Path(__file__).parent / "slow_batches.py"
FAST = ScoreSettings(bootstrap=NO_BOOTSTRAP)
pytestmark = pytest.mark.filterwarnings("ignore::mura_ens.metrics.UndefinedMetricWarning")


# ---------------------------------------------------------------------------------------------
# helpers (also used by tests/test_property_scoring.py)
# ---------------------------------------------------------------------------------------------


def bpath(*pieces: str | bytes) -> Path:
    """A path from str and bytes pieces; bytes that are not UTF-8 become surrogate escapes (os.fsdecode)."""
    return Path(*(os.fsdecode(p) if isinstance(p, bytes) else p for p in pieces))


def files_on_disk(root: Path) -> set[bytes]:
    """Every file and symlink under ``root``, as bytes."""
    found = set()
    for dirpath, _, filenames in os.walk(os.fsencode(root)):
        found.update(os.path.join(dirpath, name) for name in filenames)
    return found


def read_csv_bytes_safe(path: Path) -> pd.DataFrame:
    """An output CSV read back with the documented rule (UTF-8, surrogateescape)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="surrogateescape")


def png_16bit(path: Path, width: int, height: int) -> Path:
    """A 16-bit grayscale PNG (a horizontal ramp 0, 7, 14, ...), written with zlib directly (fast at 8000 px)."""
    row = b"\x00" + (np.arange(width) * 7).astype(">u2").tobytes()
    packer = zlib.compressobj(6)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def png_claiming(path: Path, width: int, height: int, mode: str = "RGBA") -> Path:
    """A 1x1 PNG of ``mode`` whose header (valid CRC) claims ``width`` x ``height``: huge but empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mura-ens: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# 1. File names that are not valid UTF-8
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory):
    """A labelled tree whose file and folder names hold bytes 0xFF / 0xFE; returns the valid folder."""
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(7)
    hand = study_folder(root, "valid", "XR_HAND", 11001, 1, 1)
    write_png(hand / "image1.png", random_image(rng))
    write_png(bpath(hand, b"im\xffage2.png"), random_image(rng, rgb=True))
    wrist = bpath(root, "MURA-v1.1", "valid", "XR_WRIST", b"patient11002\xfe", "study1_negative")
    write_png(wrist / "image1.png", random_image(rng))
    write_png(wrist / "image2.png", random_image(rng))
    shoulder = study_folder(root, "valid", "XR_SHOULDER", 11003, 1, 0)
    write_png(bpath(shoulder, b"\xff\xfe.png"), random_image(rng))
    bpath(shoulder, b"notes\xff.txt").write_bytes(b"not an image")
    write_png(bpath(root, "MURA-v1.1", "valid", b"flat\xff.png"), random_image(rng))  # outside any study
    return root / "MURA-v1.1" / "valid"


def test_non_utf8_names_are_scored_and_every_path_reads_back_as_its_bytes(odd_tree, tiny_models, tmp_path):
    out = tmp_path / "out"
    result = score(odd_tree, models_dir=tiny_models["gen_a"].parents[1], out=out, settings=FAST, progress=False)
    images = read_csv_bytes_safe(out / "images.csv")
    # every file on disk is one row, and its path read back with surrogateescape is the file's bytes
    assert sorted(os.fsencode(p) for p in images["path"]) == sorted(files_on_disk(odd_tree))
    status = {os.fsencode(p): s for p, s in zip(images["path"], images["status"])}
    assert status[os.fsencode(bpath(odd_tree, "XR_HAND", "patient11001", "study1_positive", b"im\xffage2.png"))] == "ok"
    assert sorted(set(status.values())) == ["not_an_image_suffix", "ok", "outside_study_folder"]
    studies = read_csv_bytes_safe(out / "studies.csv")
    assert os.fsdecode(b"valid/XR_WRIST/patient11002\xfe/study1") in set(studies["study"])
    assert (studies["status"] == "ok").all() and len(studies) == 3
    assert result.metrics["study"]["overall"]["n"] == 3
    assert b"flat\xff.png" in (out / "report.html").read_bytes()  # the HTML holds the name's bytes too
    json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert not (out / LOCK_FILE).exists() and not (out / journal_module.JOURNAL_DIR).exists()


def test_non_utf8_names_resume_to_the_same_files(odd_tree, tiny_models, tmp_path, monkeypatch):
    models = tiny_models["gen_a"].parents[1]
    settings = ScoreSettings(batch_size=1, bootstrap=NO_BOOTSTRAP)
    score(odd_tree, models_dir=models, out=tmp_path / "ref", settings=settings, progress=False)
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        score(odd_tree, models_dir=models, out=tmp_path / "out", settings=settings, progress=False)
    monkeypatch.undo()
    resumed = ScoreSettings(batch_size=1, bootstrap=NO_BOOTSTRAP, resume=True)
    result = score(odd_tree, models_dir=models, out=tmp_path / "out", settings=resumed, progress=False)
    assert result.n_resumed_images >= 1
    for name in ("images.csv", "studies.csv", "metrics.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_a_manifest_of_such_a_folder_reads_back_and_scores_the_same(odd_tree, tiny_models, tmp_path, capsys):
    from mura_ens.data.manifest import read_manifest

    manifest = tmp_path / "m" / "manifest.csv"
    assert main(["manifest", str(odd_tree), "-o", str(manifest)]) == 0
    capsys.readouterr()
    assert b"im\xffage2.png" in manifest.read_bytes()
    frame = read_manifest(manifest)
    assert all(os.path.exists(p) for p in frame["path"])
    skipped = read_csv_bytes_safe(manifest.parent / "skipped.csv")
    assert {os.fsencode(p) for p in skipped["path"]} >= {os.fsencode(bpath(odd_tree, b"flat\xff.png"))}
    models = tiny_models["gen_a"].parents[1]
    score(manifest, models_dir=models, out=tmp_path / "a", settings=FAST, progress=False)
    score(odd_tree, models_dir=models, out=tmp_path / "b", settings=FAST, progress=False)
    a, b = (read_csv_bytes_safe(tmp_path / d / "images.csv") for d in "ab")
    probs = [c for c in a.columns if c.startswith("prob")]
    assert (
        a.loc[a["status"] == "ok"].set_index("path")[probs].equals(b.loc[b["status"] == "ok"].set_index("path")[probs])
    )
    # evaluate reads the studies.csv of such a run
    from mura_ens.cli.evaluate import evaluate_file

    assert evaluate_file(tmp_path / "a" / "studies.csv", bootstrap=NO_BOOTSTRAP)["study"]["overall"]["n"] == 3


def test_cli_with_non_utf8_model_and_output_folders_prints_their_bytes(odd_tree, tiny_models, tmp_path):
    model = bpath(tmp_path, b"models\xff", "model.onnx")
    model.parent.mkdir()
    model.write_bytes(tiny_models["gen_a"].read_bytes())
    out = bpath(tmp_path, b"out\xfe")
    command = [str(Path(sys.executable).with_name("mura-ens")), "score", os.fsencode(odd_tree), "--model"]
    command += [os.fsencode(model), "--out", os.fsencode(out), "--no-progress"]
    proc = subprocess.run(command, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"wrote " + os.fsencode(out / "images.csv") in proc.stdout
    models = json.loads((out / "models.json").read_text(encoding="utf-8"))["models"]
    # JSON: \udcff escapes, same bytes back; models.json holds the path relative to --out
    assert os.fsencode(models[0]["path"]) == os.fsencode(os.path.relpath(model.resolve(), out.resolve()))


# ---------------------------------------------------------------------------------------------
# 2. Output paths that cannot be created: one line, exit 2, in every command that writes
# ---------------------------------------------------------------------------------------------


def _bad_places(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    places = {"below_a_file": a_file / "sub"}
    if Path("/proc/self").exists():
        places["proc"] = Path("/proc/mura-ens-test/sub")
    return places


@pytest.mark.parametrize("where", ["below_a_file", "proc"])
def test_output_paths_that_cannot_be_made_are_one_line_and_exit_2(where, odd_tree, tiny_models, tmp_path, capfd):
    places = _bad_places(tmp_path)
    if where not in places:
        pytest.skip("no /proc here")
    bad = places[where]
    models = str(tiny_models["gen_a"].parents[1])
    commands = {
        "score": ["score", str(odd_tree), "--models", models, "--out", str(bad)],
        "manifest": ["manifest", str(odd_tree), "-o", str(bad / "m.csv")],
        "evaluate": ["evaluate", str(REPO / "tests" / "missing.csv"), "-o", str(bad / "metrics.json")],
        "fit-ensemble": ["fit-ensemble", str(tmp_path), "--models", models, "-o", str(bad / "ensemble.json")],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        line = one_error_line(capfd.readouterr().err)
        assert str(bad) in line, (name, line)
        if where == "below_a_file":
            assert "is a file, not a folder" in line, line
    assert not (tmp_path / "a_file").is_dir()


def test_an_existing_folder_as_a_file_output_and_a_file_as_out(odd_tree, tiny_models, tmp_path, capfd):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["manifest", str(odd_tree), "-o", str(folder)]) == 2
    assert "is a folder" in one_error_line(capfd.readouterr().err)
    studies = tmp_path / "studies.csv"
    studies.write_text("study,body_part,label,prob\ns1,XR_HAND,1,0.9\ns2,XR_HAND,0,0.1\n")
    assert main(["evaluate", str(studies), "-o", str(folder)]) == 2
    assert "is a folder" in one_error_line(capfd.readouterr().err)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["score", str(odd_tree), "--models", str(tiny_models["gen_a"].parents[1]), "--out", str(a_file)]) == 2
    assert "got a file" in one_error_line(capfd.readouterr().err)


def test_a_write_that_fails_mid_run_is_one_line_and_the_journal_stays(odd_tree, tiny_models, tmp_path, monkeypatch):
    def failing_to_csv(self, buf=None, *args, **kwargs):
        raise OSError(28, "No space left on device")

    out = tmp_path / "out"
    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(OutputError, match=r"cannot write .*images\.csv: No space left on device") as caught:
        score(odd_tree, models_dir=tiny_models["gen_a"].parents[1], out=out, settings=FAST, progress=False)
    assert isinstance(caught.value, OSError) and isinstance(caught.value, UsageError)
    assert (out / journal_module.JOURNAL_DIR / journal_module.ROWS_FILE).stat().st_size > 0
    assert not (out / LOCK_FILE).exists()


# ---------------------------------------------------------------------------------------------
# 3. One run per output folder
# ---------------------------------------------------------------------------------------------


def _hold_lock(out: Path) -> subprocess.Popen:
    """Another process that holds ``out``'s lock until killed."""
    code = (
        "import sys, time; from mura_ens.scoring.lock import OutputLock; "
        "OutputLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(300)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_stops_at_once_naming_the_pid_and_a_dead_runs_lock_is_taken_over(
    odd_tree, tiny_models, tmp_path, monkeypatch, capfd
):
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        journal = out / journal_module.JOURNAL_DIR
        journal.mkdir()
        (journal / journal_module.ROWS_FILE).write_bytes(b'{"batch":0,"rows":[]}\n')
        before = (journal / journal_module.ROWS_FILE).read_bytes()
        import mura_ens.scoring.score as score_module

        monkeypatch.setattr(score_module, "load_models", lambda *a, **k: pytest.fail("loaded models while locked"))
        with pytest.raises(OutputLocked, match=rf"another mura-ens score run \(PID {holder.pid}\b") as caught:
            score(odd_tree, models_dir=tiny_models["gen_a"].parents[1], out=out, settings=FAST, progress=False)
        assert caught.value.pid == holder.pid
        assert main(["score", str(odd_tree), "--models", str(tiny_models["gen_a"].parents[1]), "--out", str(out)]) == 2
        assert f"PID {holder.pid}" in one_error_line(capfd.readouterr().err)
        assert (journal / journal_module.ROWS_FILE).read_bytes() == before  # the live run's journal is untouched
        monkeypatch.undo()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = score(odd_tree, models_dir=tiny_models["gen_a"].parents[1], out=out, settings=FAST, progress=False)
    assert any(f"took over a stale lock in {out}" in n and f"PID {holder.pid}" in n for n in result.notes)
    assert not (out / LOCK_FILE).exists() and (out / "images.csv").is_file()


def test_two_real_runs_on_one_folder_the_second_stops_and_the_first_finishes(odd_tree, tiny_models, tmp_path, capfd):
    models = str(tiny_models["gen_a"].parents[1])
    out = tmp_path / "out"
    first = [sys.executable, str(SLOW_BATCHES), "1.0", "score", str(odd_tree), "--models", models]
    first += ["--out", str(out), "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen(first, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        rows = out / journal_module.JOURNAL_DIR / journal_module.ROWS_FILE
        while not (rows.exists() and rows.stat().st_size):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.05)
        # the second run, in this process: it starts at once, while the first has batches to go
        assert main(["score", str(odd_tree), "--models", models, "--out", str(out), "--no-progress"]) == 2
        assert f"(PID {proc.pid}" in one_error_line(capfd.readouterr().err)
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    reference = tmp_path / "reference"
    score(odd_tree, models_dir=models, out=reference, settings=ScoreSettings(batch_size=1), progress=False)
    for name in ("images.csv", "studies.csv", "metrics.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_without_flock_a_live_pid_holds_the_lock_and_a_dead_one_is_stale(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        (out / LOCK_FILE).write_text(f"pid={sleeper.pid}\nhost={socket.gethostname()}\n")
        with pytest.raises(OutputLocked, match=f"PID {sleeper.pid}"):
            OutputLock(out).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    (out / LOCK_FILE).write_text(f"pid={sleeper.pid}\nhost=another-machine\n")  # cannot be checked from here
    with pytest.raises(OutputLocked, match=f"on another-machine.*if that run is gone, delete {out / LOCK_FILE}"):
        OutputLock(out).acquire()
    (out / LOCK_FILE).write_text(f"pid={sleeper.pid}\nhost={socket.gethostname()}\n")
    with OutputLock(out) as lock:  # the PID is dead now
        assert any(f"PID {sleeper.pid}" in note for note in lock.notes)
        assert f"pid={os.getpid()}" in (out / LOCK_FILE).read_text()
    assert not (out / LOCK_FILE).exists() and out.is_dir()  # an existing folder is never removed


# ---------------------------------------------------------------------------------------------
# 4. Decoding memory in bytes, per image and across threads
# ---------------------------------------------------------------------------------------------


def test_decode_cost_counts_the_bytes_of_each_mode():
    per_pixel = {"L": 1, "I;16": 3, "I": 5, "F": 5, "RGB": 4, "LA": 7, "RGBA": 13, "P": 5, "1": 2, "CMYK": 8}
    for mode, expected in per_pixel.items():
        assert decode_cost(Image.new(mode, (10, 20))) == 200 * expected, mode


def test_a_16_bit_8000_px_image_decodes_within_its_byte_share(tmp_path):
    path = png_16bit(tmp_path / "big16.png", 8000, 8000)
    assert path.stat().st_size < 2_000_000  # small on disk, 128 MB once decoded
    budget = MemoryBudget(2**30)
    with decoded(path, budget=budget) as img:
        assert img.mode == "L" and img.size == (8000, 8000)
        row = np.asarray(img.crop((0, 4000, 8000, 4001)))[0]
        assert budget.used == 8000 * 8000 * 3
    expected = np.rint(np.arange(8000) * 7 * (255.0 / (7 * 7999))).astype(np.uint8)
    assert np.array_equal(row, expected)
    assert budget.used == 0 and budget.peak == 8000 * 8000 * 3
    with pytest.raises(ImageError, match=r"8000x8000 I;16 pixels need 183 MiB to decode > max_bytes=100 MiB") as e:
        decode(path, max_bytes=100 * 2**20)
    assert e.value.status == "too_large"


def test_rgba_at_the_pixel_cap_is_too_large_before_any_pixel_is_decoded(tmp_path):
    path = png_claiming(tmp_path / "rgba.png", 8000, 8000, "RGBA")  # 1 pixel of data: decoding it would be truncated
    with pytest.raises(ImageError, match="RGBA pixels need 793 MiB") as caught:
        decode(path)
    assert caught.value.status == "too_large"
    small = png_claiming(tmp_path / "small.png", 300, 300, "RGBA")
    with pytest.raises(ImageError) as caught:
        decode(small)
    assert caught.value.status == "truncated"


def _whole_image_scaling(img: Image.Image) -> np.ndarray:
    """The scaling to 8 bits as it was before bands (the reference)."""
    values = np.asarray(img).astype(np.float64)
    values = np.where(np.isfinite(values), values, np.nan)
    low, high = np.nanmin(values), np.nanmax(values)
    if not np.isfinite(low) or high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.rint(np.nan_to_num((values - low) * (255.0 / (high - low)), nan=0.0)).astype(np.uint8)


def test_banded_scaling_gives_the_same_pixels_as_whole_image_scaling(monkeypatch):
    monkeypatch.setattr(images_module, "_BAND_PIXELS", 1000)  # many bands on small images
    rng = np.random.default_rng(3)
    wide16 = rng.integers(300, 4000, size=(37, 211)).astype(np.uint16)
    int32 = rng.integers(-(2**20), 2**20, size=(40, 97)).astype(np.int32)
    floats = rng.normal(size=(45, 61)).astype(np.float32)
    floats[3, 4], floats[10, 0], floats[44, 60] = np.nan, np.inf, -np.inf
    for array in (wide16, int32, floats, np.full((5, 5), 9, np.uint16)):
        img = Image.fromarray(array)
        assert np.array_equal(np.asarray(images_module.to_8bit(img)), _whole_image_scaling(img)), array.dtype


def test_the_byte_budget_is_shared_by_threads_and_an_oversized_request_runs_alone():
    budget = MemoryBudget(100)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(nbytes: int) -> None:
        with budget.reserve(nbytes):
            with lock:
                inside[0] += nbytes
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= nbytes

    threads = [threading.Thread(target=work, args=(n,)) for n in [40] * 8 + [250]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert most[0] == 250 or most[0] <= 100
    assert budget.peak == 250 and budget.used == 0


def test_decode_threads_of_a_run_share_one_budget_and_too_large_is_a_row(tiny_models, tmp_path, monkeypatch):
    root = tmp_path / "data"
    for k in range(4):  # four studies, so four decode threads work at once
        png_16bit(study_folder(root, "valid", "XR_HAND", 11000 + k, 1, k % 2) / "image1.png", 3000, 3000)
    big = png_claiming(study_folder(root, "valid", "XR_HAND", 11009, 1, 1) / "image1.png", 8000, 8000, "RGBA")
    budget = MemoryBudget(3000 * 3000 * 3 * 2)  # room for two of them at a time
    monkeypatch.setattr(images_module, "DECODE_BUDGET", budget)
    settings = ScoreSettings(batch_size=1, workers=4, bootstrap=NO_BOOTSTRAP)
    result = score(root, model_files=[tiny_models["gen_a"]], out=tmp_path / "out", settings=settings, progress=False)
    status = result.images.set_index("path")["status"]
    assert status[str(big)] == "too_large" and "MiB" in result.images.set_index("path")["error"][str(big)]
    assert (status.drop(str(big)) == "ok").all() and len(status) == 5
    assert 0 < budget.peak <= budget.total and budget.used == 0


# ---------------------------------------------------------------------------------------------
# 5. Quiet surprises said out loud
# ---------------------------------------------------------------------------------------------


def test_an_unknown_body_part_folder_is_named_in_the_summary_the_report_and_manifest(tiny_models, tmp_path, capsys):
    rng = np.random.default_rng(5)
    root = tmp_path / "data"
    write_png(study_folder(root, "valid", "XR_HAND", 11001, 1, None) / "image1.png", random_image(rng))
    for k in range(2):
        write_png(study_folder(root, "valid", "XR_KNEE", 11002 + k, 1, None) / "image1.png", random_image(rng))
    valid = root / "MURA-v1.1" / "valid"
    out = tmp_path / "out"
    assert main(["score", str(valid), "--model", str(tiny_models["gen_a"]), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 studies of an unknown body part (XR_KNEE 2): scored by the generalist models only" in printed
    studies = read_csv_bytes_safe(out / "studies.csv").set_index("study")
    assert studies.loc["valid/XR_KNEE/patient11002/study1", "body_part"] == ""
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "2 studies of an unknown body part" in report and "XR_KNEE: 2" in report
    # with specialists only they are listed as not scored, and the summary says so
    assert main(["score", str(valid), "--model", str(tiny_models["spec_hand"]), "--out", str(tmp_path / "o2")]) == 0
    assert "(XR_KNEE 2): not scored (no generalist model)" in capsys.readouterr().out
    assert main(["manifest", str(valid), "-o", str(tmp_path / "m.csv")]) == 0
    assert "2 studies of an unknown body part (XR_KNEE 2): their body_part is empty" in capsys.readouterr().out


def test_flat_images_outside_study_folders_say_why_they_were_skipped(tiny_models, tmp_path, capsys):
    rng = np.random.default_rng(6)
    flat = tmp_path / "flat"
    for k in range(3):
        write_png(flat / f"x{k}.png", random_image(rng))
    with pytest.raises(UsageError, match=r"no images found in .*flat: 3 files skipped: outside_study_folder 3 \(image"):
        score(flat, model_files=[tiny_models["gen_a"]], out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    write_png(study_folder(flat, "valid", "XR_HAND", 11001, 1, None) / "image1.png", random_image(rng))
    assert main(["score", str(flat), "--model", str(tiny_models["gen_a"]), "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "skipped by the scan: 3 files (outside_study_folder 3; each listed in images.csv with its reason)" in printed


def test_evaluate_counts_identical_duplicate_study_rows_once_and_refuses_conflicting_ones(tmp_path, capfd):
    from mura_ens.cli.evaluate import DuplicateRowsWarning, evaluate_file

    rows = "study,body_part,label,prob\n" + "".join(
        f"s{k},XR_HAND,{k % 2},{0.2 + 0.6 * (k % 2) + 0.01 * k:.2f}\n" for k in range(6)
    )
    dup = tmp_path / "dup.csv"
    dup.write_text(rows + "s1,XR_HAND,1,0.81\ns1,XR_HAND,1,0.81\ns2,XR_HAND,0,0.22\n")
    with pytest.warns(DuplicateRowsWarning, match="3 duplicated study rows dropped: 2 study"):
        metrics = evaluate_file(dup, bootstrap=NO_BOOTSTRAP)
    clean = tmp_path / "clean.csv"
    clean.write_text(rows)
    assert metrics["study"] == evaluate_file(clean, bootstrap=NO_BOOTSTRAP)["study"]
    assert main(["evaluate", str(dup), "-o", str(tmp_path / "m.json"), "--bootstrap", "0"]) == 0
    warned = [line for line in capfd.readouterr().err.splitlines() if "duplicated" in line]
    assert len(warned) == 1 and warned[0].startswith("mura-ens: warning: ")
    bad = tmp_path / "bad.csv"
    bad.write_text(rows + "s3,XR_HAND,1,0.10\n")
    assert main(["evaluate", str(bad), "-o", str(tmp_path / "m2.json")]) == 2
    line = one_error_line(capfd.readouterr().err)
    assert "study 's3' is listed 2 times with different values (rows 5, 8" in line
    assert not (tmp_path / "m2.json").exists()
