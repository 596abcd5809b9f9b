"""Per-account local CAs on a real GatewayService (mapping store -> routes,
CA constraints, certificate store, SNI creator, status reports), in-memory
OpenSSL handshakes:

* a gateway upgraded from one shared CA: the old ``ca.crt`` (every account's
  names in its constraints) is in no account's leaf chain, is narrowed to the
  default name (same key) so the default certificate shows no account's
  names, and every service's status report carries its account's new CA;
* an account whose names all have file (or ACME) certificates gets no CA;
  names mapped before an account's CA exists are all in it when it is made;
* an account leaving the gateway drops its CA from memory and keeps its
  directory: re-added, it gets the same CA key back;
* only the most recently used account CAs stay loaded: an evicted one is
  reloaded (same key) with the names mapped meanwhile.
"""

from __future__ import annotations

import datetime
import os
from contextlib import suppress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.config import load
from nbgateway.management.store._certificates import parse_ca
from nbgateway.mgmt.certreport import certificate_status
from nbgateway.mgmt.fake import FakeManagementClient
from nbgateway.service import GatewayService
from nbgateway.tls.ca import constraints_of
from nbgateway.tls.certstore import LocalCA

CLUSTER = "gw.accountcas.test"
A_PRIVATE = "payroll.a-corp.test"
A_WIKI = "wiki.a-corp.test"
B_PUBLIC = "www.b-corp.test"
C_FILE = "shop.c-corp.test"


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


def _gateway(datadir: str, cert_dir: str = "") -> GatewayService:
    flags = {"mgmt": "http://127.0.0.1:1", "domain": CLUSTER, "wg_port": "0",
             "datadir": datadir, "health_addr": "", "addr": "127.0.0.1:0", "private": True}
    if cert_dir:
        flags["cert_dir"] = cert_dir
    config = load(flags, {"NB_PROXY_TOKEN": "t"})
    svc = GatewayService(config, reactor=reactor, management=FakeManagementClient(),
                         peer_channel_factory=_Channel)
    svc.store.stream_started()
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


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _reported_ca(svc: GatewayService, service_id: str) -> str:
    """The CA PEM a status report of the service carries to management."""
    return certificate_status(svc._certificate_status(service_id)).ca_certificate_pem


def _account_dirs(datadir: str) -> list[str]:
    root = os.path.join(datadir, "account-cas")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def test_an_upgraded_gateways_old_shared_ca_is_in_no_chain_and_names_no_account(tmp_path):
    datadir = str(tmp_path / "data")
    old_names = [CLUSTER, A_PRIVATE, B_PUBLIC, "gone.c-corp.test"]
    old = LocalCA(datadir, permitted=old_names)  # what the gateway had before
    old_spki, old_key_id = _spki(old.cert), parse_ca(old.cert_pem().decode())[0]
    gw = _gateway(datadir)
    gw.store.apply_batch([_mapping("a1", "A", A_PRIVATE, private=True),
                          _mapping("b1", "B", B_PUBLIC)], True)
    public = gw.tls_creator.for_listener(None)
    for listener, sni, account, names in (
            (public, B_PUBLIC, "B", {B_PUBLIC}),
            (gw.tls_creator.for_listener("A"), A_PRIVATE, "A", {A_PRIVATE}),
            (gw.tls_creator.for_listener("B"), B_PUBLIC, "B", {B_PUBLIC})):
        chain = _chain(listener, sni)
        assert len(chain) == 2 and _spki(chain[1]) != old_spki, (sni, chain)
        assert constraints_of(chain[1]) == names
        # the CA management gets for the account is the one in the chain
        service = "a1" if account == "A" else "b1"
        reported = _reported_ca(gw, service)
        assert x509.load_pem_x509_certificate(reported.encode()) == chain[1]
        assert parse_ca(reported)[0] != old_key_id  # a new row for the account
    # the default certificate (no SNI, unserved names): the old CA narrowed to
    # the default name, same key, so it shows no account's names
    for sni in (None, A_PRIVATE + ".unknown.test"):
        default = _chain(public, sni)
        assert _spki(default[1]) == old_spki and constraints_of(default[1]) == {CLUSTER}
    with open(os.path.join(datadir, "ca.crt"), "rb") as f:
        assert constraints_of(x509.load_pem_x509_certificate(f.read())) == {CLUSTER}
    # a restart loads the narrowed CA as it is
    again = _gateway(datadir)
    assert again.certificates.ca.fingerprint() == gw.certificates.ca.fingerprint()


