"""Which certificate a listener presents for a name (issue 11.6): a private
name's certificate only on its own account's tunnel listener, another
account's names never on a tunnel listener; elsewhere the default
certificate, which names no service.  Real OpenSSL handshakes in memory."""

from __future__ import annotations

from contextlib import suppress
from types import SimpleNamespace

from cryptography import x509
from OpenSSL import SSL

from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import SNIServerCreator, sni_visibility

from ._certs import write_pair

CLUSTER = "cluster.example"
ENTRIES = {
    "app.cluster.example": SimpleNamespace(private=True, account_id="A"),
    "www.cluster.example": SimpleNamespace(private=False, account_id="A"),
    "b.cluster.example": SimpleNamespace(private=True, account_id="B"),
}


def _names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def _handshake(creator: SNIServerCreator, sni: str | None) -> set[str]:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client = SSL.Connection(ctx, None)
    if sni:
        client.set_tlsext_host_name(sni.encode())
    client.set_connect_state()
    server = creator.serverConnectionForTLS(None)
    server.set_accept_state()
    for _ in range(20):
        for a, b in ((client, server), (server, client)):
            with suppress(SSL.WantReadError):
                a.do_handshake()
            with suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65536))
    return _names(client.get_peer_certificate().to_cryptography())


def _creator(tmp: str, listener: str | None, cert_dir: str | None = None) -> SNIServerCreator:
    store = CertificateStore(cert_dir, None, tmp, default_name=CLUSTER,
                             serves=lambda n: n in ENTRIES or n == CLUSTER)
    base = SNIServerCreator(store, CLUSTER, visible=sni_visibility(ENTRIES.get))
    return base.for_listener(listener)


def test_public_listener_hides_private_names(tmp_path):
    public = _creator(str(tmp_path), None)
    assert _handshake(public, "app.cluster.example") == {CLUSTER}
    assert _handshake(public, "APP.cluster.example.") == {CLUSTER}
    assert _handshake(public, "www.cluster.example") == {"www.cluster.example"}
    assert _handshake(public, None) == {CLUSTER}
    assert public.sni_hidden == 2


def test_tunnel_listener_serves_only_its_own_accounts_names(tmp_path):
    tunnel_a = _creator(str(tmp_path), "A")
    tunnel_b = _creator(str(tmp_path), "B")
    assert _handshake(tunnel_a, "app.cluster.example") == {"app.cluster.example"}
    assert _handshake(tunnel_b, "app.cluster.example") == {CLUSTER}
    assert _handshake(tunnel_b, "www.cluster.example") == {CLUSTER}
    assert _handshake(tunnel_b, "b.cluster.example") == {"b.cluster.example"}


def test_static_certificates_of_private_names_are_hidden_too(tmp_path):
    from nbgateway.tls.certstore import LocalCA

    external = LocalCA(str(tmp_path / "ext"), "external CA")
    write_pair(external, str(tmp_path / "certs"), "app", "app.cluster.example")
    public = _creator(str(tmp_path / "data"), None, str(tmp_path / "certs"))
    tunnel_a = _creator(str(tmp_path / "data"), "A", str(tmp_path / "certs"))
    assert _handshake(public, "app.cluster.example") == {CLUSTER}
    assert _handshake(tunnel_a, "app.cluster.example") == {"app.cluster.example"}
