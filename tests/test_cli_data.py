"""`mura-ens synth` and `mura-ens manifest` through the CLI: outputs, messages, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from mura_ens.cli.main import main
from mura_ens.constants import MANIFEST_COLUMNS

MURA_ENS = Path(sys.executable).with_name("mura-ens")


def test_synth_then_manifest(tmp_path, capsys):
    """The issue's 'done when' line, through main()."""
    assert main(["synth", str(tmp_path / "s"), "--studies-per-part", "4", "--size", "32", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "quirk truncated:" in out and "relabelled study" in out and "synth_summary.json" in out

    manifest = tmp_path / "m.csv"
    assert main(["manifest", str(tmp_path / "s" / "MURA-v1.1"), "-o", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "XR_SHOULDER" in out and "abnormal" in out
    assert "skipped 1 files (appledouble: 1)" in out and str(tmp_path / "skipped.csv") in out
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    assert tuple(frame.columns) == MANIFEST_COLUMNS
    listed = [p.read_text().splitlines() for p in (tmp_path / "s" / "MURA-v1.1").glob("*_image_paths.csv")]
    assert len(frame) == sum(len(lines) for lines in listed)
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    assert skipped["reason"].tolist() == ["appledouble"]


def test_manifest_validation_errors_exit_2_one_line_each(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    rows = ["path,study,patient,body_part,label", "a.png,s1,p1,XR_HAND,1", "b.png,s2,p2,XR_HAND,maybe"]
    rows += [f"c{i}.png,s{i + 3},p,XR_TOE,0" for i in range(25)]
    bad.write_text("\n".join(rows) + "\n")
    assert main(["manifest", str(bad), "-o", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"mura-ens: error: invalid manifest {bad} (row numbers count the header as row 1)"
    assert err[1] == "mura-ens: error: row 3: label 'maybe' is not 0, 1 or empty"
    assert err[2].startswith("mura-ens: error: row 4: body_part 'XR_TOE' is not one of")
    assert len(err) == 1 + 20 + 1 and err[-1] == "mura-ens: error: ... and 6 more problems"
    assert not (tmp_path / "m.csv").exists()


def test_missing_source_and_bad_option(tmp_path, capsys):
    assert main(["manifest", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"mura-ens: error: data source not found: {tmp_path / 'nowhere'}"
    assert main(["synth", str(tmp_path / "s"), "--size", "4"]) == 2
    assert capsys.readouterr().err.strip() == "mura-ens: error: size must be >= 32, got 4"


def test_console_script_subprocess(tmp_path):
    """The installed script: real exit codes, no traceback."""
    done = subprocess.run(
        [str(MURA_ENS), "manifest", str(tmp_path / "missing"), "-o", str(tmp_path / "m.csv")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_cli_modules_import_nothing_heavy():
    code = (
        "import sys, mura_ens.cli.synth, mura_ens.cli.manifest; "
        "heavy = [m for m in ('numpy', 'pandas', 'PIL', 'onnxruntime', 'tensorflow') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
