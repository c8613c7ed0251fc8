"""A local stand-in for an OpenAI-compatible chat endpoint, for the ``openai:URL`` judge's tests.

It answers ``POST /v1/chat/completions`` by a rule the test picks, so the judge's real HTTP code runs against
every way a server can behave: prefer the longer answer (a judge with an opinion), always answer "0" (a judge
that only ever picks the first shown), answer nonsense, refuse (HTTP 401 / 503), echo the request's key, or
answer slower than the judge waits, redirect elsewhere, or send 3 MB. Every request is recorded, a GET too
(where a followed redirect would arrive). The prompt template the tests set is ``A0:{response0}\\nA1:{response1}``, so
the two answers can be read back from the request.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TEMPLATE = "Q:{prompt}\nA0:{response0}\nA1:{response1}"


def shown_answers(content: str) -> tuple[str, str]:
    first = content.split("\nA0:", 1)[1].split("\nA1:", 1)
    return first[0], first[1]


class FakeOpenAI:
    """``with FakeOpenAI("longer") as server: server.url`` (``http://127.0.0.1:PORT/v1``).

    ``mode``: ``longer`` | ``always_0`` | ``nonsense`` | ``not_json`` | ``refuse_401`` | ``echo_key`` | ``slow`` |
    ``redirect`` (HTTP 302 to ``location``) | ``huge`` (3 MB); ``fail_first``: answer the first N requests with
    HTTP 503 (then by ``mode``); ``down_after``: answer N requests by ``mode``, then HTTP 503 to every one (a server
    that went down; set it to None to bring it back)."""

    def __init__(
        self,
        mode: str = "longer",
        *,
        fail_first: int = 0,
        delay_s: float = 2.0,
        location: str = "",
        down_after: int | None = None,
    ) -> None:
        self.mode, self.fail_first, self.delay_s, self.location = mode, fail_first, delay_s, location
        self.down_after, self.answered = down_after, 0
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload = server.answer(self.path, dict(self.headers), body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    if status == 302:
                        self.send_header("Location", server.location)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the judge gave up waiting (slow mode)
                    pass

            def do_GET(self) -> None:  # noqa: N802 - where a followed redirect (POST turned GET) arrives
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": None})
                self.send_response(405)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {path}"}}
        if len(self.requests) <= self.fail_first:
            return 503, {"error": {"message": "loading model"}}
        if self.down_after is not None and self.answered >= self.down_after:
            return 503, {"error": {"message": "server is down"}}
        self.answered += 1
        if self.mode == "redirect":
            return 302, {}
        if self.mode == "refuse_401":
            return 401, {"error": {"message": "invalid api key"}}
        if self.mode == "not_json":
            return 200, b"<html>gateway</html>"
        if self.mode == "huge":
            return 200, b"0" * (3 << 20)
        if self.mode == "slow":
            time.sleep(self.delay_s)
        content = body["messages"][-1]["content"]
        if self.mode == "longer":
            first, second = shown_answers(content)
            reply = "0" if len(first) > len(second) else "1" if len(second) > len(first) else "0"
        elif self.mode == "always_0" or self.mode == "slow":
            reply = "0"
        elif self.mode == "echo_key":
            reply = f"you sent {headers.get('Authorization')}"
        else:  # nonsense
            reply = "Both answers are lovely!"
        return 200, {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]
        }

    def __enter__(self) -> FakeOpenAI:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
