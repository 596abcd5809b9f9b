"""Certificate status on status updates: CertificateStore.describe and the
CertificateReporting wrapper (nbgateway.mgmt.certreport)."""

from __future__ import annotations

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt.certreport import CertificateReporting
from nbgateway.tls.ca import constraints_of
from nbgateway.tls.certstore import CertificateStore, LocalCA

from ._certs import write_pair


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def send_status_update(self, service_id, account_id, status, **kw):
        self.calls.append((service_id, account_id, status, kw))

    other = "passed through"


def test_describe_local_ca_and_file(tmp_path):
    (tmp_path / "certs").mkdir()
    external = LocalCA(str(tmp_path / "ext"), "external test CA")
    write_pair(external, str(tmp_path / "certs"), "acme_pub.example", "pub.example")
    write_pair(external, str(tmp_path / "certs"), "static", "static.example")
    store = CertificateStore(str(tmp_path / "certs"), None, str(tmp_path / "data"),
                             default_name="proxy.example", serves=lambda n: True)
    store.permit(["app.proxy.example"])
    issued: list[str] = []
    store.on_issued = issued.append
    info = store.describe("app.proxy.example")
    # describing issues nothing: the local CA is the issuer, no leaf (no expiry) yet
    assert info["source"] == "local-ca" and info["on_demand"] is True
    assert info["issuer"] == "CN=nbgateway local CA"
    assert info["not_after"] is None
    assert info["ca_certificate_pem"] == store.ca.cert_pem()
    assert store.issued_for("app.proxy.example") is None and issued == []
    assert constraints_of(store.ca.cert) == {"proxy.example"}
    leaf = store.certificate_for("app.proxy.example")  # the first handshake's SNI
    assert issued == ["app.proxy.example"]
    info = store.describe("app.proxy.example")
    assert info["not_after"] == leaf.cert.not_valid_after_utc and "on_demand" not in info
    assert store.certificate_for("APP.proxy.example.") is leaf and len(issued) == 1
    assert store.describe("pub.example")["source"] == "acme"
    static = store.describe("static.example")
    assert static["source"] == "file" and static["issuer"] == "CN=external test CA"
    assert static["not_after"] == store.static_for("static.example").cert.not_valid_after_utc


def test_on_demand_status_has_no_expiry_on_the_wire():
    inner = Recorder()
    client = CertificateReporting(inner, lambda _sid: {
        "issuer": "CN=nbgateway local CA", "not_after": None, "source": "local-ca",
        "on_demand": True, "ca_certificate_pem": b"pem"})
    client.send_status_update("svc-1", "acct", pb.PROXY_STATUS_ACTIVE)
    cert = inner.calls[0][3]["certificate"]
    assert cert.source == "local-ca" and not cert.HasField("not_after")


def test_a_failing_issued_hook_never_fails_the_handshake(tmp_path):
    store = CertificateStore(None, None, str(tmp_path), default_name="gw.test",
                             serves=lambda n: True)

    def broken(_name):
        raise RuntimeError("boom")

    store.on_issued = broken
    assert store.certificate_for("app.gw.test").names == ("app.gw.test",)


def test_reporting_adds_certificate_and_last_error():
    inner = Recorder()
    infos = {"svc-1": {"issuer": "CN=x", "source": "local-ca",
                       "ca_certificate_pem": b"-----BEGIN CERTIFICATE-----\n"}}
    client = CertificateReporting(inner, infos.get)
    client.send_status_update("svc-1", "acct", pb.PROXY_STATUS_ACTIVE, error_message=None)
    client.send_status_update("svc-1", "acct", pb.PROXY_STATUS_CERTIFICATE_FAILED,
                              error_message="certificate: rateLimited")
    client.send_status_update("svc-2", "acct", pb.PROXY_STATUS_ACTIVE)  # no certificate
    first, failed, none = (c[3] for c in inner.calls)
    assert first["certificate"].issuer == "CN=x"
    assert first["certificate"].ca_certificate_pem.startswith("-----BEGIN")
    assert first["certificate"].last_error == ""
    assert failed["certificate"].last_error == "certificate: rateLimited"
    assert "certificate" not in none
    assert client.other == "passed through"


def test_a_failing_describe_never_blocks_the_report():
    inner = Recorder()

    def broken(_sid):
        raise RuntimeError("boom")

    CertificateReporting(inner, broken).send_status_update("s", "a", pb.PROXY_STATUS_ACTIVE)
    assert inner.calls == [("s", "a", pb.PROXY_STATUS_ACTIVE, {})]


def test_gateway_widens_the_ca_when_a_mapping_arrives_not_for_l4(tmp_path):
    from nbgateway.service import _CAConstraints

    store = CertificateStore(None, None, str(tmp_path), default_name="gw.test",
                             serves=lambda n: True)
    observer = _CAConstraints(store)
    observer.mapping_added(pb.ProxyMapping(domain="app.gw.test"))  # inside already
    observer.mapping_added(pb.ProxyMapping(domain="wiki.corp.test"))
    observer.mapping_added(pb.ProxyMapping(domain="relay.other.test", mode="tcp"))
    observer.mapping_added(pb.ProxyMapping(domain="pass.other.test", mode="tls"))
    observer.mapping_changed(pb.ProxyMapping(domain="wiki.corp.test"),
                             pb.ProxyMapping(domain="docs.corp2.test"))
    assert constraints_of(store.ca.cert) == {"gw.test", "wiki.corp.test", "docs.corp2.test"}
    with open(store.ca.cert_path, "rb") as f:  # on disk before any handshake
        assert f.read() == store.ca.cert_pem()
