"""The access-log entry built field by field is the entry of the keyword
construction it replaced (same serialized bytes over random field mixes), and
the request id keeps its shape."""

from __future__ import annotations

import itertools
import random
import re
import time

from google.protobuf.timestamp_pb2 import Timestamp

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.observe.accesslog import build_entry, new_log_id
from nbgateway.routes.hosts import host_without_port


def keyword_entry(*, now, log_id, account_id, service_id, host, path, method, response_code,
                  duration_ms, source_ip, auth_mechanism="", user_id="", bytes_upload=0,
                  bytes_download=0, protocol="http", metadata=None, target=""):
    """The previous construction, written out as the reference."""
    ts = Timestamp()
    ts.FromNanoseconds(int(now * 1e9))
    code = response_code or 200
    return pb.AccessLog(
        timestamp=ts, log_id=log_id, account_id=account_id, service_id=service_id,
        host=host_without_port(host), path=path, duration_ms=duration_ms, method=method,
        response_code=code, source_ip=source_ip, auth_mechanism=auth_mechanism,
        user_id=user_id if auth_mechanism in ("oidc", "token", "mtls") else "",
        auth_success=code not in (401, 403) if protocol == "http" else False,
        bytes_upload=bytes_upload, bytes_download=bytes_download, protocol=protocol,
        metadata=metadata or {}, nbgw_target=target)


def test_field_by_field_entry_serializes_like_the_keyword_construction():
    rnd = random.Random(20)
    for _ in range(2000):
        kw = dict(
            now=rnd.choice([0.0, 1.5, 1765000000.123456, rnd.random() * 2e9]),
            log_id=new_log_id(), account_id=rnd.choice(["", "acct"]),
            service_id=rnd.choice(["", "svc"]),
            host=rnd.choice(["h.example", "h.example:8443", "[fd00::1]:80", "a:b:c", " x "]),
            path=rnd.choice(["/", "/p/q"]), method=rnd.choice(["GET", "POST"]),
            response_code=rnd.choice([0, 200, 401, 403, 502]), duration_ms=rnd.randint(0, 9),
            source_ip=rnd.choice(["100.64.0.10", ""]),
            auth_mechanism=rnd.choice(["", "oidc", "token", "mtls", "password", "tunnel"]),
            user_id=rnd.choice(["", "u1"]), bytes_upload=rnd.choice([0, 5]),
            bytes_download=rnd.choice([0, 700]), protocol=rnd.choice(["http", "tcp", "udp"]),
            metadata=rnd.choice([None, {}, {"verdict": "direct_upstream_denied"}]),
            target=rnd.choice(["", "http://10.0.0.1:80"]))
        new, ref = build_entry(**kw), keyword_entry(**kw)
        assert new == ref, kw
        assert (new.SerializeToString(deterministic=True)
                == ref.SerializeToString(deterministic=True)), kw


def test_timestamp_keeps_the_sub_second_part():
    entry = build_entry(now=1765000000.25, log_id="x", account_id="a", service_id="s",
                        host="h", path="/", method="GET", response_code=200, duration_ms=0,
                        source_ip="100.64.0.1")
    # (float nanoseconds, as before: within a microsecond)
    assert entry.timestamp.seconds == 1765000000
    assert abs(entry.timestamp.nanos - 250_000_000) < 1000


def test_log_ids_are_20_base32hex_characters_the_second_then_random():
    before = int(time.time())
    ids = {new_log_id() for _ in range(5000)}
    after = int(time.time())
    assert len(ids) == 5000
    assert all(re.fullmatch(r"[0-9a-v]{20}", i) for i in ids)
    # the first 7 digits are the Unix second, most significant first
    seconds = {int(i[:7], 32) for i in ids}
    assert seconds <= set(range(before, after + 1))
    # every digit of the alphabet shows up at every random position
    for pos in range(7, 20):
        assert len({i[pos] for i in ids}) == 32


def test_log_ids_sort_by_their_second(monkeypatch):
    """Ids of later seconds sort after earlier ones (the id index's last
    pages take a batch's inserts), across digit carries too."""
    from nbgateway.observe import accesslog

    made = []
    for second in (2**30 - 1, 2**30, 1_765_000_000, 1_765_000_001, 2**34, 2**35 - 1):
        monkeypatch.setattr(accesslog, "_time", lambda s=second: s + 0.999)
        ids = [new_log_id() for _ in range(40)]
        assert {int(i[:7], 32) for i in ids} == {second}
        made.append(ids)
    for earlier, later in itertools.pairwise(made):
        assert max(earlier) < min(later)


