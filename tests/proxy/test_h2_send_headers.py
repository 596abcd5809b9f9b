"""The gateway's HTTP/2 streams send response, informational and trailer
blocks in one pass (h2trailers._CheckedStream.send_headers): the same frames
on the wire, the same stream state and the same errors at the same point as
before (``h2``'s send_headers steps around the gateway's one-pass
normalise/validate), for valid and refused blocks, str and HeaderTuple
input, blocks needing CONTINUATION frames and closed streams; and for valid
blocks the same bytes as plain ``h2`` (which, unlike the gateway, puts the
fields of a block it then refuses into its HPACK table)."""

from __future__ import annotations

import random
from typing import Any

import h2.config
import h2.connection
import h2.stream
import pytest
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple

from nbgateway.proxy.h2trailers import _CheckedStream, _TrailingH2State

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.example"),
           (b":path", b"/")]
OK = [(b":status", b"200"), (b"Content-Type", b"text/html"), (b"ETag", b' "1" '),
      (b"Server", b"nginx"), (b"Connection", b"keep-alive"), (b"Set-Cookie", b"a=1")]
TRAILERS = [(b"grpc-status", b"0"), (b"Grpc-Message", b" ok ")]
SCENARIOS: list[list[Any]] = [
    [(OK, False), (TRAILERS, True)],
    [(OK, True)],
    [([(b":status", b"100")], False), ([(b":status", b"103"), (b"link", b"</a>")], False),
     (OK, True)],
    [([(b":status", b"103")], True)],  # informational with END_STREAM
    [(OK, False), (TRAILERS, False)],  # trailers without END_STREAM
    [(OK, False), (OK, False)],  # a second response
    [([(b":status", b"200"), (b"te", b"gzip")], False), (OK, True)],
    [([(b"x", b"1"), (b":status", b"200")], False)],
    [([(b":status", b"200"), (b":path", b"/")], False)],
    [([(b":status", b"200"), (b":method", b"GET")], False)],
    [([(b":status", b"200"), (b":status", b"204")], False)],
    [([(b":status", b"200"), (b"", b"")], False)],
    [([(b"content-type", b"x")], False)],
    [([], True)],
    [(OK, False), ([(b":status", b"200")], True)],  # pseudo-header in trailers
    [([(":status", "200"), ("Content-Type", "text/plain; charset=\u00fc")], True)],
    [([HeaderTuple(b":status", b"200"), NeverIndexedHeaderTuple(b"x-secret", b"s"),
       HeaderTuple(b"Authorization", b"b"), (b"cookie", b"short=1")], True)],
    [([(b":status", b"200"), (b"x-big", b"v" * 40000), (b"x-b2", b"w" * 30000)], True)],
    [("reset", None), (OK, False)],
    [("reset", None), ([(b":status", b"200"), (b"te", b"gzip")], False)],
    [(OK, False), ("reset", None), (TRAILERS, True)],
]


class _BeforeStream(_CheckedStream):
    """The gateway's stream as it was: h2's send_headers steps."""

    send_headers = h2.stream.H2Stream.send_headers


class _BeforeState(_TrailingH2State):
    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _BeforeStream
        return stream


def _config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(client_side=False, header_encoding=None)


def _servers() -> tuple[Any, Any]:
    return _TrailingH2State(_config()), _BeforeState(_config())


def _refused(steps: list[Any]) -> bool:
    return any(isinstance(r, tuple) for r in _run(_BeforeState(_config()), steps)[1::3])


def _run(server: Any, steps: list[Any]) -> list[Any]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    out: list[Any] = [server.data_to_send()]
    for headers, end_stream in steps:
        if headers == "reset":
            client.reset_stream(1)
            server.receive_data(client.data_to_send())
            continue
        try:
            server.send_headers(1, headers, end_stream=end_stream)
            out.append("sent")
        except Exception as exc:
            out.append((type(exc), str(exc)))
        out.append(server.data_to_send())
        stream = server.streams.get(1)
        out.append(None if stream is None else (stream.state_machine.state,
                                                stream.request_method))
    return out


@pytest.mark.parametrize("steps", SCENARIOS)
def test_same_frames_state_and_errors_as_h2(steps: list[Any]) -> None:
    ours, before = _servers()
    got = _run(ours, steps)
    assert got == _run(before, steps)
    if 1 in ours.streams:
        assert type(ours.streams[1]) is _CheckedStream
    if not _refused(steps):
        assert got == _run(h2.connection.H2Connection(_config()), steps)


def test_random_sequences_as_h2() -> None:
    """Many streams on one connection (HPACK state carried across)."""
    rng = random.Random(5)
    blocks = [block for steps in SCENARIOS for block, _ in steps if block != "reset"]
    ours, theirs = _servers()
    for server in (ours, theirs):
        server.initiate_connection()
        server.data_to_send()
    client_a, client_b = (h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None)) for _ in range(2))
    for client in (client_a, client_b):
        client.initiate_connection()
    for sid in range(1, 180, 2):  # 90 streams, all left open
        picks = [(rng.choice(blocks), rng.random() < 0.4) for _ in range(rng.randrange(1, 4))]
        results = []
        for server, client in ((ours, client_a), (theirs, client_b)):
            client.send_headers(sid, REQUEST, end_stream=True)
            server.receive_data(client.data_to_send())
            got = []
            for headers, end_stream in picks:
                try:
                    server.send_headers(sid, headers, end_stream=end_stream)
                    got.append("sent")
                except Exception as exc:
                    got.append((type(exc), str(exc)))
            got.append(server.data_to_send())
            results.append(got)
        assert results[0] == results[1], sid


def test_valid_blocks_take_the_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = h2.stream.H2Stream.send_headers

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.config.client_side:
            calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h2.stream.H2Stream, "send_headers", counted)
    ours, _ = _servers()
    _run(ours, [(OK, False), (TRAILERS, True)])
    assert calls == []
    _run(_servers()[0], [([(b":status", b"200"), (b"te", b"gzip")], False)])
    assert calls == [1]  # a refused block: h2's own steps
