"""Certificate status per service and the private CA at management.

* ``SendStatusUpdate.nbgw_certificate`` (nbgateway extension) is stored by
  ``store.certificates``: issuer, not-after, source, last error (kept until a
  certificate is issued), the CA (one row per CA key; a narrower copy never
  replaces a wider one); a bad CA PEM is INVALID_ARGUMENT.
* REST: ``/api/reverse-proxies/certificates``, ``.../services/{id}/certificate``
  and ``/api/reverse-proxies/ca-certificate`` (PEM, any user of the account).
"""

from __future__ import annotations

import datetime
import uuid

import grpc
import pytest
from cryptography import x509

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.store._certificates import parse_ca
from nbgateway.tls.ca import constraints_of
from nbgateway.tls.certstore import LocalCA
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import ACCOUNT, Fixture, Harness, md

from .apiserver import BACKENDS, running_server

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness

NOT_AFTER = datetime.datetime(2027, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def cert_status(ca: LocalCA | None = None, **kw) -> pb.NbgwCertificateStatus:
    msg = pb.NbgwCertificateStatus(issuer="CN=nbgateway local CA", source="local-ca", **kw)
    msg.not_after.FromDatetime(NOT_AFTER.replace(tzinfo=None))
    if ca is not None:
        msg.ca_certificate_pem = ca.cert_pem().decode()
    return msg


def ssu(h: Harness, f: Fixture, status=pb.PROXY_STATUS_ACTIVE, **kw) -> None:
    h.stub.SendStatusUpdate(pb.SendStatusUpdateRequest(
        service_id="svc-1", account_id=ACCOUNT, status=status, **kw), metadata=md(f.token))


def test_status_update_stores_certificate_and_ca(harness, fx, tmp_path):
    ca = LocalCA(str(tmp_path / "ca"), permitted=["proxy.example"])
    ssu(harness, fx, nbgw_certificate=cert_status(ca))
    got = fx.store.certificates.get(ACCOUNT, "svc-1")
    assert (got.issuer, got.source, got.last_error) == ("CN=nbgateway local CA", "local-ca", "")
    assert got.not_after == NOT_AFTER
    [stored] = fx.store.certificates.private_cas(ACCOUNT)
    assert stored.pem == ca.cert_pem().decode()
    assert stored.key_id == parse_ca(stored.pem)[0] == got.ca_key_id
    # an ACME failure: the error is kept by later reports until an issuance
    ssu(harness, fx, status=pb.PROXY_STATUS_CERTIFICATE_FAILED, error_message="x",
        nbgw_certificate=cert_status(last_error="certificate: rateLimited"))
    ssu(harness, fx, nbgw_certificate=cert_status())
    assert fx.store.certificates.get(ACCOUNT, "svc-1").last_error == "certificate: rateLimited"
    ssu(harness, fx, certificate_issued=True,
        nbgw_certificate=pb.NbgwCertificateStatus(issuer="CN=Pebble", source="acme"))
    got = fx.store.certificates.get(ACCOUNT, "svc-1")
    assert (got.issuer, got.source, got.last_error, got.not_after) == (
        "CN=Pebble", "acme", "", None)


def test_re_issued_ca_replaces_its_row_but_never_narrows(harness, fx, tmp_path):
    ca = LocalCA(str(tmp_path / "ca"), permitted=["proxy.example"])
    narrow = ca.cert_pem().decode()
    ssu(harness, fx, nbgw_certificate=cert_status(ca))
    ca.permit(["private.corp"])
    ssu(harness, fx, nbgw_certificate=cert_status(ca))
    [stored] = fx.store.certificates.private_cas(ACCOUNT)
    assert constraints_of(x509.load_pem_x509_certificate(stored.pem.encode())) == {
        "proxy.example", "private.corp"}
    late = cert_status()
    late.ca_certificate_pem = narrow  # a report from before the re-issue, arriving late
    ssu(harness, fx, nbgw_certificate=late)
    [stored] = fx.store.certificates.private_cas(ACCOUNT)
    assert stored.pem == ca.cert_pem().decode()
    other = LocalCA(str(tmp_path / "other"), permitted=["proxy.example"])  # a second gateway
    ssu(harness, fx, nbgw_certificate=cert_status(other))
    assert len(fx.store.certificates.private_cas(ACCOUNT)) == 2


@pytest.mark.parametrize("pem", ["not a pem", "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                 "-----END CERTIFICATE-----\n", "x" * 20000])
def test_bad_ca_pem_is_invalid_argument(harness, fx, pem):
    with pytest.raises(grpc.RpcError) as exc:
        ssu(harness, fx, nbgw_certificate=pb.NbgwCertificateStatus(ca_certificate_pem=pem))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fx.store.certificates.private_cas(ACCOUNT) == []


def test_a_leaf_is_not_accepted_as_ca(harness, fx, tmp_path):
    leaf = LocalCA(str(tmp_path / "ca")).issue("x.example").cert_pem().split(b"-----END")[0]
    pem = leaf.decode() + "-----END CERTIFICATE-----\n"
    with pytest.raises(grpc.RpcError) as exc:
        ssu(harness, fx, nbgw_certificate=pb.NbgwCertificateStatus(ca_certificate_pem=pem))
    assert "not a CA" in exc.value.details()


# --- REST --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        yield srv


def test_rest_certificates_and_ca_download(server, tmp_path):
    tag = uuid.uuid4().hex[:6]
    b = server.post("/api/accounts", {"name": f"c-{tag}"}).json
    auth_b = f"Token {b['token']}"
    assert server.post("/api/reverse-proxies/domains",
                       {"domain": f"c{tag}.test", "target_cluster": "cl.test"},
                       auth=auth_b).status == 200
    svc = server.post("/api/reverse-proxies/services", {
        "name": "s", "domain": f"app.c{tag}.test", "enabled": True,
        "targets": [{"target_id": "cl.test", "target_type": "cluster", "protocol": "http",
                     "host": "10.0.0.5", "port": 8080, "enabled": True,
                     "options": {"direct_upstream": True}}]}, auth=auth_b)
    assert svc.status == 200, (svc.status, svc.data)
    svc = svc.json
    resp = server.get("/api/reverse-proxies/ca-certificate", auth=auth_b)
    assert resp.status == 404, resp
    ca = LocalCA(str(tmp_path / "ca"), permitted=[f"c{tag}.test"])
    store = server.open_store()
    try:  # what SendStatusUpdate does (the RPC is tested above)
        store.certificates.record(b["id"], svc["id"], issuer="CN=nbgateway local CA",
                                  not_after=NOT_AFTER, source="local-ca",
                                  last_error="certificate: boom",
                                  ca_pem=ca.cert_pem().decode())
    finally:
        store.close()
    rows = server.get("/api/reverse-proxies/certificates", auth=auth_b).json
    assert rows == [{"service_id": svc["id"], "account_id": b["id"],
                     "domain": f"app.c{tag}.test", "issuer": "CN=nbgateway local CA",
                     "not_after": "2027-01-02T03:04:05Z", "source": "local-ca",
                     "last_error": "certificate: boom",
                     "private_ca_key_id": parse_ca(ca.cert_pem().decode())[0],
                     "updated_at": rows[0]["updated_at"]}]
    one = server.get(f"/api/reverse-proxies/services/{svc['id']}/certificate", auth=auth_b)
    assert one.json == rows[0]
    # the default account sees none of it
    assert svc["id"] not in {r["service_id"] for r in
                             server.ok("GET", "/api/reverse-proxies/certificates")
                             if r["account_id"] != b["id"]}
    # the CA: PEM, for any user of the account (what a peer's owner downloads)
    user = server.post("/api/users", {"email": f"u{tag}@example.com", "role": "user",
                                      "is_service_user": True}, auth=auth_b).json
    pat = server.post(f"/api/users/{user['id']}/tokens", {"name": "t", "expires_in": 1},
                      auth=auth_b).json["plain_token"]
    resp = server.get("/api/reverse-proxies/ca-certificate", auth=f"Token {pat}")
    assert resp.status == 200, resp
    assert resp.headers["content-type"] == "application/x-pem-file"
    assert resp.data == ca.cert_pem()
    assert resp.headers["x-nbgw-ca-fingerprints"] == ca.fingerprint()
    assert server.get("/api/reverse-proxies/certificates",
                      auth=f"Token {pat}").status == 403
    # another account (the default one, no CA reported) does not get this account's CA
    assert server.get("/api/reverse-proxies/ca-certificate").status == 404


def test_peer_config_carries_the_ca_block_and_quickstart_can_strip_it(server, tmp_path):
    from nbgateway.management import privateca

    tag = uuid.uuid4().hex[:6]
    b = server.post("/api/accounts", {"name": f"p-{tag}"}).json
    auth_b = f"Token {b['token']}"
    peer = server.post("/api/peers", {"name": "laptop"}, auth=auth_b).json
    path = f"/api/peers/{peer['id']}/wireguard-config"
    before = server.get(path, auth=auth_b).data.decode()
    assert privateca.BEGIN not in before  # no gateway reported a CA yet
    store = server.open_store()
    try:  # a CA as a gateway would report it (no service needed for this row)
        ca = LocalCA(str(tmp_path / "ca"), permitted=["proxy.example"])
        key_id, fingerprint, _ = parse_ca(ca.cert_pem().decode())
        from nbgateway.management.store._certificates import cas as table

        with store._engine.begin() as conn:
            conn.execute(table.insert().values(account_id=b["id"], key_id=key_id,
                                               pem=ca.cert_pem().decode(),
                                               fingerprint=fingerprint))
    finally:
        store.close()
    conf = server.get(path, auth=auth_b).data.decode()
    assert conf.startswith(before)
    assert privateca.BEGIN in conf and conf.rstrip().endswith(privateca.END)
    pem_lines = [line[2:] for line in conf.splitlines()
                 if line.startswith("# ") and not line.startswith("# --- ")]
    assert "\n".join(pem_lines).endswith(ca.cert_pem().decode().strip())
    assert privateca.strip_block(conf) == before
    qr = server.get(path + "?format=qr", auth=auth_b)
    assert qr.status == 200 and qr.data.startswith(b"\x89PNG")
