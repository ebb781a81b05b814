"""examples/quickstart.ipynb runs clean in a real Jupyter kernel (nbclient + ipykernel), in under 3 minutes.

The notebook is kept with its outputs stripped; the test executes a copy in a
temporary folder (``TMPDIR`` there, so its data, runs and results go with it)
and checks what a reader would see: no error, the training curves and the ROC
figure as images, the per-part metrics as a table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
#: The issue's budget for the whole notebook on a 2-core machine, kernel start included.
BUDGET_SECONDS = 180


def _code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def test_the_notebook_is_stored_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    cells = _code_cells(notebook)
    assert cells, "no code cell"
    dirty = [i for i, cell in enumerate(cells) if cell.get("outputs") or cell.get("execution_count") is not None]
    assert not dirty, f"code cells {dirty} keep outputs: strip them before committing"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    assert all("execution" not in cell.get("metadata", {}) for cell in cells)


def _outputs_of(cells: list[dict], needle: str) -> list[dict]:
    (cell,) = [cell for cell in cells if needle in _source(cell)]
    return cell["outputs"]


@pytest.mark.tf
@pytest.mark.slow
def test_quickstart_notebook_executes_in_a_jupyter_kernel(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel inherits it: tempfile.mkdtemp lands here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=BUDGET_SECONDS, resources={"metadata": {"path": str(tmp_path)}}
    )
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    seconds = time.perf_counter() - started
    assert seconds < BUDGET_SECONDS, f"the notebook took {seconds:.0f} s (budget {BUDGET_SECONDS} s)"

    cells = _code_cells(notebook)
    errors = [out for cell in cells for out in cell["outputs"] if out["output_type"] == "error"]
    assert not errors
    printed = "".join(
        "".join(out["text"]) for cell in cells for out in cell["outputs"] if out["output_type"] == "stream"
    )
    assert "Traceback" not in printed and "AutoGraph" not in printed and "environ(" not in printed
    assert "Warning:" not in printed, printed  # warnings are one "mura-ens: warning: ..." line each (issue 24)
    assert any("image/png" in out.get("data", {}) for out in _outputs_of(cells, "plot_history"))
    assert any("image/png" in out.get("data", {}) for out in _outputs_of(cells, "roc_figure"))
    (table,) = [out["data"]["text/html"] for out in _outputs_of(cells, "metrics_table") if "data" in out]
    assert "XR_WRIST" in table and "overall" in table and "kappa" in table
    runs = [out["data"]["text/plain"] for out in _outputs_of(cells, "generalist + specialists") if "data" in out]
    assert runs and "Run(" in runs[0] and "XR_WRIST" in runs[0]
    folders = list(tmp_path.glob("mura-ens-quickstart-*/results/report.html"))
    assert len(folders) == 1, "the notebook writes under TMPDIR"
