"""``bench/gateway.py --floor``: the gateway's packet path under a minimal HTTP layer.

Loaded by every Python process of the benchmark (its directory is put on
``PYTHONPATH``); it acts only in a ``twistd ... nbgateway`` process started
with ``NBGW_BENCH_FLOOR=1``.  There, plain-text connections accepted on the
tunnel listeners are served by the smallest Twisted + httptools reverse proxy
(``bench/_ceiling_proxy.py``: identity header stamped, no routing, auth,
timeouts or access log) to the benchmark's upstream, 127.0.0.1:8081, instead
of the gateway's HTTP layer.  Everything below it -- the UDP port, WireGuard,
the netstack and its Twisted transports -- is the gateway's own, unchanged.
What that serves is the most any HTTP layer written in Python could get from
the gateway's packet path.  Never loaded outside the benchmark.
"""

import os
import sys

if os.environ.get("NBGW_BENCH_FLOOR") == "1" and "nbgateway" in sys.argv:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import _ceiling_proxy

    from nbgateway.tls import dispatch

    _factory = _ceiling_proxy.ClientFactory("http", ("127.0.0.1", 8081))
    _sniffed = dispatch._Sniffer.dataReceived

    def _dataReceived(self, data: bytes) -> None:
        if self.inner is None and data and data[0] != dispatch.TLS_HANDSHAKE:
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
            self.inner = _factory.buildProtocol(self.addr)
            self.inner.makeConnection(self.transport)
        _sniffed(self, data)

    dispatch._Sniffer.dataReceived = _dataReceived
