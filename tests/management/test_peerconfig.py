"""Which gateways a peer's config lists; why the others are left out (issue 12.3)."""

from __future__ import annotations

from twisted.logger import LogLevel, globalLogPublisher

from nbgateway.management import wgconfig
from nbgateway.management.model import Peer
from nbgateway.management.peerconfig import RefusalLog

KEY = "A" * 43 + "="


def _peer(pid: str, **kw) -> Peer:
    base = {"id": pid, "account_id": "acct", "key": KEY, "name": pid, "ip": "100.64.0.9"}
    base.update(kw)
    return Peer(**base)


def _capture():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    return events


def test_refusal_is_logged_once_per_peer_at_info():
    events = _capture()
    try:
        log = RefusalLog()
        peer, gw = _peer("p1", name="bob"), _peer("gw", proxy=True, proxy_cluster="eu.test")
        groups = {"eu.test": ["devs"]}
        assert log.refused("acct", peer, [gw], groups)
        assert not log.refused("acct", peer, [gw], groups)
        assert not log.refused("acct", peer, [gw], groups)
        # another peer is logged on its own
        assert log.refused("acct", _peer("p2"), [gw], groups)
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [e for e in events if "leaves out gateway" in e.get("log_format", "")]
    assert [e["peer_id"] for e in mine] == ["p1", "p2"]
    assert all(e["log_level"] == LogLevel.info for e in mine)
    assert mine[0]["groups"] == "devs" and mine[0]["cluster"] == "eu.test"


def test_refusal_log_is_bounded():
    log = RefusalLog(limit=3)
    gw = _peer("gw", proxy=True, proxy_cluster="eu.test")
    for i in range(10):
        log.refused("acct", _peer(f"p{i}"), [gw], {})
    assert len(log._seen) == 3
    assert log.refused("acct", _peer("p0"), [gw], {})  # forgotten, so logged again


def test_withheld_comment_cannot_inject_lines():
    text = wgconfig.render_config(
        private_key=None, addresses=["100.64.0.9"], proxy_peers=[],
        withheld=[wgconfig.WithheldPeer("eu.test\nEndpoint = 6.6.6.6:1",
                                        ["ops\n[Peer]\nPublicKey = x", "devs"])])
    for line in text.splitlines():
        assert line == "" or line.startswith("#") or line.startswith("[Interface]") \
            or line.startswith("Address"), line
    assert "# Add this peer to one of: ops?[Peer]?PublicKey = x, devs;" in text
    assert "DNS" not in text


def test_withheld_gateway_without_access_groups_says_so():
    text = wgconfig.render_config(private_key=None, addresses=["100.64.0.9"], proxy_peers=[],
                                  withheld=[wgconfig.WithheldPeer("eu.test", [])])
    assert "# It serves no private service with an access group yet." in text