def test_log_ids_of_a_given_time_and_across_seconds():
    """``new_log_id(now)``: the id is of ``now``'s second (the request's own
    time, no clock read); ids made ahead for one second are never handed out
    for another, and the ids of one second stay distinct across refills."""
    from nbgateway.observe import accesslog

    first = [new_log_id(1_765_000_000.9) for _ in range(300)]
    assert {i[:7] for i in first} == {accesslog._stamp(1_765_000_000)}
    assert len(set(first)) == 300
    after = new_log_id(1_765_000_001.0)
    assert after[:7] == accesslog._stamp(1_765_000_001)
    assert all(i[:7] == after[:7] for i in accesslog._IDS)  # the rest went
    back = new_log_id(1_765_000_000.1)  # a clock that went back: its own second
    assert back[:7] == accesslog._stamp(1_765_000_000) and back not in first
    assert new_log_id(0.5)[:7] == "0000000"


def test_entry_from_fields_is_build_entry_of_the_fields_over_template_hits():
    """The template-based build (a cached entry of the repeating fields,
    copied, then the per-request fields set) gives the message build_entry
    gives, for first uses and hits alike, and a hit never carries a previous
    request's per-request fields."""
    from nbgateway.observe import accesslog
    from nbgateway.observe.accesslog import HTTP_FIELDS, entry_from_fields

    rnd = random.Random(21)
    accesslog._TEMPLATES.clear()
    for _ in range(3000):
        kw = dict(
            now=rnd.choice([0.0, 1.5, 1765000000.123456, rnd.random() * 2e9]),
            log_id=rnd.choice(["", new_log_id()]), account_id=rnd.choice(["", "acct"]),
            service_id=rnd.choice(["", "svc"]),
            host=rnd.choice(["h.example", "h.example:8443", "[fd00::1]:80", " x ", "h" * 300]),
            path=rnd.choice(["", "/", "/p/q"]), method=rnd.choice(["GET", "POST"]),
            response_code=rnd.choice([0, 200, 401, 403, 502]), duration_ms=rnd.randint(0, 3),
            source_ip=rnd.choice(["100.64.0.10", ""]),
            auth_mechanism=rnd.choice(["", "oidc", "token", "password"]),
            user_id=rnd.choice(["", "u1"]), bytes_upload=rnd.choice([0, 5]),
            bytes_download=rnd.choice([0, 700]),
            target=rnd.choice(["", "http://10.0.0.1:80"]))
        fields = tuple(kw[name] for name in HTTP_FIELDS)
        got, want = entry_from_fields(fields), build_entry(**kw)
        assert got == want, kw
        assert (got.SerializeToString(deterministic=True)
                == want.SerializeToString(deterministic=True)), kw
    assert 0 < len(accesslog._TEMPLATES) <= accesslog._TEMPLATES_MAX
    # long client-chosen hosts are never kept
    assert all(len(key[2]) <= accesslog._TEMPLATE_MAX_LEN for key in accesslog._TEMPLATES)


def test_entry_templates_are_bounded():
    from nbgateway.observe import accesslog
    from nbgateway.observe.accesslog import entry_from_fields

    accesslog._TEMPLATES.clear()
    for i in range(accesslog._TEMPLATES_MAX + 10):
        entry = entry_from_fields((1.0, "id", "a", "s", f"h{i}.example", "/", "GET", 200, 0,
                                   "100.64.0.1", "", "", 0, 0, ""))
        assert entry.host == f"h{i}.example"
    assert len(accesslog._TEMPLATES) <= accesslog._TEMPLATES_MAX


def test_log_ids_made_ahead_are_distinct_across_refills():
    from nbgateway.observe import accesslog

    accesslog._IDS.clear()
    ids = [new_log_id() for _ in range(accesslog._IDS_AHEAD * 3 + 7)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-v]{20}", i) for i in ids)
    assert len(accesslog._IDS) < accesslog._IDS_AHEAD


def test_templates_are_not_per_client_address_or_user():
    """The client's address and the user are set per entry, not part of the
    template key: requests of many clients and users to one service share one
    template, and each entry still carries its own client's address and user
    (a hit never keeps those of the request that made the template)."""
    from nbgateway.observe import accesslog
    from nbgateway.observe.accesslog import HTTP_FIELDS, entry_from_fields

    accesslog._TEMPLATES.clear()
    rnd = random.Random(22)
    addresses = ([f"198.51.100.{i}" for i in range(1, 200)]
                 + [f"2001:db8::{i:x}" for i in range(1, 200)] + [""])
    for i in range(3 * accesslog._TEMPLATES_MAX):
        kw = dict(now=1765000000.0 + i / 7, log_id=new_log_id(), account_id="acct",
                  service_id="svc", host="h.example", path=f"/p/{i}", method="GET",
                  response_code=rnd.choice([200, 403]), duration_ms=i % 5,
                  source_ip=rnd.choice(addresses), auth_mechanism="oidc",
                  user_id=rnd.choice(["", f"user-{rnd.randrange(5000)}"]),
                  bytes_upload=0, bytes_download=i, target="http://10.0.0.1:80")
        fields = tuple(kw[name] for name in HTTP_FIELDS)
        got = entry_from_fields(fields)
        assert got == build_entry(**kw), kw
        assert got.source_ip == kw["source_ip"] and got.user_id == kw["user_id"]
    # one template per (account, service, host, auth, target): codes are set per entry
    assert len(accesslog._TEMPLATES) == 1
    assert all(not t.source_ip and not t.user_id for t in accesslog._TEMPLATES.values())


