"""The openai:URL judge against a local fake endpoint: both orders asked, ties where they disagree, the journal
that resumes, and every way a server fails (down, slow, nonsense, refusing), each named with its row; the key
never printed."""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import pytest
from fake_openai import TEMPLATE, FakeOpenAI

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.errors import JudgeError
from dpo_recipe.judges.base import Group
from dpo_recipe.judges.endpoint import EndpointJudge, chat_completions_url

SETTINGS = JudgeSection(prompt_template=TEMPLATE, retries=1, retry_backoff_s=0.0, timeout_s=5.0)
GROUPS = [
    Group("AIとは何ですか？", ["短い。", "とても長い答えです。", "中くらいの答え。"], 1, {"topic": "AI"}),
    Group([{"role": "user", "content": "CPUとは？"}], ["CPUは計算します。", "CPU。"], 2),
]
KEY = "sk-CANARY-0123456789abcdef"


def test_the_url_gets_its_chat_completions_path() -> None:
    assert chat_completions_url("http://h:8080/v1/") == "http://h:8080/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_each_pair_is_asked_in_both_orders_and_the_score_is_wins(tmp_path: Path) -> None:
    with FakeOpenAI("longer") as server:
        verdicts = EndpointJudge(server.url, SETTINGS, tmp_path / "journal").judge_groups(GROUPS)
    assert [[v.score for v in group] for group in verdicts] == [[0.0, 2.0, 1.0], [1.0, 0.0]]
    assert verdicts[0][1].reason == "won 2 of 2 comparisons (0 ties: orders disagreed)"
    asked = [shown for r in server.requests for shown in [r["body"]["messages"][0]["content"]]]
    assert len(asked) == 2 * (3 + 1)  # every two answers, each order once
    assert "A0:短い。\nA1:とても長い答えです。" in asked[0] and "A0:とても長い答えです。\nA1:短い。" in asked[1]
    body = server.requests[0]["body"]
    assert (body["max_tokens"], body["temperature"], "model" in body) == (1, 0, False)
    assert "Q:CPUとは？" in asked[-1]  # a messages prompt is asked by its last user turn


def test_a_judge_that_always_picks_the_first_shown_ties_everything(tmp_path: Path) -> None:
    with FakeOpenAI("always_0") as server:
        judge = EndpointJudge(server.url, SETTINGS, tmp_path / "journal")
        verdicts = judge.judge_groups(GROUPS)
    assert [[v.score for v in group] for group in verdicts] == [[1.0, 1.0, 1.0], [0.5, 0.5]]
    assert judge.summary["ties"] == 4 and "2 ties" in verdicts[0][0].reason


def test_the_journal_resumes_without_asking_again(tmp_path: Path) -> None:
    journal = tmp_path / "pairs.jsonl.partial"
    with FakeOpenAI("longer") as server:
        first = EndpointJudge(server.url, SETTINGS, journal).judge_groups(GROUPS)
        asked = len(server.requests)
        again = EndpointJudge(server.url, SETTINGS, journal)
        assert again.judge_groups(GROUPS) == first
    assert len(server.requests) == asked == 8
    assert again.summary == {"endpoint": f"{server.url}/chat/completions", "asked": 0, "from_journal": 8, "ties": 0}
    with journal.open("a", encoding="utf-8") as handle:  # a kill mid-write leaves half a line: asked again
        handle.write('{"key": "ab')
    with FakeOpenAI("longer") as other:  # another endpoint is another judge: nothing reused
        EndpointJudge(other.url, SETTINGS, journal).judge_groups(GROUPS[1:])
    assert len(other.requests) == 2


