"""tls-alpn-01 on the TLS listener: real OpenSSL handshakes in memory against
the SNI creator carrying a challenge responder."""

from __future__ import annotations

import hashlib
from contextlib import suppress

from cryptography import x509
from OpenSSL import SSL

from nbgateway.acme.challenges import ACME_IDENTIFIER_OID, ChallengeResponder
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import SNIServerCreator

NAME = "pub.example.test"


def _handshake(creator: SNIServerCreator, sni: str, alpn: list[bytes]):
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_tlsext_host_name(sni.encode())
    client.set_alpn_protos(alpn)
    client.set_connect_state()
    server = creator.serverConnectionForTLS(None)
    server.set_accept_state()
    for _ in range(20):
        for a, b in ((client, server), (server, client)):
            with suppress(SSL.WantReadError):
                a.do_handshake()
            with suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65536))
    return client.get_peer_certificate().to_cryptography(), client.get_alpn_proto_negotiated()


def _setup(tmp_path):
    store = CertificateStore(None, None, str(tmp_path), serves=lambda n: True)
    responder = ChallengeResponder()
    return SNIServerCreator(store, "gw.example.test", challenges=responder), responder


def _acme_id(cert: x509.Certificate):
    try:
        return cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        return None


def test_pending_challenge_answered_only_for_acme_tls_1(tmp_path):
    creator, responder = _setup(tmp_path)
    assert responder.add_tls_alpn01(NAME, "token.thumb")
    cert, proto = _handshake(creator, NAME, [b"acme-tls/1"])
    assert proto == b"acme-tls/1"
    ext = _acme_id(cert)
    assert ext is not None and ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()
    # an ordinary client for the same name meanwhile gets the normal certificate
    cert, proto = _handshake(creator, NAME, [b"http/1.1"])
    assert proto == b"http/1.1" and _acme_id(cert) is None
    assert "local CA" in cert.issuer.rfc4514_string()


def test_no_pending_challenge_no_challenge_certificate(tmp_path):
    creator, responder = _setup(tmp_path)
    responder.add_tls_alpn01("other.example.test", "t.k")
    cert, proto = _handshake(creator, NAME, [b"acme-tls/1"])
    assert proto == b"" and _acme_id(cert) is None
    responder.add_tls_alpn01(NAME, "t.k")
    responder.remove_tls_alpn01(NAME)
    cert, proto = _handshake(creator, NAME, [b"acme-tls/1"])
    assert proto == b"" and _acme_id(cert) is None


def test_tunnel_listeners_never_answer(tmp_path):
    creator, responder = _setup(tmp_path)
    responder.add_tls_alpn01(NAME, "t.k")
    cert, proto = _handshake(creator.for_listener("account-1"), NAME, [b"acme-tls/1"])
    assert proto == b"" and _acme_id(cert) is None
    cert, proto = _handshake(creator.for_listener(None), NAME, [b"acme-tls/1"])
    assert proto == b"acme-tls/1"


def test_responder_is_bounded(tmp_path):
    responder = ChallengeResponder(max_pending=1)
    assert responder.add_tls_alpn01("a.test", "x.y")
    assert not responder.add_tls_alpn01("b.test", "x.y")
    assert responder.add_http01("t1", "t1.k")
    assert not responder.add_http01("t2", "t2.k")
