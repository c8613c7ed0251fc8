"""Shared fixtures. Nothing here reaches the network: models and data are built locally."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
# where the device-level equivalence tests run: benchmarks/gpu_check.sh sets it to cuda on a GPU machine
TEST_DEVICE = os.environ.get("DPO_RECIPE_TEST_DEVICE", "cpu")


@pytest.fixture(autouse=True, scope="session")
def _offline_trackers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """W&B offline and trackio's projects in this session's folder (trackio reads TRACKIO_DIR once, when it is
    imported): no test sends a run anywhere or writes into the user's own tracker folders."""
    root = tmp_path_factory.getbasetemp() / "trackers"
    settings = {"WANDB_MODE": "offline", "TRACKIO_DIR": str(root / "trackio")}
    settings |= {name: str(root / "wandb") for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR")}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    (root / "wandb").mkdir(parents=True, exist_ok=True)
    yield root
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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
    from dpo_recipe.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


TURN_MARKERS = ["<|im_start|>", "<|im_end|>"]  # the tiny tokenizer's chat-turn tokens


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained adapter with LoRA on every linear layer and the turn markers' embedding rows (tied to
    the LM head) trained too: every kind of weight an export has to merge."""
    import json

    from dpo_recipe.train import run

    out = tmp_path_factory.mktemp("tiny-adapter") / "adapter"
    settings = [
        "data.max_train_pairs=16",
        "data.max_eval_pairs=4",
        "eval.num_generations=0",
        "lora.target_modules=all-linear",
        f"lora.trainable_tokens={json.dumps(TURN_MARKERS)}",
        "training.learning_rate=1e-2",
    ]
    run("tiny-ja", tiny_overrides(tiny_model, *settings), output_dir=str(out))
    return out


def tiny_overrides(model_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", *extra]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows as JSON Lines (UTF-8, Japanese kept readable)."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


FORM_FIXTURES = REPO / "tests" / "fixtures" / "forms"  # NAME.jsonl as published, NAME.standard.jsonl by hand
RANKED_ROWS = (
    "data.form=ranked",
    "data.ranked_column=answer",
    "data.ranked_score_field=rank",
    "data.ranked_better=lower",
)
PUBLISHED_FORMS = {  # fixture: (data keys it needs, the line the data commands, the dry run and training print)
    "implicit_text": ((), "form: implicit, text (detected)"),
    "implicit_messages": ((), "form: implicit, messages (detected)"),
    # HuggingFaceH4/ultrafeedback_binarized: prompt text, chosen / rejected whole conversations, messages, scores
    "ultrafeedback_binarized": ((), "form: implicit, messages (detected; not sharegpt: messages ends with"),
    "hh": ((), "form: hh, text (detected)"),
    "stack_exchange": (
        ("data.prompt_column=question", "data.chosen_column=response_j", "data.rejected_column=response_k"),
        "columns: prompt <- question, chosen <- response_j, rejected <- response_k",
    ),
    "alpaca": (("data.prompt_column=[instruction, input]",), "columns: prompt <- instruction + input (joined"),
    "ranked": ((), "ranked: 6 prompts, 18 answers -> 6 pairs (the best answer against the worst; higher score"),
    "ranked_rows": (RANKED_ROWS, "ranked: 6 prompts, 14 answers -> 6 pairs (the best answer against the worst; lower"),
    "sharegpt": ((), "form: sharegpt (detected)"),  # llm-jp/hh-rlhf-12k-ja
    "sharegpt_objects": ((), "system: column 'system' becomes the prompt's first message"),  # LLaMA-Factory
    "message_objects": ((), "form: sharegpt (detected)"),  # axolotl chat_template
    "openai": ((), "form: openai (detected)"),
    "orca_system": (("data.prompt_column=question",), "system: column 'system' becomes the prompt's first message"),
    "sharegpt_roles": (
        ("data.roles={ユーザー: user, アシスタント: assistant, 指示: system}",),
        "form: sharegpt (detected)",
    ),
}
CHAT_FORMS = ("sharegpt", "sharegpt_objects", "message_objects", "openai", "orca_system", "sharegpt_roles")  # issue 23


def train_cmd(tiny_model: Path, out: Path, *settings: str, extra: tuple[str, ...] = (), launcher=None) -> list[str]:
    """`python -m dpo_recipe.train` on the tiny model (or under ``launcher``), ``settings`` as --set items."""
    args = ["-m", "dpo_recipe.train", "--recipe", "tiny-ja", "--output-dir", str(out)]
    for item in tiny_overrides(tiny_model, *settings):
        args += ["--set", item]
    return [*(launcher or [sys.executable]), *args, *extra]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment with this checkout first on the path, for training subprocesses."""
    return {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **extra}


def two_process_launcher() -> list[str]:
    """`accelerate launch` for two CPU processes (gloo), on a free-ish port so tests do not collide."""
    import random
    import sys

    from dpo_recipe.training.launch import accelerate_launch_args

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
CANARY = "hf_CANARY_4f9c2e7d1b8a6053_do_not_leak"  # recognisable in any byte stream it leaks into
TOKENS = {WRITE: ("alice", "write"), READ: ("alice", "read"), OTHER: ("bob", "write"), CANARY: ("alice", "write")}


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


# ---------------------------------------------------------------------------- the fault-and-abuse record


class FaultRecord:
    """What the fault-and-abuse suite tried and what held, printed at the end of the run.

    A case counts as tried when it starts and as held only when its assertions passed; losses are
    measured by the tests (bytes of a checkpoint that changed, rows or steps that went missing).
    """

    KINDS = {"bad-input": "clear errors", "fault": "faults survived", "security": "security checks held"}

    def __init__(self) -> None:
        self.tried: Counter[str] = Counter()
        self.held: Counter[str] = Counter()
        self.lost_bytes = 0
        self.lost_rows = 0

    @contextmanager
    def case(self, kind: str) -> Iterator[None]:
        assert kind in self.KINDS, kind
        self.tried[kind] += 1
        yield
        self.held[kind] += 1

    def lost(self, *, nbytes: int = 0, rows: int = 0) -> None:
        self.lost_bytes += nbytes
        self.lost_rows += rows

    def summary(self) -> str:
        counts = ", ".join(f"{self.KINDS[k]} {self.held[k]}/{self.tried[k]}" for k in self.KINDS if self.tried[k])
        return (
            f"fault-and-abuse suite: {sum(self.tried.values())} cases tried; {counts}; "
            f"lost: {self.lost_bytes} bytes, {self.lost_rows} rows"
        )


RECORD = FaultRecord()


@pytest.fixture
def record() -> FaultRecord:
    return RECORD


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RECORD.tried:
        terminalreporter.write_sep("=", "fault-and-abuse summary")
        terminalreporter.write_line(RECORD.summary())