def test_a_server_that_recovers_after_503s_is_retried_with_backoff(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, retries=2, retry_backoff_s=0.05)
    with FakeOpenAI("longer", fail_first=2) as server:
        started = time.perf_counter()
        verdicts = EndpointJudge(server.url, settings).judge_groups(GROUPS[1:])
    assert [v.score for v in verdicts[0]] == [1.0, 0.0]
    assert time.perf_counter() - started >= 0.05 + 0.1  # 0.05 s, then 0.1 s: the backoff doubles
    assert len(server.requests) == 4


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("nonsense", "the judge answered 'Both answers are lovely!', not the identifier 0 or 1 (2 tries)"),
        ("not_json", "the reply is not an OpenAI chat completion: '<html>gateway</html>'"),
        ("slow", "no reply within judge.timeout_s 0.3 s (2 tries)"),
        ("huge", "the reply is over 1 MB, not a chat completion of judge.max_tokens tokens (2 tries)"),
    ],
)
def test_a_bad_reply_is_named_with_its_row(mode: str, expected: str, tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, timeout_s=0.3)
    with FakeOpenAI(mode, delay_s=1.0) as server, pytest.raises(JudgeError) as err:
        EndpointJudge(server.url, settings, tmp_path / "journal").judge_groups(GROUPS)
    message = str(err.value)
    assert (
        f"openai judge {server.url}/chat/completions, row 1 (prompt 'AIとは何ですか？', answer 1 shown first" in message
    )
    assert expected in message and "the same command goes on from here" in message


def test_an_unreachable_endpoint_is_named() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(JudgeError, match=r"the endpoint cannot be reached \(ConnectionRefusedError"):
        EndpointJudge(f"http://127.0.0.1:{port}/v1", SETTINGS).judge_groups(GROUPS)


def test_the_key_is_sent_from_its_variable_and_never_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, api_key_env="JUDGE_KEY", retries=0)
    with pytest.raises(JudgeError, match="judge.api_key_env names JUDGE_KEY, but that environment variable is not set"):
        EndpointJudge("http://127.0.0.1:9/v1", settings)
    monkeypatch.setenv("JUDGE_KEY", KEY)
    journal = tmp_path / "journal"
    with FakeOpenAI("echo_key") as server, pytest.raises(JudgeError) as err:
        EndpointJudge(server.url, settings, journal).judge_groups(GROUPS)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in str(err.value) and "you sent Bearer [API key]" in str(err.value)
    assert not journal.exists() or KEY not in journal.read_text()
    with FakeOpenAI("refuse_401") as server, pytest.raises(JudgeError) as err:
        EndpointJudge(server.url, settings).judge_groups(GROUPS)
    assert "refused the request (HTTP 401) with the key in JUDGE_KEY: " in str(err.value)
    assert len(server.requests) == 1 and KEY not in str(err.value)  # a refusal is not retried


