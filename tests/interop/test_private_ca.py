"""The private CA end to end (issue 17 acceptance), with real processes:

twistd nbmanagement + twistd nbgateway --private in namespace G (the harness of
test_private_e2e), a stock wireguard-go peer in its own namespace, two private
services: ``app.gw.test`` (inside the cluster domain the CA starts with) and
``wiki.corp.test`` (a custom domain: the CA widens its name constraints when
the mapping arrives).

* the peer trusts the CA once -- downloaded FROM MANAGEMENT over REST -- and
  curl reaches both services over the tunnel with verified TLS;
* the CA management serves is byte for byte the account's CA on the gateway
  (``account-cas/<hash>/ca.crt``, key 0600), and is name-constrained to
  exactly the account's two mapped service domains (never the cluster
  domain: another account's names under it are not this account's);
* a name outside the constraints is not issued (the gateway presents its
  default certificate, curl refuses it) and a leaf for it signed with the CA
  key anyway is rejected by ``openssl verify`` against the downloaded CA;
* management shows each service's certificate status (issuer, not-after,
  source) over REST and through ``nbgateway-admin``.
"""

from __future__ import annotations

import datetime
import json
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import API, DOMAIN, World, upstream_target, wait_for
from tests.interop.testbed import inside_netns

pytestmark = pytest.mark.interop

APP = f"app.{DOMAIN}"
CUSTOM = "corp.test"
WIKI = f"wiki.{CUSTOM}"


def rest_raw(world: World, path: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(API + path, headers={"Authorization": f"Token {world.admin}"})
    try:
        with inside_netns(world.g.name), urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def admin_cli(world: World, *args: str):
    return world.admin_cli(*args, check=False)


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", "wg-quick", "openssl",
                          logs=("gateway", "management"), tail=5000) as w:
        w.start_upstream()
        w.start_connected_gateway()
        devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [devs["id"]])
        w.rest("POST", "/reverse-proxies/domains", {"domain": CUSTOM, "target_cluster": DOMAIN})
        w.services = [w.rest("POST", "/reverse-proxies/services", {
            "name": name, "domain": domain, "enabled": True, "private": True,
            "access_groups": [devs["id"]], "targets": [upstream_target()]})
            for name, domain in (("app", APP), ("wiki", WIKI))]
        yield w


def _account_ca_dir(world: World) -> str:
    """The account's CA directory on the gateway (the test's one account)."""
    base = os.path.join(world.gw_dir, "account-cas")
    found = os.listdir(base) if os.path.isdir(base) else []
    assert len(found) <= 1, found
    return os.path.join(base, found[0]) if found else base


def _served_ca(world: World) -> bytes | None:
    """Management's CA once it equals the gateway's file and covers both names."""
    status, pem = rest_raw(world, "/reverse-proxies/ca-certificate")
    if status != 200:
        return None
    path = os.path.join(_account_ca_dir(world), "ca.crt")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        on_disk = f.read()
    if pem != on_disk:
        return None
    return pem


