"""One round trip through huggingface.co itself; runs only where HF_TOKEN is set (the optional CI job).

Everything else about the Hub is tested against tests/hub_server.py. This test checks the one
thing a local server cannot: that the real Hub accepts what dpo-recipe pushes (card metadata
included) and gives back an adapter that reproduces the local logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides

from dpo_recipe.train import run

pytestmark = [
    pytest.mark.real_hub,
    pytest.mark.skipif(
        not os.environ.get("HF_TOKEN") or bool(os.environ.get("HF_ENDPOINT")),
        reason="pushes to huggingface.co: set HF_TOKEN (a write token) to run it",
    ),
]


def _online(script: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.environ["HF_TOKEN"] not in proc.stdout + proc.stderr
    return proc.stdout


def test_push_to_the_real_hub_and_load_back(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    run("tiny-ja", tiny_overrides(tiny_model, "data.max_train_pairs=8", "data.max_eval_pairs=4"), output_dir=str(out))
    name = f"dpo-recipe-ci-{uuid.uuid4().hex[:8]}"
    result = _online(f"""
        import json
        import torch
        from click.testing import CliRunner
        from huggingface_hub import HfApi, ModelCard
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        from dpo_recipe.cli import cli

        repo_id = HfApi().whoami()["name"] + "/{name}"
        try:
            pushed = CliRunner().invoke(cli, ["push", {str(out)!r}, "--repo-id", repo_id, "--private"])
            assert pushed.exit_code == 0, pushed.output
            ModelCard.load(repo_id).validate()
            ids = torch.tensor([[5, 17, 42, 99, 7]])
            with torch.no_grad():
                hub = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(tiny_model)!r}), repo_id)
                local = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(tiny_model)!r}),
                                                  {str(out)!r})
                equal = bool(torch.equal(hub(ids).logits, local(ids).logits))
        finally:
            HfApi().delete_repo(repo_id, missing_ok=True)
        print(json.dumps({{"equal": equal, "output": pushed.output}}))
    """)
    answer = json.loads(result.strip().splitlines()[-1])
    assert answer["equal"] is True and "Pushed and verified" in answer["output"]
