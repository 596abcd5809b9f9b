"""The dashboard's CA offer (peer page and ``/ui/ca.crt``) against a real
management: it is the signed-in account's private CA as management has it from
the gateways (what ``GET /api/reverse-proxies/ca-certificate`` returns for that
account), never another account's and never the gateway's own ``DATADIR/ca.crt``
(which signs only the gateway's default name), even when management shares the
gateway's data directory."""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.request

import pytest

from nbgateway.management.store._certificates import parse_ca
from nbgateway.management.ui.resource import ca_certificate_text
from nbgateway.tls.certstore import LocalCA
from tests.ui.harness import Management, UiClient


@pytest.fixture(scope="module")
def mgmt():
    m = Management()
    try:
        m.own = m.rest("GET", "/accounts")[0]["id"]
        created = m.rest("POST", "/accounts", {"name": "other"})
        m.other, m.other_token = created["id"], created["token"]
        m.pid = m.rest("POST", "/peers", {"name": "laptop"})["id"]
        m.other_pid = m.rest("POST", "/peers", {"name": "phone"}, token=m.other_token)["id"]
        yield m
    finally:
        m.stop()


def _client(mgmt, token):
    c = UiClient(mgmt.base)
    c.sign_in(token)
    return c


def _reported(mgmt, account_id: str, pem: str) -> None:
    """Management stores ``pem`` as a gateway-reported CA of the account (the
    row a status report's ``ca_certificate_pem`` writes)."""
    key_id, fingerprint, _cert = parse_ca(pem)
    with sqlite3.connect(os.path.join(mgmt.tmp, "data", "store.db")) as db:
        db.execute("INSERT INTO private_ca_certificates (account_id, key_id, pem, fingerprint)"
                   " VALUES (?, ?, ?, ?)", (account_id, key_id, pem, fingerprint))


def _api_ca(mgmt, token):
    req = urllib.request.Request(mgmt.base + "/api/reverse-proxies/ca-certificate",
                                 headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_each_account_is_offered_its_own_ca_never_anothers_or_the_gateways(mgmt):
    # a gateway sharing the data directory: its own CA (the default name only)
    gateway_ca = LocalCA(os.path.join(mgmt.tmp, "data"), permitted=["gw.example.test"])
    gateway_pem = gateway_ca.cert_pem().decode()
    own_ca = LocalCA(os.path.join(mgmt.tmp, "own-ca"), permitted=["payroll.own.test"])
    other_ca = LocalCA(os.path.join(mgmt.tmp, "other-ca"), permitted=["wiki.other.test"])
    own, other = _client(mgmt, mgmt.admin), _client(mgmt, mgmt.other_token)

    # nothing reported yet: no offer, and not the gateway's ca.crt either
    text = own.get(f"/ui/peers/{mgmt.pid}")[2]
    assert 'id="no-ca"' in text and 'href="/ui/ca.crt"' not in text
    assert gateway_pem.splitlines()[1] not in text
    status, _h, body = own.get("/ui/ca.crt")
    assert status == 404 and gateway_pem.splitlines()[1] not in body

    _reported(mgmt, mgmt.own, own_ca.cert_pem().decode())
    _reported(mgmt, mgmt.other, other_ca.cert_pem().decode())
    cases = [(own, mgmt.admin, mgmt.pid, own_ca, other_ca),
             (other, mgmt.other_token, mgmt.other_pid, other_ca, own_ca)]
    for client, token, pid, mine, theirs in cases:
        api_status, api_pem = _api_ca(mgmt, token)
        assert api_status == 200 and api_pem == mine.cert_pem().decode()
        status, headers, body = client.get("/ui/ca.crt")
        assert status == 200 and body == api_pem
        assert headers["Content-Disposition"] == 'attachment; filename="nbgateway-ca.crt"'
        text = client.get(f"/ui/peers/{pid}")[2]
        assert 'href="/ui/ca.crt"' in text and 'id="no-ca"' not in text
        assert mine.cert_pem().decode().splitlines()[1] in text
        for foreign in (theirs.cert_pem().decode(), gateway_pem):
            assert foreign.splitlines()[1] not in text and foreign.splitlines()[1] not in body
    assert UiClient(mgmt.base).get("/ui/ca.crt")[0] == 303  # needs a session


def test_a_body_holding_a_key_or_no_certificate_is_never_offered(tmp_path):
    ca = LocalCA(str(tmp_path), permitted=["a.test"])
    pem = ca.cert_pem()
    assert ca_certificate_text(pem) == pem.decode()
    with open(ca.key_path, "rb") as f:
        assert ca_certificate_text(pem + f.read()) == ""
    assert ca_certificate_text(b"") == "" and ca_certificate_text(None) == ""
    assert ca_certificate_text(b"not a certificate") == ""
    assert ca_certificate_text(pem * 200) == ""  # over the size limit
