"""The upstream TLS client (``skip_tls_verify``) sends SNI for a host name and
none for an IP literal (RFC 6066 3: "Literal IPv4 and IPv6 addresses are not
permitted in HostName")."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from nbgateway.tls.contexts import ClientTLSPolicy


def client_hello(hostname: str) -> bytes:
    conn = ClientTLSPolicy().creator(hostname, skip_verify=True).clientConnectionForTLS(None)
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)


def test_sni_for_a_name_none_for_an_ip_literal():
    assert b"upstream.example" in client_hello("upstream.example")
    for ip in ("192.0.2.7", "2001:db8::7"):
        hello = client_hello(ip)
        assert hello and ip.encode() not in hello