@pytest.mark.parametrize("pasted", [f"{KEY}\nX-Evil: 1", f"{KEY} extra", f"sk-\t{KEY}", f"ｓｋ-{KEY}"])
def test_a_key_no_header_can_carry_is_refused_unquoted(pasted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """http.client refuses such a header with a ValueError that quotes it: the key, in a traceback."""
    monkeypatch.setenv("JUDGE_KEY", pasted)
    with pytest.raises(JudgeError) as err:
        EndpointJudge("http://127.0.0.1:9/v1", dataclasses.replace(SETTINGS, api_key_env="JUDGE_KEY"))
    assert "JUDGE_KEY, whose value holds what no API key holds" in str(err.value) and KEY not in str(err.value)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/v1", True),
        ("http://localhost:8080/v1", True),
        ("http://LOCALHOST.:8080/v1", True),
        ("http://127.0.0.2:8080/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://api.example.com/v1", False),
        ("http://10.0.0.5:8080/v1", False),
        ("http://0.0.0.0:8080/v1", False),  # what llama.cpp's server prints; not a loopback address
        ("http://localhost.example.com/v1", False),
        ("http://127.0.0.1.nip.io/v1", False),  # resolves to 127.0.0.1, but that is the DNS's word
    ],
)
def test_a_key_goes_only_over_https_or_to_this_machine(
    url: str, allowed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    settings = dataclasses.replace(SETTINGS, api_key_env="JUDGE_KEY")
    if allowed:
        assert EndpointJudge(url, settings).key == KEY
        return
    with pytest.raises(JudgeError) as err:
        EndpointJudge(url, settings)
    message = str(err.value)
    assert message.startswith(f"judge.api_key_env names JUDGE_KEY, but openai:{url} is plain http:// to ")
    assert "Use the endpoint's https:// URL" in message and "set judge.api_key_env: null, so no key is sent" in message
    assert KEY not in message
    EndpointJudge(url, dataclasses.replace(SETTINGS, api_key_env=None))  # no key, nothing to protect


def test_a_redirect_is_not_followed_and_the_key_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib follows a 302 to any host, as a GET that keeps the Authorization header: the judge refuses it."""
    monkeypatch.setenv("JUDGE_KEY", KEY)
    settings = dataclasses.replace(SETTINGS, api_key_env="JUDGE_KEY")
    with (
        FakeOpenAI() as elsewhere,
        FakeOpenAI("redirect", location=f"{elsewhere.url}/steal") as server,
        pytest.raises(JudgeError) as err,
    ):
        EndpointJudge(server.url, settings).judge_groups(GROUPS)
    assert f"the endpoint redirects (HTTP 302) to '{elsewhere.url}/steal', which is not followed" in str(err.value)
    assert len(server.requests) == 1 and elsewhere.requests == []


def test_a_request_to_this_machine_never_goes_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    settings = dataclasses.replace(SETTINGS, api_key_env="JUDGE_KEY")
    with FakeOpenAI() as proxy, FakeOpenAI("longer") as server:
        monkeypatch.setenv("http_proxy", proxy.url.removesuffix("/v1"))
        verdicts = EndpointJudge(server.url, settings).judge_groups(GROUPS[1:])
    assert [v.score for v in verdicts[0]] == [1.0, 0.0]
    assert proxy.requests == [] and len(server.requests) == 2


SECRET = "pw-CANARY-77f3"


def test_credentials_in_the_url_are_refused_and_never_shown(runner, tmp_path: Path, capfd) -> None:
    """A key put into the URL instead of judge.api_key_env: every way the spec arrives is refused, naming the way
    in, and no byte of any output or written file holds it (the user's own recipe file aside)."""
    import json

    from conftest import invoke, write_jsonl

    samples = write_jsonl(tmp_path / "samples.jsonl", [{"prompt": "AIとは？", "completions": ["A。", "BB。"]}])
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"model: {{name_or_path: builtin:tiny}}\njudge: {{kind: 'openai:https://u:{SECRET}@h/v1'}}\n")
    specs = [
        f"openai:https://user:{SECRET}@api.example.com/v1",
        f"openai:https://api.example.com/v1?api_key={SECRET}",
        f"openai:https://api.example.com/v1#{SECRET}",
        f"openai:https://user:pa/{SECRET}@api.example.com/v1",
        f"openai:user:{SECRET}@api.example.com",  # no scheme
        f"openia:https://user:{SECRET}@api.example.com/v1",  # a typo in the kind
    ]
    calls = []
    for k, spec in enumerate(specs):
        calls += [
            ["pairs", "judge", samples, "--judge", spec, "--out", tmp_path / f"pairs-{k}.jsonl"],
            ["pairs", "judge", samples, "--set", f"judge.kind={spec}", "--out", tmp_path / f"set-{k}.jsonl"],
            ["iterate", "--recipe", "tiny-ja", "--judge", spec, "--out", tmp_path / f"rounds-{k}"],
            ["iterate", "--recipe", "tiny-ja", "--set", f"judge.kind={spec}", "--out", tmp_path / f"set-rounds-{k}"],
            ["recipes", "show", "tiny-ja", "--set", f"judge.kind={spec}"],
        ]
    calls += [
        ["pairs", "judge", samples, "--recipe", mine, "--out", tmp_path / "mine.jsonl"],
        ["iterate", "--recipe", mine, "--out", tmp_path / "mine-rounds"],
    ]
    outputs = []
    for args in calls:
        result = invoke(runner, *args)
        assert result.exit_code != 0, (args, result.output)
        outputs.append(result.output)
    captured = capfd.readouterr()
    outputs += [captured.out, captured.err]
    told = [out for out in outputs[:-2] if "name that variable in judge.api_key_env" in out]
    assert len(told) == 5 * 4 + 2, json.dumps(outputs, ensure_ascii=False)[:3000]  # all but the scheme and typo
    assert sum("unknown judge 'openia:https://[hidden]@api.example.com/v1'" in out for out in outputs) == 5
    leaks = [text for text in outputs if SECRET in text]
    leaks += [str(p) for p in tmp_path.rglob("*") if p.is_file() and p != mine and SECRET.encode() in p.read_bytes()]
    assert leaks == []
