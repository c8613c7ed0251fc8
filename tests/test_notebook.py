"""examples/colab_quickstart.ipynb, executed headless on CPU with the tiny recipe, offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

NOTEBOOK = REPO / "examples" / "colab_quickstart.ipynb"


def test_the_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def _kernel_for_this_interpreter(root: Path) -> str:
    """A kernelspec in ``root`` that runs ipykernel under sys.executable, found through JUPYTER_PATH."""
    spec = root / "kernels" / "dpo-recipe-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "dpo-recipe test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return spec.name


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_the_notebook_runs_end_to_end_on_cpu_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    settings = {"RECIPE": "tiny-ja", "NUM_PAIRS": 200, "TRAIN_PAIRS": 16, "EVAL_PAIRS": 8, "OUTPUT_DIR": out}
    for name, value in {**settings, "HUB_REPO_ID": "alice/tiny-dpo", "SKIP_INSTALL": "1"}.items():
        monkeypatch.setenv(f"DPO_RECIPE_NOTEBOOK_{name}", str(value))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    kernel = _kernel_for_this_interpreter(tmp_path / "jupyter")
    NotebookClient(notebook, timeout=300, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}).execute()

    cells = {c.metadata["tags"][0]: c for c in notebook.cells if c.cell_type == "code"}
    assert "Install skipped" in _text(cells["install"])
    assert f"Results go to {out}" in _text(cells["drive"])
    assert "recipe tiny-ja on CPU" in _text(cells["recipe"])
    images = [o for o in cells["plots"].outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == len(list((out / "adapter" / "plots").glob("*.png"))) >= 4
    evaluation = _text(cells["evaluate"])
    assert "| rejection_type | pairs | reward acc. (95% CI)" in evaluation and "on 8 pairs" in evaluation
    answers = [line.removeprefix("A: ") for line in _text(cells["chat"]).splitlines() if line.startswith("A: ")]
    assert len(answers) == 2 and all(a.strip() for a in answers)
    assert "Hub push skipped: no Hugging Face token" in _text(cells["push"])
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    metrics = json.loads((out / "adapter" / "metrics.json").read_text())
    assert metrics["train"]["pairs"] == 16 and metrics["eval"]["overall"]["pairs"] == 8
    assert json.loads((out / "eval" / "eval_report.json").read_text())["overall"]["pairs"] == 8
