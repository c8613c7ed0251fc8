"""The harness the comparison benchmarks share: each run in its own process, alternated over rounds.

``dpo_throughput.py`` and ``forward_passes.py`` compare configurations of one job. Running each in a fresh
process keeps one's memory and kernel caches out of the next's numbers; rotating the order every round
spreads drift in the machine's speed (a shared machine's other work) over all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (pairs, rounds), refused with the value otherwise."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def chosen(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    """The comma-separated names of ``value``, each one of ``allowed``, or exit naming ``flag`` and the choices."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
    return names


def answered_as_worker(worker: str | None, run_worker: Callable[[], dict[str, Any]]) -> bool:
    """In a run's own process (``--worker`` given): print ``run_worker()`` as the JSON line ``run_in_process``
    reads, and say so; in the comparing process, do nothing."""
    if worker:
        print(json.dumps(run_worker()))
    return bool(worker)


def run_in_process(script: str, arguments: list[str], name: str) -> dict[str, Any]:
    """``script`` run with ``arguments`` in a fresh Python, offline; its last stdout line, parsed as JSON."""
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternated(
    names: list[str], rounds: int, run: Callable[[str], dict[str, Any]], line: Callable[[dict[str, Any]], str]
) -> list[dict[str, Any]]:
    """``run(name)`` for every name, ``rounds`` times, the order rotated each round; ``line`` says each result."""
    results = []
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            result = run(name)
            results.append(result)
            print(f"round {round_index + 1}/{rounds} {name}: {line(result)}", file=sys.stderr, flush=True)
    return results


def tiny_model_dir() -> str:
    """The builtin tiny model built in a temporary folder: what a ``--smoke`` run trains and scores."""
    import tempfile
    from pathlib import Path

    from dpo_recipe.models.tiny import build_tiny_model

    return str(build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-"))))
