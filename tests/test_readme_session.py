"""README's "A typical session" runs as written, in a fresh folder, at tiny sizes, and leaves nothing untracked.

The bash block is taken from README.md as it stands. Only these substitutions are made (each must match,
so a README edit that changes them fails here rather than silently running something else):
the line that needs the network (``# needs the network``) is dropped, and the models shrink --
``--image-size 64`` -> 32 with a 3-cell, 4-filter ``custom_cnn`` (the specialists take it from
``--init-from``), ``--epochs 20`` -> 1. The synthetic data are the README's (40 studies per part, 64 px):
fewer leave some specialist's patient-grouped validation fold empty.
The folder is a git repository holding the project's ``.gitignore``, and ``.venv`` links to this venv, so
``source .venv/bin/activate`` works and ``git status`` shows what the session wrote that is not ignored.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytestmark = [pytest.mark.tf, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
#: (README text, what the test runs instead); each must occur in the block.
TINY = (
    ("--image-size 64", "--image-size 32 -p cells=3 -p starting_filters=4 --batch-size 16"),
    ("--epochs 20", "--epochs 1"),
)
NETWORK_MARK = "# needs the network"


def session_block(readme: str) -> str:
    """The first ```bash block after the "A typical session" heading."""
    section = readme.split("## A typical session", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README's typical session has no bash block"
    return match.group(1)


def tiny_session(block: str) -> str:
    lines = block.splitlines()
    assert any(NETWORK_MARK in line for line in lines), "the network line must say it needs the network"
    lines = [line for line in lines if NETWORK_MARK not in line]
    text = "\n".join(lines) + "\n"
    for readme, tiny in TINY:
        assert readme in text, f"README's session no longer has {readme!r}: update TINY"
        text = text.replace(readme, tiny)
    return text


def test_readme_session_runs_verbatim_at_tiny_sizes_and_gitignore_covers_its_outputs(tmp_path):
    script = tiny_session(session_block((REPO / "README.md").read_text(encoding="utf-8")))
    assert script.lstrip().startswith("source .venv/bin/activate")
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copy(REPO / ".gitignore", work / ".gitignore")
    (work / ".venv").mkdir()  # a folder (".venv/" in .gitignore), its bin/ this venv's
    os.symlink(Path(sys.prefix) / "bin", work / ".venv" / "bin")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH="/usr/bin:/bin", MURA_ENS_DEBUG="", COLUMNS="120")
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert "Warning:" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]

    for path in (
        "manifest.csv",
        "skipped.csv",
        "runs/custom_cnn/heldout.csv",
        "runs/custom_cnn/model.int8.onnx",
        "tuning/studies.csv",
        "ensemble.json",
        "results/report.html",
        "results-fitted/report.html",
        "compare-out/compare.html",
    ):
        assert (work / path).is_file(), path
    assert len(list((work / "runs").glob("specialists*/model.int8.onnx"))) == 7
    assert "wrote results/metrics.json" in done.stdout  # evaluate writes beside its input
    untracked = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=work, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert [line for line in untracked if line and line != "?? .gitignore"] == []
