"""Review of e41cced: ``_CheckedStream.send_headers`` reads the block once in
its own pass and, when that pass refuses it, hands the *same* object to h2's
steps.  A block given as an iterator (h2's ``send_headers`` takes any
iterable) is then half consumed: h2's steps see only the fields after the
refused one.  Trailers ``te: gzip, grpc-status: 0`` are refused by h2 (and
were by the gateway before e41cced); now ``grpc-status: 0`` alone is sent as
the stream's trailers.  Every caller in the tree passes a list today
(Twisted's writeHeaders, the gateway's end_stream), so this is latent."""

from __future__ import annotations

from typing import Any

from nbgateway.proxy.h2trailers import _TrailingH2State
from tests.proxy.test_h2_send_headers import OK, _BeforeState, _config, _run


def _steps() -> list[Any]:
    return [(iter(OK), False), (iter([(b"te", b"gzip"), (b"grpc-status", b"0")]), True)]


def test_a_refused_block_given_as_an_iterator_is_refused_as_h2_does() -> None:
    before = _run(_BeforeState(_config()), _steps())
    assert isinstance(before[4], tuple)  # h2: ProtocolError, nothing sent
    assert _run(_TrailingH2State(_config()), _steps()) == before
