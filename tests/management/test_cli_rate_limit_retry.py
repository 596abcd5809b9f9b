"""nbgateway-admin waits out the account's REST rate limit: a 429 (refused
before any handler ran) is retried after its Retry-After, at most
RATE_LIMIT_RETRIES times and never for more than MAX_RETRY_AFTER seconds."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nbgateway.management.cli._client import (
    MAX_RETRY_AFTER,
    RATE_LIMIT_RETRIES,
    Client,
    CliError,
)


class _Server:
    """Answers the first ``limited`` requests with 429 and ``retry_after``."""

    def __init__(self, limited: int, retry_after: str | None = "0") -> None:
        self.limited = limited
        self.seen: list[tuple[str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.seen.append((self.command, body))
                if len(outer.seen) <= outer.limited:
                    payload = json.dumps({"message": "too many requests for this account, "
                                                     "retry later", "code": 429}).encode()
                    self.send_response(429)
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                else:
                    payload = json.dumps({"id": "g1"}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    made: list[_Server] = []

    def make(*a, **kw) -> _Server:
        made.append(_Server(*a, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_429_is_waited_out_and_the_write_sent_again(server_factory):
    server = server_factory(limited=2, retry_after="2")
    slept: list[float] = []
    client = Client(server.url, "tok", sleep=slept.append)
    assert client.post("/groups", {"name": "admins"}) == {"id": "g1"}
    assert slept == [2.0, 2.0]
    assert [m for m, _ in server.seen] == ["POST"] * 3
    assert all(json.loads(b) == {"name": "admins"} for _, b in server.seen)


def test_without_retry_after_one_second(server_factory):
    server = server_factory(limited=1, retry_after=None)
    slept: list[float] = []
    assert Client(server.url, "tok", sleep=slept.append).get("/groups") == {"id": "g1"}
    assert slept == [1.0]


def test_a_long_retry_after_is_the_answer(server_factory):
    server = server_factory(limited=1, retry_after=str(int(MAX_RETRY_AFTER) + 1))
    slept: list[float] = []
    with pytest.raises(CliError, match=r"too many requests.*\(HTTP 429\)"):
        Client(server.url, "tok", sleep=slept.append).get("/groups")
    assert slept == [] and len(server.seen) == 1


def test_retries_are_bounded(server_factory):
    server = server_factory(limited=100)
    slept: list[float] = []
    with pytest.raises(CliError, match=r"HTTP 429"):
        Client(server.url, "tok", sleep=slept.append).post("/peers", {"name": "x"})
    assert len(slept) == RATE_LIMIT_RETRIES
    assert len(server.seen) == RATE_LIMIT_RETRIES + 1
