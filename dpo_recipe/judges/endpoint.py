"""``openai:URL``: any OpenAI-compatible chat endpoint as a pairwise judge (llama.cpp's server, Ollama, vLLM, a
hosted API).

TRL removed its pairwise judges after 1.0; this is their way of asking, kept: the prompt
(``judge.prompt_template``, TRL's ``OpenAIPairwiseJudge`` prompt by default) shows the question and two answers
and asks for the identifier of the better one, "0" or "1", in ``judge.max_tokens`` tokens (TRL asked for 1).
A judge model prefers whichever answer comes first more often than chance, so every two answers are asked in
both orders: an answer wins when both orders agree, and the two tie when they do not. An answer's score is the
comparisons it won (a tie counting one half), so a prompt's answers are ranked for best-versus-worst pairs.

What can go wrong is named, with the samples file's row: a reply that is not 0 or 1 (nonsense, a refusal, a
body over 1 MB, which is not read further), a refused request (HTTP 401 / 403: the key), a server that cannot
be reached, a reply slower than ``judge.timeout_s``. Timeouts, dropped connections, HTTP 429 / 5xx and malformed
replies are asked again ``judge.retries`` times, ``judge.retry_backoff_s`` doubling between tries. Every reply is
appended to a journal as it arrives, keyed on what was asked (endpoint, model, prompt, the two answers in their
order), so a run stopped or failed half-way asks only what it has not asked yet. The API key is read from the
environment variable ``judge.api_key_env`` names, sent as a Bearer token, and never printed or written: a reply
quoted in an error has it masked. It goes only where it cannot be read on the way: over https, or over plain
http to this machine (localhost, 127.0.0.0/8, ::1), never through a proxy there; a redirect is refused rather
than followed, since urllib would carry the Authorization header to whatever host the reply names.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.config.vocabulary import redacted
from dpo_recipe.errors import JudgeError
from dpo_recipe.judges.base import Group, Judge, Verdict, prompt_question

IDENTIFIER = re.compile(r"""^\s*["'`]?([01])(?![0-9A-Za-z])""")  # TRL read the reply's first character
RETRYABLE_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)
EXCERPT = 160  # characters of a bad reply quoted in an error
MAX_REPLY = 1 << 20  # bytes read of a reply: a completion of judge.max_tokens tokens is far smaller; a server
# streaming without end is cut here, not read into memory


class Retry(Exception):
    """One try failed in a way another try may not: what went wrong, for the error after the last try."""


