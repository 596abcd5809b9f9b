"""The asynchronous, bounded access-log pipeline and entry field rules."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from nbgateway.observe.accesslog import AccessLogger, build_entry, new_log_id, should_log


class Client:
    def __init__(self, mode="ok"):
        self.mode = mode
        self.sent = []
        self.pending: list[Deferred] = []

    def send_access_log(self, entry):
        self.sent.append(entry)
        if self.mode == "ok":
            return succeed(None)
        if self.mode == "raise":
            raise RuntimeError("broken")
        d = Deferred()
        self.pending.append(d)
        return d


def entry(**kw):
    args = dict(now=1000.5, log_id=new_log_id(), account_id="a", service_id="s",
                host="app.example:8443", path="/x", method="GET", response_code=200,
                duration_ms=3, source_ip="100.64.0.10")
    args.update(kw)
    return build_entry(**args)


def test_private_success_fields_b63():
    e = entry(auth_mechanism="oidc", user_id="u1")
    assert e.host == "app.example" and e.protocol == "http"
    assert e.auth_success and e.user_id == "u1" and e.auth_mechanism == "oidc"
    assert e.timestamp.seconds == 1000 and len(e.log_id) == 20


def test_private_denial_fields_b64():
    e = entry(response_code=403, user_id="u1")
    assert not e.auth_success and e.user_id == "" and e.auth_mechanism == ""
    assert not entry(response_code=401).auth_success
    assert entry(response_code=0).response_code == 200


def test_l4_entries_never_auth_success():
    assert not entry(protocol="tcp").auth_success


def test_internal_paths_not_logged_b65():
    assert not should_log("/__netbird__/assets/x.js")
    assert should_log("/api")


def test_sends_asynchronously_and_counts():
    client = Client()
    logger = AccessLogger(client, Clock())
    for _ in range(10):
        logger.log(entry())
    assert len(client.sent) == 10 and logger.stats.sent == 10 and logger.pending == 0


def test_slow_management_never_blocks_and_queue_is_bounded():
    clock = Clock()
    client = Client(mode="hang")
    logger = AccessLogger(client, clock, max_queue=100, max_inflight=4, send_timeout=10)
    for _ in range(1000):
        logger.log(entry())  # returns immediately every time
    assert len(client.pending) == 4  # only max_inflight outstanding
    assert logger.pending == 104
    assert logger.stats.dropped == 896
    clock.advance(10.1)  # timeouts free the slots; the pump continues
    assert logger.stats.failed == 4 and len(client.pending) == 8


def test_failing_management_counted():
    client = Client(mode="raise")
    logger = AccessLogger(client, Clock())
    logger.log(entry())
    logger.log(entry())
    assert logger.stats.failed == 2 and logger.pending == 0


def test_stop_flushes_within_bound():
    clock = Clock()
    client = Client(mode="hang")
    logger = AccessLogger(client, clock, max_inflight=1)
    for _ in range(3):
        logger.log(entry())
    done = []
    logger.stop(timeout=5).addCallback(done.append)
    client.pending[0].callback(None)
    assert done == []
    clock.advance(5)
    assert done == [None]
    logger.log(entry())  # after stop: dropped
    assert logger.stats.dropped >= 2


def test_stop_when_idle():
    logger = AccessLogger(Client(), Clock())
    done = []
    logger.stop().addCallback(done.append)
    assert done == [None]
