"""A client's SETTINGS_HEADER_TABLE_SIZE is the size h2 hands the response
HPACK encoder.  Uncapped, a client announcing 2^32-1 made every response
field with a new value (etag, set-cookie, location, date, any upstream
header) a table entry never evicted: the connection's memory grew with
every response (~9.7 MB after 20,000 responses of 2 new fields).  RFC 7541
4.2 lets the encoder use any size up to the peer's maximum: the gateway's
uses at most 4,096 bytes, and the client decodes every response."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from nbgateway.proxy.h2trailers import TrailersH2Connection


class _Unique(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"etag", b'"%s"' % request.path)
        request.setHeader(b"set-cookie", b"s=%s; Path=/" % request.path[1:])
        return b"ok"


def test_client_table_size_does_not_grow_the_encoder_table() -> None:
    clock = Clock()
    conn = TrailersH2Connection(clock)
    site = server.Site(_Unique())
    conn.site, conn.requestFactory, conn.factory = site, site.requestFactory, site
    transport = StringTransport()
    conn.makeConnection(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 2 ** 32 - 1})
    conn.dataReceived(client.data_to_send())
    clock.advance(0)
    client.receive_data(transport.value())
    transport.clear()
    conn.dataReceived(client.data_to_send())  # the SETTINGS ACK
    statuses = 0
    for i in range(600):
        sid = 1 + 2 * i
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                  (b":authority", b"a.example"), (b":path", b"/%d" % i)],
                            end_stream=True)
        conn.dataReceived(client.data_to_send())
        clock.advance(0)
        for event in client.receive_data(transport.value()):
            if isinstance(event, h2.events.ResponseReceived):
                statuses += 1
                assert (b"etag", b'"/%d"' % i) in event.headers
        transport.clear()
    assert statuses == 600
    table = conn.conn.encoder.header_table
    assert table.maxsize <= 4096
    assert table._current_size <= 4096 and len(table.dynamic_entries) <= 4096 // 32