def chat_completions_url(url: str) -> str:
    """``http://host:8080/v1`` (or the full ``.../chat/completions``) as the chat completions endpoint."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine by its name alone (``localhost``, 127.0.0.0/8, ``::1``): no lookup, so a
    name that resolves to 127.0.0.1 today is not trusted with a key over plain http."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Refuse(urllib.request.HTTPRedirectHandler):
    """No redirect is followed: the 3xx comes back as an HTTPError (``_one_try`` names where it pointed)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class EndpointJudge(Judge):
    def __init__(self, url: str, settings: JudgeSection, journal: Path | None = None) -> None:
        self.spec, self.url, self.settings, self.journal = f"openai:{url}", chat_completions_url(url), settings, journal
        parts = urllib.parse.urlsplit(self.url)
        local = is_loopback(parts.hostname or "")
        handlers: list[Any] = [Refuse()] + ([urllib.request.ProxyHandler({})] if local else [])
        self.opener = urllib.request.build_opener(*handlers)
        self.key = None
        if settings.api_key_env and parts.scheme == "http" and not local:
            raise JudgeError(
                f"judge.api_key_env names {settings.api_key_env}, but openai:{url} is plain http:// to "
                f"{parts.hostname}, which is not this machine: the key would cross the network unencrypted, "
                "readable by anyone on the way. Use the endpoint's https:// URL; for a server on this machine give "
                "it as localhost or 127.0.0.1; for a server without authentication set judge.api_key_env: null, "
                "so no key is sent."
            )
        if settings.api_key_env:
            self.key = os.environ.get(settings.api_key_env, "").strip() or None
            if self.key is None:
                raise JudgeError(
                    f"judge.api_key_env names {settings.api_key_env}, but that environment variable is not set (or "
                    f"empty). Export it (export {settings.api_key_env}=...) or set judge.api_key_env: null for an "
                    "endpoint without a key."
                )
            if not all(" " < c < "\x7f" for c in self.key):  # http.client would quote it in a ValueError
                raise JudgeError(
                    f"judge.api_key_env names {settings.api_key_env}, whose value holds what no API key holds (a "
                    "space, a line break, another control character or non-ASCII text); nothing was sent. Export "
                    "the key alone."
                )
        self.summary: dict[str, Any] = {}

    # ---- the journal: replies already had -----------------------------------------------------------------
    def _asked(self) -> dict[str, str]:
        if self.journal is None or not self.journal.is_file():
            return {}
        replies = {}
        for line in self.journal.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                replies[entry["key"]] = entry["reply"]
            except (ValueError, KeyError, TypeError):  # a line cut by a kill mid-write: asked again
                continue
        return replies

    def _remember(self, key: str, reply: str) -> None:
        if self.journal is None:
            return
        if self.journal.is_symlink():
            raise JudgeError(f"{self.journal} is a symbolic link; the judge's journal is never written through one.")
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.journal.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "reply": reply}) + "\n")
        except OSError as exc:
            raise JudgeError(
                f"{self.journal} could not be written ({exc.strerror or exc}); the replies before this one are kept: "
                "free the disk and run the same command again."
            ) from None

    def _key(self, content: str) -> str:
        asked = json.dumps([self.url, self.settings.model, self.settings.max_tokens, content], ensure_ascii=False)
        return hashlib.sha256(asked.encode("utf-8")).hexdigest()

    # ---- judging ------------------------------------------------------------------------------------------
    def judge_groups(self, groups: Sequence[Group]) -> list[list[Verdict]]:
        from tqdm.auto import tqdm

        replies = self._asked()
        counts = {"asked": 0, "from_journal": 0, "ties": 0}
        out = []
        comparisons = sum(len(g.answers) * (len(g.answers) - 1) for g in groups)
        with tqdm(total=comparisons, desc=f"Asking {self.url}") as bar:
            for group in groups:
                n = len(group.answers)
                wins, ties = [0.0] * n, [0] * n
                for i in range(n):
                    for j in range(i + 1, n):
                        first = self._winner(group, i, j, replies, counts)
                        second = self._winner(group, j, i, replies, counts)
                        bar.update(2)
                        if first == second:
                            wins[first] += 1
                        else:  # the order decided, not the answers: a tie
                            wins[i] += 0.5
                            wins[j] += 0.5
                            ties[i] += 1
                            ties[j] += 1
                            counts["ties"] += 1
                out.append(
                    [
                        Verdict(wins[k], f"won {wins[k]:g} of {n - 1} comparisons ({ties[k]} ties: orders disagreed)")
                        for k in range(n)
                    ]
                )
        self.summary = {"endpoint": self.url, **counts}
        return out

    def _winner(self, group: Group, first: int, second: int, replies: dict[str, str], counts: dict[str, int]) -> int:
        """The index of the answer the judge prefers with ``first`` shown as "0" and ``second`` as "1"."""
        content = self.settings.prompt_template.format(
            prompt=prompt_question(group.prompt), response0=group.answers[first], response1=group.answers[second]
        )
        key = self._key(content)
        if key in replies:
            counts["from_journal"] += 1
        else:
            where = (
                f"row {group.row} (prompt {prompt_question(group.prompt)[:40]!r}, answer {first + 1} shown first, "
                f"answer {second + 1} second)"
            )
            replies[key] = self.ask(content, where)
            self._remember(key, replies[key])
            counts["asked"] += 1
        return first if replies[key] == "0" else second

    def ask(self, content: str, where: str) -> str:
        """The judge's "0" or "1" for one prompt, with retries; JudgeError naming ``where`` when none comes."""
        settings = self.settings
        problem = ""
        for attempt in range(settings.retries + 1):
            if attempt:
                time.sleep(settings.retry_backoff_s * 2 ** (attempt - 1))
            try:
                return self._one_try(content, where)
            except Retry as retry:
                problem = str(retry)
        tries = settings.retries + 1
        kept = (
            "Nothing already judged is lost: the replies so far are kept, and the same command goes on from here. "
            if self.journal is not None
            else ""  # compare keeps no journal: its questions are few, and it writes nothing but its table
        )
        raise JudgeError(
            f"openai judge {self.url}, {where}: {problem} ({tries} tr{'y' if tries == 1 else 'ies'}). {kept}"
            "Check the server, or judge.timeout_s / judge.retries / judge.request_extra (a grammar that allows "
            "only 0 or 1)."
        )

    def _one_try(self, content: str, where: str) -> str:
        settings = self.settings
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": settings.max_tokens,
            "temperature": 0,
            **settings.request_extra,
        }
        if settings.model:
            body["model"] = settings.model
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
        try:
            with self.opener.open(request, timeout=settings.timeout_s) as response:
                raw = response.read(MAX_REPLY + 1)
        except urllib.error.HTTPError as exc:
            detail = self._excerpt(exc.read(MAX_REPLY).decode("utf-8", "replace"))
            if 300 <= exc.code < 400:
                where_to = self._excerpt(redacted(exc.headers.get("Location") or "nowhere named"))
                raise JudgeError(
                    f"openai judge {self.url}, {where}: the endpoint redirects (HTTP {exc.code}) to {where_to!r}, "
                    "which is not followed (the request, and a key, would go wherever a reply points). Give the "
                    "final URL as openai:URL."
                ) from None
            if exc.code in (401, 403):
                key = f"the key in {settings.api_key_env}" if settings.api_key_env else "no key (judge.api_key_env)"
                raise JudgeError(
                    f"openai judge {self.url}, {where}: the endpoint refused the request (HTTP {exc.code}) with "
                    f"{key}: {detail!r}. Check the key and that it may use this endpoint."
                ) from None
            if exc.code in RETRYABLE_STATUS:
                raise Retry(f"HTTP {exc.code} from the endpoint: {detail!r}") from None
            raise JudgeError(
                f"openai judge {self.url}, {where}: the endpoint refused the request (HTTP {exc.code}): {detail!r}. "
                "Check the URL (it ends where /chat/completions is added, e.g. http://host:8080/v1), judge.model "
                "and judge.request_extra."
            ) from None
        except TimeoutError:
            raise Retry(f"no reply within judge.timeout_s {settings.timeout_s:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise Retry(f"no reply within judge.timeout_s {settings.timeout_s:g} s") from None
            raise Retry(f"the endpoint cannot be reached ({type(exc.reason).__name__}: {exc.reason})") from None
        except (http.client.HTTPException, ConnectionError) as exc:
            raise Retry(f"the connection failed ({type(exc).__name__})") from None
        if len(raw) > MAX_REPLY:
            raise Retry(f"the reply is over {MAX_REPLY >> 20} MB, not a chat completion of judge.max_tokens tokens")
        return self._identifier(raw.decode("utf-8", "replace"))

    def _identifier(self, text: str) -> str:
        try:
            choice = json.loads(text)["choices"][0]
            reply = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise Retry(f"the reply is not an OpenAI chat completion: {self._excerpt(text)!r}") from None
        if choice.get("finish_reason") == "content_filter" or choice["message"].get("refusal"):
            raise Retry(f"the judge refused to answer: {self._excerpt(reply or str(choice['message']))!r}")
        found = IDENTIFIER.match(reply)
        if not found:
            raise Retry(f"the judge answered {self._excerpt(reply)!r}, not the identifier 0 or 1")
        return found.group(1)

    def _excerpt(self, text: str) -> str:
        """A reply as an error quotes it: cut short, the API key masked wherever an echo put it."""
        if self.key:
            text = text.replace(self.key, "[API key]")
        return text[:EXCERPT] + ("…" if len(text) > EXCERPT else "")
