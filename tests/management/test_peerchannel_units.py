"""Unit tests for the peer-channel building blocks: NaCl-box framing, the server key
file, the coalescing update hub and map serials (the per-account memo: test_mapcache.py)."""

from __future__ import annotations

import itertools
import os
import stat
import threading

import pytest
from nacl.public import Box, PrivateKey

from nbgateway._proto import management_pb2 as pb
from nbgateway.management.crypto_box import ServerKey
from nbgateway.management.model import ChangeKind
from nbgateway.management.peerchannel import _SerialClock
from nbgateway.management.peerhub import PeerUpdateHub, Subscription
from nbgateway.peerbox import (
    NONCE_SIZE,
    OVERHEAD,
    BoxError,
    decode_wg_key,
    encode_wg_key,
    open_message,
    open_raw,
    seal_message,
    seal_raw,
)

# --- crypto_box ------------------------------------------------------------------------------


def _keys():
    a, b = PrivateKey.generate(), PrivateKey.generate()
    return a, b


def test_seal_layout_is_nonce_then_box():
    a, b = _keys()
    body = seal_raw(b"hello", bytes(b.public_key), bytes(a))
    assert len(body) == OVERHEAD + 5
    # what Go's box.Open(nil, body[24:], nonce, peer, priv) does, via PyNaCl's detached API
    plain = Box(b, a.public_key).decrypt(body[NONCE_SIZE:], body[:NONCE_SIZE])
    assert plain == b"hello"


def test_seal_uses_fresh_nonces():
    a, b = _keys()
    one = seal_raw(b"x", bytes(b.public_key), bytes(a))
    two = seal_raw(b"x", bytes(b.public_key), bytes(a))
    assert one[:NONCE_SIZE] != two[:NONCE_SIZE]


def test_open_roundtrip_and_failures():
    a, b = _keys()
    msg = pb.LoginRequest(setupKey="k", meta=pb.PeerSystemMeta(hostname="h"))
    body = seal_message(msg, bytes(b.public_key), bytes(a))
    assert open_message(body, pb.LoginRequest(), bytes(a.public_key), bytes(b)) == msg
    with pytest.raises(BoxError):
        open_raw(body[: OVERHEAD - 1], bytes(a.public_key), bytes(b))
    tampered = bytearray(body)
    tampered[-1] ^= 1
    with pytest.raises(BoxError):
        open_raw(bytes(tampered), bytes(a.public_key), bytes(b))
    other = PrivateKey.generate()
    with pytest.raises(BoxError):
        open_raw(body, bytes(other.public_key), bytes(b))  # wrong sender key
    junk = seal_raw(b"\xff\xff\xff", bytes(b.public_key), bytes(a))
    with pytest.raises(BoxError, match="invalid request message"):
        open_message(junk, pb.LoginRequest(), bytes(a.public_key), bytes(b))


def test_kept_boxes_stay_per_key_pair():
    """peerbox keeps each key pair's box: later messages of the pair still open,
    another pair's key still fails, a bad key is refused every time."""
    a, b, c = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    for i in range(3):
        body = seal_raw(b"m%d" % i, bytes(b.public_key), bytes(a))
        assert open_raw(body, bytes(a.public_key), bytes(b)) == b"m%d" % i
        with pytest.raises(BoxError):
            open_raw(body, bytes(c.public_key), bytes(b))
        with pytest.raises(BoxError):
            open_raw(body, b"short", bytes(b))
        other = seal_raw(b"n", bytes(c.public_key), bytes(a))
        assert Box(c, a.public_key).decrypt(other[NONCE_SIZE:], other[:NONCE_SIZE]) == b"n"


def test_decode_wg_key():
    raw = os.urandom(32)
    assert decode_wg_key(encode_wg_key(raw)) == raw
    for bad in ("", "x" * 44, encode_wg_key(raw)[:-1], encode_wg_key(os.urandom(31)), 7):
        with pytest.raises(BoxError):
            decode_wg_key(bad)  # type: ignore[arg-type]


def test_server_key_file_created_0600_and_reloaded(tmp_path):
    path = str(tmp_path / "sub" / "wg.key")
    k1 = ServerKey.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    k2 = ServerKey.load_or_create(path)
    assert k1.private_bytes == k2.private_bytes
    assert decode_wg_key(k1.public_b64) == bytes(PrivateKey(k1.private_bytes).public_key)
    assert [n for n in os.listdir(tmp_path / "sub")] == ["wg.key"]  # no temp files left


def test_server_key_is_on_disk_before_its_name_and_the_name_is_synced(tmp_path, monkeypatch):
    path = str(tmp_path / "wg.key")
    order: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        order.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def link(src: str, dst: str) -> None:
        order.append("link")
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    ServerKey.load_or_create(path)
    assert order == ["file", "link", "dir"]
    order.clear()
    ServerKey.load_or_create(path)  # an existing key is only read
    assert order == []


def test_server_key_concurrent_creation_agrees(tmp_path):
    path = str(tmp_path / "wg.key")
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(ServerKey.load_or_create(path).public_bytes))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1


def test_server_key_corrupt_file_is_an_error(tmp_path):
    path = tmp_path / "wg.key"
    path.write_text("garbage\n")
    with pytest.raises(BoxError):
        ServerKey.load_or_create(str(path))


# --- hub, cache, serials ------------------------------------------------------------------


def test_subscription_coalesces_bursts_into_one_pending_flag():
    s = Subscription("acct", "peer", "key")
    for _ in range(1000):
        s.mark()
    assert s.take() is True
    assert s.take() is False  # one slot: the burst became a single rebuild
    s.mark()
    s.close()
    assert s.take() is False  # closed streams stop rebuilding


def test_hub_routes_by_account_and_kind():
    hub = PeerUpdateHub()
    a = Subscription("acct-a", "p1", "k1")
    b = Subscription("acct-b", "p2", "k2")
    hub.subscribe(a)
    hub.subscribe(b)
    hub.on_change(ChangeKind.GROUP, "acct-a", ("g",))
    assert a.take() and not b.take()
    hub.on_change(ChangeKind.PROXY, "acct-a", ("x",))  # proxy rows never change a map
    hub.on_change(ChangeKind.SERVICE_UPDATED, "", ("x",))
    assert not a.take() and not b.take()
    gen = hub.generation("acct-b")
    hub.on_change(ChangeKind.SERVICE_DELETED, "acct-b", ("s",))
    assert b.take() and hub.generation("acct-b") == gen + 1
    assert hub.active() == 2


def test_hub_new_stream_supersedes_old_one_for_same_key():
    hub = PeerUpdateHub()
    old = Subscription("acct", "p1", "k1")
    new = Subscription("acct", "p1", "k1")
    hub.subscribe(old)
    assert hub.subscribe(new) is old
    assert old.closed and not new.closed
    assert hub.unsubscribe(old) is False  # not current: must not mark the peer offline
    assert hub.unsubscribe(new) is True
    assert hub.active() == 0


def test_serials_strictly_increase():
    clock = _SerialClock()
    values = [clock.next() for _ in range(1000)]
    assert all(b > a for a, b in itertools.pairwise(values))