def test_edge_values_build_the_same_entry_or_fail_the_same_way():
    """Template hits and first uses alike: edge values give build_entry's
    message, and values protobuf refuses raise as build_entry raises (the
    shipper then drops the entry, counted)."""
    from nbgateway.observe import accesslog
    from nbgateway.observe.accesslog import HTTP_FIELDS, entry_from_fields

    base = dict(now=1765000000.5, log_id="id", account_id="a", service_id="s",
                host="h.example", path="/", method="GET", response_code=200, duration_ms=1,
                source_ip="100.64.0.10", auth_mechanism="", user_id="", bytes_upload=0,
                bytes_download=0, target="")
    ok = [{}, {"path": "/ünï/😀/%00"}, {"path": ""}, {"log_id": ""}, {"source_ip": ""},
          {"source_ip": "fd00::1"}, {"source_ip": "2001:db8::ffff:1.2.3.4"},
          {"duration_ms": -5}, {"duration_ms": 0}, {"bytes_upload": (1 << 63) - 1},
          {"bytes_download": -(1 << 63)}, {"now": 0.0}, {"now": -1.25}, {"now": 4.2e9},
          {"response_code": 0}, {"response_code": 401}, {"response_code": -1},
          {"method": ""}, {"method": "PATCH"}, {"method": b"GET"},
          {"auth_mechanism": "oidc", "user_id": ""}, {"auth_mechanism": "token",
                                                     "user_id": "token:t"}]
    ok.append({"source_ip": b"1.2.3.4"})  # protobuf takes UTF-8 bytes for a string
    bad = [{"bytes_upload": 1 << 63}, {"duration_ms": 1.5}, {"source_ip": b"\xff"},
           {"path": "/\udcff"}, {"now": float("nan")}, {"response_code": 200.0},
           {"response_code": "200"}, {"response_code": True}, {"method": 1}]
    for _ in range(2):  # first uses, then template hits
        for change in ok:
            kw = {**base, **change}
            got = entry_from_fields(tuple(kw[name] for name in HTTP_FIELDS))
            want = build_entry(**kw)
            assert got == want, change
            assert got.SerializeToString(deterministic=True) == want.SerializeToString(
                deterministic=True), change
        for change in bad:
            kw = {**base, **change}
            try:
                build_entry(**kw)
            except Exception as exc:
                expected: type[BaseException] = type(exc)
            else:
                raise AssertionError(f"build_entry took {change}")
            try:
                entry_from_fields(tuple(kw[name] for name in HTTP_FIELDS))
            except Exception as exc:
                assert isinstance(exc, expected), (change, exc)
            else:
                raise AssertionError(f"entry_from_fields took {change}")
    assert len(accesslog._TEMPLATES) <= accesslog._TEMPLATES_MAX


def test_templates_are_per_service_not_per_method_or_code():
    """Methods and status codes are set per entry when not the template's GET
    and 200: many services' requests with every method and code keep one
    template per service (a few dozen services no longer fill the cache), and
    each entry is build_entry's, auth_success included."""
    from nbgateway.observe import accesslog
    from nbgateway.observe.accesslog import HTTP_FIELDS, entry_from_fields

    accesslog._TEMPLATES.clear()
    rnd = random.Random(23)
    for i in range(4000):
        svc = rnd.randrange(300)
        kw = dict(now=1765000000.0 + i / 3, log_id=new_log_id(), account_id=f"a{svc % 7}",
                  service_id=f"s{svc}", host=f"s{svc}.example", path="/x",
                  method=rnd.choice(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
                  response_code=rnd.choice([0, 200, 204, 301, 304, 400, 401, 403, 404, 502]),
                  duration_ms=3, source_ip="100.64.0.9", auth_mechanism="", user_id="",
                  bytes_upload=0, bytes_download=10, target=f"http://10.0.{svc // 250}.1:80")
        got = entry_from_fields(tuple(kw[name] for name in HTTP_FIELDS))
        want = build_entry(**kw)
        assert got == want, kw
        assert got.auth_success == (kw["response_code"] not in (401, 403))
    assert len(accesslog._TEMPLATES) == 300
    assert all(t.method == "GET" and t.response_code == 200 and t.auth_success
               for t in accesslog._TEMPLATES.values())
