"""ManagementService lifecycle in-process (pytest-twisted): nothing live before start, clean stop.

Also checks the first-start admin token (0600 file, path logged, token never
logged) and that a restart on the same data directory keeps the token.
"""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from nbgateway.management.service import ManagementService


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def make(datadir: str, addr: str = "127.0.0.1:0") -> ManagementService:
    return ManagementService(datadir=datadir, api_addr=addr, reactor=reactor)


@pytest_twisted.inlineCallbacks
def get(svc, path, token=None):
    port = svc.port.getHost().port
    headers = Headers({b"Authorization": [f"Token {token}".encode()]} if token else {})
    resp = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode(),
                                        headers)
    body = yield readBody(resp)
    return resp.code, body


@pytest_twisted.inlineCallbacks
def test_start_serve_stop_restart(tmp_path, events):
    datadir = str(tmp_path / "data")
    svc = make(datadir)
    assert not os.path.exists(datadir)
    assert svc.port is None and svc.store is None and not svc.threadpool.started

    svc.privilegedStartService()
    assert svc.port is not None
    assert not svc.threadpool.started  # threads only in startService
    token_path = os.path.join(datadir, "admin-token")
    assert stat.S_IMODE(os.stat(token_path).st_mode) == 0o600
    with open(token_path) as f:
        token = f.read().strip()
    svc.startService()
    assert svc.threadpool.started
    try:
        code, body = yield get(svc, "/api/groups", token)
        assert code == 200
        assert "All" in [g["name"] for g in json.loads(body)]
        code, body = yield get(svc, "/api/groups", "nbp_nope")
        assert (code, json.loads(body)["code"]) == (401, 401)
    finally:
        yield svc.stopService()
    assert svc.port is None and not svc.threadpool.started

    texts = [repr(e) for e in events]
    assert any(os.path.abspath(token_path) in t for t in texts)
    assert not any(token in t for t in texts)

    # restart on the same data directory: same token, file untouched, still valid
    mtime = os.stat(token_path).st_mtime_ns
    svc2 = make(datadir)
    svc2.privilegedStartService()
    svc2.startService()
    try:
        code, _ = yield get(svc2, "/api/users", token)
        assert code == 200
    finally:
        yield svc2.stopService()
    assert os.stat(token_path).st_mtime_ns == mtime


def test_bind_failure_raises_in_privileged_start(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        svc = make(str(tmp_path / "data"), f"127.0.0.1:{s.getsockname()[1]}")
        with pytest.raises(CannotListenError):
            svc.privilegedStartService()
    assert svc.store is None  # closed again, nothing leaked
