"""The blocking ACME client against a loopback HTTP server answering every
request with a rate-limit problem: the order fails as an AcmeError carrying
the server's Retry-After (which acme's own exception drops)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nbgateway.acme.client import RATE_LIMITED_DEFAULT, AcmeAccount, AcmeError, parse_retry_after


def _server(retry_after: str | None, problem: str = "rateLimited"):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"type": f"urn:ietf:params:acme:error:{problem}",
                               "detail": "slow down"}).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/problem+json")
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(("header", "delay"), [("120", 120.0), (None, RATE_LIMITED_DEFAULT)])
def test_rate_limited_carries_retry_after(tmp_path, header, delay):
    server = _server(header)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dir"
        account = AcmeAccount(url, str(tmp_path / "acme"), timeout=5)
        before = time.time()
        with pytest.raises(AcmeError) as info:
            account.issue("a.example.test", lambda *a: None, lambda *a: None)
        assert "slow down" in str(info.value)
        assert before + delay - 1 <= info.value.retry_after <= time.time() + delay + 1
    finally:
        server.shutdown()


def test_parse_retry_after():
    assert parse_retry_after("30", 100.0) == 130.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 0.0) == 1445412480.0
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None


def test_forgotten_account_is_registered_anew_next_time(tmp_path):
    server = _server(None, problem="accountDoesNotExist")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dir"
        account = AcmeAccount(url, str(tmp_path / "acme"), timeout=5)
        with open(account.account_path, "w") as f:
            json.dump({"directory": url, "uri": "http://127.0.0.1:1/acct/1"}, f)
        with pytest.raises(AcmeError):
            account.issue("a.example.test", lambda *a: None, lambda *a: None)
        assert not (tmp_path / "acme" / "account.json").exists()
        assert (tmp_path / "acme" / "account.key").exists()  # the key stays
    finally:
        server.shutdown()


def _bad_nonce():
    from acme import messages
    return messages.Error(typ="urn:ietf:params:acme:error:badNonce", detail="stale nonce")


def test_a_rejected_nonce_is_retried_at_once_not_backed_off(tmp_path, monkeypatch):
    account = AcmeAccount("https://127.0.0.1:1/dir", str(tmp_path / "acme"), timeout=5)
    outcomes = [_bad_nonce(), _bad_nonce(), "issued"]

    def issue_once(domain, publish, unpublish):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(account, "_issue", issue_once)
    assert account.issue("a.example", print, print) == "issued"
    assert outcomes == []


def test_nonces_rejected_every_time_fail_the_order(tmp_path, monkeypatch):
    account = AcmeAccount("https://127.0.0.1:1/dir", str(tmp_path / "acme"), timeout=5)
    calls = []

    def issue_once(domain, publish, unpublish):
        calls.append(domain)
        raise _bad_nonce()

    monkeypatch.setattr(account, "_issue", issue_once)
    with pytest.raises(AcmeError, match="rejected the nonce 3 times"):
        account.issue("a.example", print, print)
    assert len(calls) == 3
