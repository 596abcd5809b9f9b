"""Arbitrary datagrams never raise out of the responder, and every reply it sends is a
well-formed DNS response for the query's id."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.names import dns

from nbgateway.dns.server import DEFAULT_UDP_PAYLOAD, DNSResponderFactory
from nbgateway.dns.zone import ZoneAuthority
from nbgateway.mgmt.netmap import DnsRecord, DnsZone

ZONE = DnsZone("netbird.test.", tuple(
    DnsRecord(f"h{i % 7}.netbird.test.", 1, 60, f"100.64.0.{i}") for i in range(1, 80)))


class Recorder:
    def __init__(self):
        self.sent = []

    def writeMessage(self, message, address=None):
        self.sent.append((message.toStr(), address))


def _query_bytes(ident, name, qtype, flags):
    m = dns.Message(id=ident)
    m.queries = [dns.Query(name, qtype)]
    data = bytearray(m.toStr())
    data[2:4] = struct.pack("!H", flags & 0x7FFF)  # never QR: a query
    return bytes(data)


names = st.sampled_from(["h1.netbird.test", "H3.NETBIRD.test", "netbird.test", "x.netbird.test",
                         "example.com", "a.b.h1.netbird.test", ""])


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.binary(max_size=600),
    st.builds(_query_bytes, st.integers(0, 0xFFFF), names,
              st.sampled_from([1, 28, 255, 6, 15, 99]), st.integers(0, 0xFFFF)),
))
def test_any_datagram_is_answered_well_formed_or_dropped(data):
    factory = DNSResponderFactory(ZoneAuthority([ZONE]), clock=Clock())
    proto = Recorder()
    factory._parse_and_dispatch(data, proto, ("100.64.0.10", 5353))
    assert factory.counters["error"] == 0
    for raw, addr in proto.sent:
        assert addr == ("100.64.0.10", 5353)
        assert len(raw) <= DEFAULT_UDP_PAYLOAD or raw[2] & 0x02 == 0
        reply = dns.Message()
        reply.fromStr(raw)
        assert reply.answer and reply.id == struct.unpack("!H", data[:2])[0]
        assert not reply.recAv


def test_other_opcodes_get_a_notimp_response_not_an_echo():
    factory = DNSResponderFactory(ZoneAuthority([ZONE]), clock=Clock())
    proto = Recorder()
    for opcode in (dns.OP_INVERSE, dns.OP_STATUS, dns.OP_NOTIFY, 7):
        m = dns.Message(id=opcode, opCode=opcode)
        m.queries = [dns.Query("h1.netbird.test")]
        factory._parse_and_dispatch(m.toStr(), proto, ("100.64.0.10", 53))
    replies = []
    for raw, _ in proto.sent:
        r = dns.Message()
        r.fromStr(raw)
        replies.append((r.id, r.answer, r.opCode, r.rCode, len(r.answers)))
    assert replies == [(op, 1, op, dns.ENOTIMP, 0)
                       for op in (dns.OP_INVERSE, dns.OP_STATUS, dns.OP_NOTIFY, 7)]
    assert factory.counters["notimp"] == 4
