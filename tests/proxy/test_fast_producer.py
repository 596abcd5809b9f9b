"""FastRequest registers a streaming producer with its channel inline (the
body of twisted's HTTPChannel.registerProducer/unregisterProducer): the same
channel state, and the channel's backpressure reaches the producer."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel

from nbgateway.proxy.fast import FastHTTPChannel
from nbgateway.proxy.fast_request import FastRequest
from nbgateway.proxy.headers import headers_from_raw


class _Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def test_the_fast_channel_keeps_twisteds_producer_registration() -> None:
    # FastRequest inlines these two: an override would be bypassed
    assert FastHTTPChannel.registerProducer is HTTPChannel.registerProducer
    assert FastHTTPChannel.unregisterProducer is HTTPChannel.unregisterProducer


def _request() -> tuple[FastRequest, FastHTTPChannel]:
    channel = FastHTTPChannel()
    channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 1)))
    req = FastRequest(channel, b"GET", b"/", headers_from_raw({}), False)
    return req, channel


def test_a_push_producer_is_the_channels_request_producer_until_unregistered() -> None:
    req, channel = _request()
    producer = _Producer()
    req.registerProducer(producer, True)
    assert channel._requestProducer is producer
    assert channel._requestProducerStreaming is True
    channel.pauseProducing()  # the client's transport is full
    assert producer.calls == ["pause"]
    with pytest.raises(ValueError):
        req.registerProducer(_Producer(), True)
    req.unregisterProducer()
    assert channel._requestProducer is None
    assert channel._requestProducerStreaming is None
    assert req.producer is None


def test_a_second_producer_on_the_channel_is_refused_as_twisted_does() -> None:
    req, channel = _request()
    channel.registerProducer(_Producer(), True)
    with pytest.raises(RuntimeError):
        req.registerProducer(_Producer(), True)