def test_peer_trusts_ca_from_management_once_and_reaches_two_private_services(world):
    ns, gw_ip, _conf = world.connect_peer("alice")
    world.alice = (ns, gw_ip)
    pem = wait_for(lambda: _served_ca(world), 30, "management's CA == the account's ca.crt")
    world.ca_pem = pem
    ca = x509.load_pem_x509_certificate(pem)
    nc = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert sorted(g.value for g in nc.value.permitted_subtrees) == [APP, WIKI]
    key_mode = os.stat(os.path.join(_account_ca_dir(world), "ca.key")).st_mode & 0o777
    assert key_mode == 0o600, oct(key_mode)
    # the peer's wg-quick config carries the same CA as a comment block, which
    # the stock tools accept (wg-quick strip, then wg setconf on the live device)
    conf = world.rest("GET", f"/peers/{world.peers['alice']['id']}/wireguard-config")
    block = [line[2:] for line in conf.splitlines() if line.startswith("# ")]
    assert "\n".join(block[block.index("-----BEGIN CERTIFICATE-----"):]).startswith(
        pem.decode().strip())
    stripped = ns.run(["wg-quick", "strip", world.tb.write_file("alice2.conf", conf)]).stdout
    links = {line.split(":")[1].strip().split("@")[0]
             for line in ns.run(["ip", "-o", "link"]).stdout.splitlines()}
    [ifname] = [i for i in ns.run(["wg", "show", "interfaces"]).stdout.split() if i in links]
    ns.run(["wg", "setconf", ifname, "/dev/stdin"], input=stripped)
    ca_file = world.tb.write_file("peer-ca.crt", pem.decode())  # the one download

    def verified_get(host: str):
        res = ns.run(["curl", "-sS", "-m", "10", "--cacert", ca_file,
                      "--resolve", f"{host}:443:{gw_ip}", "-o", "-", "-w", "\n%{http_code}",
                      f"https://{host}/ca-test"], check=False, timeout=15)
        return res if res.stdout.endswith("\n200") else None

    for host in (APP, WIKI):
        got = wait_for(lambda h=host: verified_get(h), 30, f"a verified 200 from {host}")
        assert json.loads(got.stdout.rpartition("\n")[0])["path"] == "/ca-test"


def test_name_outside_the_constraints_is_neither_issued_nor_trusted(world):
    ns, gw_ip = world.alice
    ca_file = world.tb.write_file("peer-ca2.crt", world.ca_pem.decode())
    # the gateway does not issue for a name it does not serve: curl sees the
    # default certificate, which does not name bank.example
    r = ns.run(["curl", "-sS", "-m", "10", "--cacert", ca_file,
                "--resolve", f"bank.example:443:{gw_ip}", "https://bank.example/"],
               check=False, timeout=15)
    assert r.returncode in (51, 60), (r.returncode, r.stderr)  # name mismatch, not trusted
    # a leaf for it signed with the CA key anyway is rejected by a verifier
    with open(os.path.join(_account_ca_dir(world), "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), password=None)
    ca = x509.load_pem_x509_certificate(world.ca_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    forged = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank.example")]))
              .issuer_name(ca.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(hours=1))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example")]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    leaf = world.tb.write_file("forged.pem", forged.public_bytes(
        serialization.Encoding.PEM).decode())
    v = ns.run(["openssl", "verify", "-CAfile", ca_file, leaf], check=False)
    assert v.returncode != 0
    assert "permitted subtree violation" in v.stdout + v.stderr


def test_certificate_status_in_rest_and_cli(world):
    # leaves are issued on demand: the curl handshakes of the first test issued
    # them, and the gateway re-reported both services with their expiry
    rows = wait_for(lambda: (lambda rows: rows if {r["domain"] for r in rows
                                                   if r["not_after"]} >= {APP, WIKI}
                             else None)(world.rest("GET", "/reverse-proxies/certificates")),
                    30, "certificate status of both services with the issued leaves")
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=8)
    for row in rows:
        assert row["source"] == "local-ca"
        # the account's own local CA (its CN ends with a tag of the account)
        assert row["issuer"].startswith("CN=nbgateway local CA ")
        assert row["last_error"] == ""
        not_after = datetime.datetime.fromisoformat(row["not_after"].replace("Z", "+00:00"))
        assert datetime.datetime.now(datetime.UTC) < not_after < soon  # a 7-day leaf
    listing = admin_cli(world, "ca", "status")
    assert listing.returncode == 0, listing.stderr
    assert APP in listing.stdout and WIKI in listing.stdout and "local-ca" in listing.stdout
    shown = admin_cli(world, "ca", "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.encode() == world.ca_pem
    out = os.path.join(world.tmp, "downloaded-ca.crt")
    got = admin_cli(world, "ca", "download", "-o", out)
    assert got.returncode == 0, got.stderr
    with open(out, "rb") as f:
        assert f.read() == world.ca_pem