def _file_cert(cert_dir: str, name: str) -> None:
    """A self-signed certificate for ``name`` in the gateway's --cert-dir."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    os.makedirs(cert_dir, exist_ok=True)
    with open(os.path.join(cert_dir, name + ".crt"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(cert_dir, name + ".key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def test_an_account_gets_a_ca_only_when_a_name_of_it_needs_one(tmp_path):
    datadir, cert_dir = str(tmp_path / "data"), str(tmp_path / "certs")
    _file_cert(cert_dir, C_FILE)
    gw = _gateway(datadir, cert_dir)
    gw.store.apply_batch([_mapping("c1", "C", C_FILE),
                          _mapping("a1", "A", A_PRIVATE, private=True),
                          _mapping("a2", "A", A_WIKI, private=True)], True)
    certs = gw.certificates
    # mapped names alone make no CA
    assert not certs._account_cas
    assert certs.made_ca("A") is None and certs.made_ca("C") is None
    assert _account_dirs(datadir) == []
    # C's only name has a file certificate: served and reported without a CA
    leaf = _chain(gw.tls_creator.for_listener(None), C_FILE)[0]
    assert leaf.subject.rfc4514_string() == f"CN={C_FILE}"
    status = certificate_status(gw._certificate_status("c1"))
    assert status.source == "file" and status.ca_certificate_pem == ""
    assert certs.made_ca("C") is None
    # A's first report makes A's CA, with every name mapped for A so far
    pem = _reported_ca(gw, "a1")
    assert constraints_of(x509.load_pem_x509_certificate(pem.encode())) == {A_PRIVATE, A_WIKI}
    assert certs.made_ca("A") is not None and len(_account_dirs(datadir)) == 1
    assert _reported_ca(gw, "a2") == pem
    assert certs.made_ca("C") is None and len(_account_dirs(datadir)) == 1


def test_an_account_leaving_drops_its_ca_and_gets_the_same_key_back(tmp_path):
    datadir = str(tmp_path / "data")
    gw = _gateway(datadir)
    gw.store.apply_batch([_mapping("a1", "A", A_PRIVATE, private=True),
                          _mapping("b1", "B", B_PUBLIC)], True)
    certs = gw.certificates
    first = _chain(gw.tls_creator.for_listener("A"), A_PRIVATE)[1]
    b_leaf = _chain(gw.tls_creator.for_listener(None), B_PUBLIC)[0]
    assert set(certs._account_cas) == {"A", "B"}
    gw.store.apply_batch([_mapping("a1", "A", A_PRIVATE, kind=pb.UPDATE_TYPE_REMOVED)],
                         False)
    assert gw.routes.lookup(A_PRIVATE) is None
    assert set(certs._account_cas) == {"B"} and "A" not in certs._pending
    assert not [ck for ck in certs._fallback.values() if ck.account == "A"]
    assert len(_account_dirs(datadir)) == 2  # kept on disk
    # B is untouched: its cached leaf is served as before
    assert _chain(gw.tls_creator.for_listener(None), B_PUBLIC)[0] == b_leaf
    # re-added: the same key (peers keep trusting it), constraints as before
    gw.store.apply_batch([_mapping("a3", "A", A_WIKI, private=True)], False)
    again = x509.load_pem_x509_certificate(_reported_ca(gw, "a3").encode())
    assert _spki(again) == _spki(first)
    assert constraints_of(again) == {A_PRIVATE, A_WIKI}
    assert _spki(_chain(gw.tls_creator.for_listener("A"), A_WIKI)[1]) == _spki(first)


def test_an_evicted_account_ca_is_reloaded_with_the_names_mapped_meanwhile(tmp_path):
    gw = _gateway(str(tmp_path / "data"))
    certs = gw.certificates
    certs.account_ca_cache_size = 1
    gw.store.apply_batch([_mapping("a1", "A", A_PRIVATE, private=True),
                          _mapping("b1", "B", B_PUBLIC)], True)
    a_first = x509.load_pem_x509_certificate(_reported_ca(gw, "a1").encode())
    _reported_ca(gw, "b1")
    assert list(certs._account_cas) == ["B"]  # A's evicted
    gw.store.apply_batch([_mapping("a2", "A", A_WIKI, private=True)], False)
    assert list(certs._account_cas) == ["B"] and certs._pending["A"] == {A_WIKI}
    chain = _chain(gw.tls_creator.for_listener("A"), A_WIKI)
    assert _spki(chain[1]) == _spki(a_first) and constraints_of(chain[1]) == {A_PRIVATE, A_WIKI}
    assert x509.load_pem_x509_certificate(_reported_ca(gw, "a2").encode()) == chain[1]
    assert list(certs._account_cas) == ["A"] and "A" not in certs._pending


@pytest.mark.parametrize("names", [[], ["localhost"]])
def test_restrict_never_leaves_an_unconstrained_ca(tmp_path, names):
    ca = LocalCA(str(tmp_path), permitted=["a.test", "b.test"])
    before = ca.fingerprint()
    assert not ca.restrict(names)  # nothing of it permitted: no change
    assert ca.fingerprint() == before and ca.permitted == {"a.test", "b.test"}
    assert ca.restrict(["a.test", "c.test"])
    assert constraints_of(ca.cert) == {"a.test"} and not ca.covers("b.test")
