"""Review 16: the local CA of a gateway that serves several accounts.

Every account's peers are told to trust the CA the gateway reports for the
account (``GET /api/reverse-proxies/ca-certificate``, the wg-quick config
block, "import it into the system or browser trust store once"), and the CA
is presented in the chain of every local-CA leaf on the public listener.
On a shared gateway that CA was one for all accounts:

* its NameConstraints list every mapped domain of every account, private
  ones included, so another account (any of its users) and any anonymous TLS
  client learn an account's private service names (what issue 11.6's SNI
  visibility hides);
* the CA one account is told to trust signs the names another account chose
  (any custom domain that no other account holds, validated or not);
* the name set is shared and never shrinks: one account that maps and
  removes services one at a time grows the CA past what a status report
  carries (16 KiB PEM), and every account stops receiving the CA that
  covers its new private names.

Real GatewayService wiring (mapping store -> routes, CA constraints,
certificate store, SNI creator, status report), in-memory OpenSSL handshakes.
"""

from __future__ import annotations

from contextlib import suppress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import reactor

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.config import load
from nbgateway.management.store._certificates import parse_ca
from nbgateway.mgmt.certreport import certificate_status
from nbgateway.mgmt.fake import FakeManagementClient
from nbgateway.service import GatewayService
from nbgateway.tls.ca import constraints_of, within

CLUSTER = "gw.review16.test"
A_PRIVATE = "payroll.a-corp.test"
B_PUBLIC = "www.b-corp.test"


class _Channel:
    def __init__(self, account_id, private_key, on_map):
        pass

    def start(self):
        pass

    def stop(self):
        pass


def _mapping(sid: str, account: str, domain: str, *, private: bool = False,
             kind: int = pb.UPDATE_TYPE_CREATED) -> pb.ProxyMapping:
    return pb.ProxyMapping(type=kind, id=sid, account_id=account, domain=domain,
                           private=private, auth_token="tok",
                           path=[pb.PathMapping(path="/", target="http://10.0.0.5:80/")])


@pytest.fixture
def gateway(tmp_path):
    config = load({"mgmt": "http://127.0.0.1:1", "domain": CLUSTER, "wg_port": "0",
                   "datadir": str(tmp_path / "data"), "health_addr": "",
                   "addr": "127.0.0.1:0", "private": True}, {"NB_PROXY_TOKEN": "t"})
    svc = GatewayService(config, reactor=reactor, management=FakeManagementClient(),
                         peer_channel_factory=_Channel)
    svc.store.stream_started()
    svc.store.apply_batch([_mapping("a1", "A", A_PRIVATE, private=True),
                           _mapping("b1", "B", B_PUBLIC)], True)
    return svc


def _chain(creator, sni: str | None) -> list[x509.Certificate]:
    """The certificates a TLS client receives (leaf first)."""
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
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
    return [c.to_cryptography() for c in client.get_peer_cert_chain()]


def _reported_ca(svc: GatewayService, service_id: str) -> str:
    """The CA PEM a status report of the service carries to management (what
    management stores for the service's account and hands to its users)."""
    return certificate_status(svc._certificate_status(service_id)).ca_certificate_pem


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_no_certificate_or_ca_shown_to_others_names_an_accounts_private_service(gateway):
    public = gateway.tls_creator.for_listener(None)
    tunnel_b = gateway.tls_creator.for_listener("B")
    for listener, sni in ((public, B_PUBLIC), (public, A_PRIVATE), (public, None),
                          (tunnel_b, B_PUBLIC)):
        naming = [c.subject.rfc4514_string() for c in _chain(listener, sni)
                  if A_PRIVATE.encode() in _der(c)]
        assert not naming, (listener.listener_account, sni, naming)
    # what account B's users download from management
    pem = _reported_ca(gateway, "b1")
    assert pem
    assert A_PRIVATE.encode() not in _der(x509.load_pem_x509_certificate(pem.encode()))


def test_the_ca_one_account_trusts_does_not_vouch_for_another_accounts_names(gateway):
    leaf = _chain(gateway.tls_creator.for_listener(None), B_PUBLIC)[0]
    assert B_PUBLIC in leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    trusted_by_a = _reported_ca(gateway, "a1")
    assert trusted_by_a
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(
        x509.load_pem_x509_certificate(trusted_by_a.encode())))
    ctx = crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf))
    with pytest.raises(crypto.X509StoreContextError):
        ctx.verify_certificate()  # A's peers must not accept B's (B-chosen) name


def test_one_account_cycling_services_does_not_stop_others_getting_their_ca(gateway):
    """Account B never holds more than one extra service at a time (any
    per-account quota allows that): it maps one, then removes it, 600 times.
    Account A then maps a new private service: the status report for it must
    still carry a CA (management accepts it) that covers A's new name."""
    for i in range(600):
        m = _mapping(f"b-tmp{i}", "B", f"host{i}.b-corp.test")
        gateway.store.apply_batch([m], False)
        gateway.store.apply_batch([_mapping(f"b-tmp{i}", "B", m.domain,
                                            kind=pb.UPDATE_TYPE_REMOVED)], False)
    new_a = "ledger.a-corp.test"
    gateway.store.apply_batch([_mapping("a2", "A", new_a, private=True)], False)
    pem = _reported_ca(gateway, "a2")
    assert pem, "the report carries no CA: A's peers keep a CA without its new name"
    _key_id, _fp, ca = parse_ca(pem)  # what management stores for the account
    assert any(within(new_a, sub) for sub in constraints_of(ca))
