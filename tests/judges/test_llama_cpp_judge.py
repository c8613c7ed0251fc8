"""The openai:URL judge against a real OpenAI-compatible server: llama.cpp's, through llama-cpp-python[server],
serving the tiny adapter's GGUF export.

llama-cpp-python is source-only on PyPI (a C++ build of minutes), so this runs in CI's `llama-cpp` job, which
builds it, and is skipped where it is not installed. The judge model is the tiny random one: what it prefers
means nothing, but every reply must be read as llama.cpp's server really sends it (a grammar, the server's own
request field, lets it answer only 0 or 1), both orders asked, and the verdicts must be the replies'.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.deploy.export import export
from dpo_recipe.judges.base import Group
from dpo_recipe.judges.endpoint import EndpointJudge

pytest.importorskip("llama_cpp.server")

TEMPLATE = "Q:{prompt}\nA0:{response0}\nA1:{response1}\nBetter (0 or 1):"
GROUPS = [
    Group("AIとは何ですか？", ["AIは人工知能です。", "はい。", "AIとは、考える機械の研究です。"], 1, {"topic": "AI"}),
    Group("CPUとは？", ["CPUは計算装置です。", "CPU。", "中央処理装置のことです。"], 2, {"topic": "CPU"}),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def llama_server(tiny_adapter: Path, tmp_path: Path):
    export(tiny_adapter, tmp_path / "gguf", dtype="f32")
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(tmp_path / "gguf" / "model.gguf")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "llama.cpp's server did not start in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_the_judge_reads_llama_cpps_replies_in_both_orders(llama_server: str, tmp_path: Path) -> None:
    settings = JudgeSection(
        prompt_template=TEMPLATE, request_extra={"grammar": 'root ::= "0" | "1"'}, timeout_s=60.0, retries=1
    )
    journal = tmp_path / "journal.jsonl"
    judge = EndpointJudge(llama_server, settings, journal)
    verdicts = judge.judge_groups(GROUPS)
    assert judge.summary["asked"] == 12 and judge.summary["from_journal"] == 0
    replies = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(replies) == 12 and {r["reply"] for r in replies} <= {"0", "1"}
    for group in verdicts:  # every comparison hands out one point: a win, or half each on a tie
        assert sum(v.score for v in group) == 3
    # the first comparison asked again by hand: the server's own reply is the one the judge recorded
    content = TEMPLATE.format(prompt=GROUPS[0].prompt, response0=GROUPS[0].answers[0], response1=GROUPS[0].answers[1])
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 1, "temperature": 0}
    body.update(settings.request_extra)
    request = urllib.request.Request(
        f"{llama_server}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        raw = json.loads(reply.read())["choices"][0]["message"]["content"]
    assert raw.strip() == replies[0]["reply"]
    again = EndpointJudge(llama_server, settings, journal)  # a second run asks nothing: the journal answers
    assert again.judge_groups(GROUPS) == verdicts and again.summary["asked"] == 0
