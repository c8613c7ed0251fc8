"""Shared fixtures. Nothing here reaches the network: models and data are built locally."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPO_RECIPE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    from dpo_recipe.cli import cli

    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init Llama with a tokenizer trained on the generated data, saved like a Hub repo."""
    from dpo_recipe.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def tiny_overrides(model_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", *extra]


def two_process_launcher() -> list[str]:
    """`accelerate launch` for two CPU processes (gloo), on a free-ish port so tests do not collide."""
    import random
    import sys

    from dpo_recipe.cli import accelerate_launch_args

    port = str(29500 + random.randrange(1000))
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *accelerate_launch_args(None, 2),
        "--main_process_port",
        port,
    ]


# ---------------------------------------------------------------------------- the local Hub

WRITE, READ, OTHER = "hf_alice_write", "hf_alice_read", "hf_bob_write"
TOKENS = {WRITE: ("alice", "write"), READ: ("alice", "read"), OTHER: ("bob", "write")}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """tests/hub_server.py, with the env (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE=0 over the default 1) pointing at it."""
    from hub_server import LocalHub

    with LocalHub(tmp_path / "hub-storage", tokens=TOKENS) as server:
        server.point_clients(monkeypatch, token=WRITE, home=tmp_path / "hf-home")
        yield server


def run_client(script: str, timeout: int = 120) -> dict:
    """Run ``script`` in a fresh interpreter with the current env; it prints one JSON line, returned parsed."""
    import json
    import subprocess
    import sys
    import textwrap

    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        cwd=REPO,
    )
    assert proc.returncode == 0, f"client subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
