"""ACME against a real pebble (Debian package ``pebble``), all inside one
network namespace on loopback:

    pebble-challtestsrv: DNS on 127.0.0.1:8053 answering every A query with
        127.0.0.1 (the gateway), nothing else
    pebble: directory https://127.0.0.1:14000/dir (its HTTPS certificate made
        here, trusted by the gateway through --acme-ca-bundle), management
        https://127.0.0.1:15000 (its root CA), tlsPort 8443 = the gateway's
        public listener, httpPort 5002 = the gateway's --acme-addr
    twistd nbmanagement + twistd nbgateway --acme-certs (World)

* tls-alpn-01: the gateway registers with external account binding (pebble
  requires it) and obtains certificates for two public domains; curl
  verifies both against pebble's root;
* restart with http-01: the stored account and both certificates are reused
  (no new account, no new order for them), the third domain is issued over
  http-01 and curl verifies it;
* a ClientHello offering only ``acme-tls/1`` for a served name without a
  pending challenge gets the normal certificate and no ALPN protocol.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.interop.conftest import require_testbed, world_on_testbed
from tests.interop.multiaccount import global_proxy_token
from tests.interop.test_private_e2e import DOMAIN, World, service_body, wait_for
from tests.interop.testbed import Testbed, inside_netns

pytestmark = pytest.mark.interop

PUBLIC = "127.0.0.1:8443"
ACME_HTTP = "127.0.0.1:5002"
ALPN_DOMAINS = (f"one.{DOMAIN}", f"two.{DOMAIN}")
HTTP_DOMAIN = f"three.{DOMAIN}"


def _pebble_tls(tmp: str) -> tuple[str, str, str]:
    """A CA and pebble's own HTTPS certificate for 127.0.0.1 (files)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test pebble https CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(tmp, n) for n in ("pebble-ca.pem", "pebble.pem", "pebble.key"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


EAB_KID = "kid-1"
EAB_HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def _start_pebble(w: World, ca: str, cert: str, key: str, *, env: dict,
                  validity: int | None = None, eab: bool = False) -> str:
    """pebble-challtestsrv (DNS: every name is 127.0.0.1) and pebble; returns
    the path of pebble's root certificate (fetched from its management port)."""
    config = os.path.join(w.tmp, "pebble.json")
    settings = {
        "listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
        "certificate": cert, "privateKey": key, "httpPort": 5002, "tlsPort": 8443,
        "ocspResponderURL": "", "externalAccountBindingRequired": False}
    if validity is not None:
        settings["certificateValidityPeriod"] = validity
    if eab:
        settings["externalAccountBindingRequired"] = True
        settings["externalAccountMACKeys"] = {EAB_KID: EAB_HMAC}
    with open(config, "w") as f:
        json.dump({"pebble": settings}, f)
    w.g.popen(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
               "-dns01", "127.0.0.1:8053", "-http01", "", "-https01", "", "-tlsalpn01", "",
               "-management", "127.0.0.1:8055"],
              stdout=w.log("challtestsrv"), stderr=subprocess.STDOUT)
    w.g.popen(["pebble", "-config", config, "-dnsserver", "127.0.0.1:8053", "-strict"],
              stdout=w.log("pebble"), stderr=subprocess.STDOUT,
              env=dict(os.environ, PEBBLE_VA_NOSLEEP="1", **env))
    https = ssl.create_default_context(cafile=ca)

    def fetch(url: str) -> bytes | None:
        try:
            with inside_netns(w.g.name), urllib.request.urlopen(
                    url, timeout=3, context=https) as r:
                return r.read()
        except OSError:
            return None

    root = wait_for(lambda: fetch("https://127.0.0.1:15000/roots/0"), 30, "pebble")
    root_path = os.path.join(w.tmp, "pebble-root.pem")
    with open(root_path, "wb") as f:
        f.write(root)
    return root_path


class AcmeWorld(World):
    """World whose gateway process can be stopped and started again."""

    gateway_proc: subprocess.Popen | None = None

    def start_gateway(self, token: str, *extra_args: str) -> None:
        started: list[subprocess.Popen] = []
        popen = self.g.popen

        def capture(args, **kw):
            started.append(popen(args, **kw))
            return started[-1]

        self.g.popen = capture
        try:
            super().start_gateway(token, *extra_args)
        finally:
            del self.g.popen
        self.gateway_proc = started[-1]

    def stop_gateway(self) -> None:
        self.gateway_proc.terminate()
        self.gateway_proc.wait(timeout=40)


def _curl(w: World, domain: str, cacert: str, insecure: bool = False) -> tuple[int, str]:
    trust = ["-k"] if insecure else ["--cacert", cacert]
    r = w.g.run(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                 *trust, "--resolve", f"{domain}:8443:127.0.0.1",
                 f"https://{domain}:8443/"], check=False, timeout=20)
    return (int(r.stdout) if r.stdout.strip().isdigit() else 0), r.stderr


def _create(w: World, body: dict) -> dict:
    """POST a service, waiting while no gateway of the cluster is connected (412)."""

    def attempt():
        try:
            return w.rest("POST", "/reverse-proxies/services", body)
        except urllib.error.HTTPError as exc:
            if exc.code != 412:
                raise
            return None

    return wait_for(attempt, 30, "a connected gateway to create a service on", interval=0.5)


def _log(w: World) -> str:
    with open(os.path.join(w.tmp, "gateway.log"), "rb") as f:
        return f.read().decode(errors="replace")


def test_acme_against_pebble():
    with world_on_testbed(AcmeWorld, "curl", "pebble", "pebble-challtestsrv", "openssl",
                          logs=("gateway", "pebble", "management"), tail=5000) as w:
        ca, cert, key = _pebble_tls(w.tmp)
        root_path = _start_pebble(w, ca, cert, key, env={"PEBBLE_AUTHZREUSE": "0"}, eab=True)
        w.start_upstream(8081)
        w.start_management()
        token = global_proxy_token(w)
        acme = ["--addr", PUBLIC, "--acme-certs", "--acme-dir", "https://127.0.0.1:14000/dir",
                "--acme-ca-bundle", ca, "--acme-email", "ops@example.org",
                "--acme-eab-kid", EAB_KID, "--acme-eab-hmac-key", EAB_HMAC]
        w.start_gateway(token, *acme, "--acme-challenge-type", "tls-alpn-01")
        wait_for(lambda: DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")), 30,
                 "the gateway to connect to management")
        for i, domain in enumerate(ALPN_DOMAINS):
            _create(w, service_body(f"alpn{i}", domain, private=False))
        for domain in ALPN_DOMAINS:
            wait_for(lambda d=domain: _curl(w, d, root_path)[0] == 200, 60,
                     f"a pebble certificate for {domain}")
        account_dir = os.path.join(w.gw_dir, "acme")
        with open(os.path.join(account_dir, "account.json")) as f:
            account = f.read()
        assert os.stat(os.path.join(account_dir, "account.key")).st_mode & 0o777 == 0o600
        # acme-tls/1 for a served name with no pending challenge: no challenge cert
        r = w.g.run(["openssl", "s_client", "-connect", PUBLIC, "-servername", ALPN_DOMAINS[0],
                     "-alpn", "acme-tls/1"], input="", check=False, timeout=20)
        assert "No ALPN negotiated" in r.stdout, r.stdout
        assert "1.3.6.1.5.5.7.1.31" not in r.stdout
        first_orders = len(re.findall(r"acme: ordering a certificate for", _log(w)))
        assert first_orders == 2, _log(w)

        # restart with http-01: account and certificates reused
        w.stop_gateway()
        w.start_gateway(token, *acme, "--acme-challenge-type", "http-01",
                        "--acme-addr", ACME_HTTP)
        _create(w, service_body("http", HTTP_DOMAIN, private=False))
        wait_for(lambda: _curl(w, HTTP_DOMAIN, root_path)[0] == 200, 60,
                 f"a pebble certificate for {HTTP_DOMAIN} over http-01")
        for domain in ALPN_DOMAINS:
            assert _curl(w, domain, root_path)[0] == 200
        log = _log(w)
        orders = re.findall(r"acme: ordering a certificate for (\S+)", log)
        assert orders[first_orders:] == [HTTP_DOMAIN], orders
        with open(os.path.join(account_dir, "account.json")) as f:
            assert f.read() == account  # the stored account, not a new one
        assert "Traceback" not in log


def _https_get(w: World, domain: str, context: ssl.SSLContext) -> int:
    """One verified HTTPS GET on the public listener; the certificate's serial."""
    import socket

    with inside_netns(w.g.name):
        raw = socket.create_connection(("127.0.0.1", 8443), timeout=5)
    with context.wrap_socket(raw, server_hostname=domain) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n".encode())
        head = tls.recv(64)
        serial = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
    assert head.startswith(b"HTTP/1.1 200"), head
    return serial


def test_unreachable_server_retries_then_renewal_without_dropped_requests():
    """The ACME server is down when the gateway starts and the mapping arrives:
    the service answers at once with the fallback certificate, orders fail
    with growing delays (CERTIFICATE_FAILED in management).  pebble comes up
    (rejecting 20 % of nonces, reusing authorizations) with 24 s
    certificates: the order succeeds, and a client looping verified requests
    sees the certificate renewed with no request failing."""
    require_testbed("curl", "pebble", "pebble-challtestsrv")
    tb = Testbed()
    domain = f"renew.{DOMAIN}"
    try:
        w = AcmeWorld(tb)
        ca, cert, key = _pebble_tls(w.tmp)
        w.start_upstream(8081)
        w.start_management()
        os.environ["NB_PROXY_ACME_RETRY_BASE"] = "1s"
        try:
            w.start_gateway(global_proxy_token(w), "--addr", PUBLIC, "--acme-certs",
                            "--acme-dir", "https://127.0.0.1:14000/dir",
                            "--acme-ca-bundle", ca)
        finally:
            del os.environ["NB_PROXY_ACME_RETRY_BASE"]
        service = _create(w, service_body("renew", domain, private=False))
        # served at once, with the fallback certificate, while ACME is down
        wait_for(lambda: _curl(w, domain, "", insecure=True)[0] == 200, 30,
                 "the service over the fallback certificate")
        delays = wait_for(lambda: (lambda d: d if len(d) >= 2 else None)(
            [float(x) for x in re.findall(rf"order for {re.escape(domain)} failed: .*?"
                                          r"next attempt in (\d+)s", _log(w))]),
            30, "two failed orders")
        assert delays[1] > delays[0] or delays[1] >= 1, delays
        status = wait_for(lambda: (lambda s: s if s.get("meta", {}).get("status") ==
                                   "certificate_failed" else None)(
            w.rest("GET", f"/reverse-proxies/services/{service['id']}")), 15,
            "certificate_failed in management")
        assert status
        root_path = _start_pebble(w, ca, cert, key, validity=24,
                                  env={"PEBBLE_WFE_NONCEREJECT": "20",
                                       "PEBBLE_AUTHZREUSE": "100"})
        context = ssl.create_default_context(cafile=root_path)
        context.check_hostname = True

        def verified():
            try:
                return _https_get(w, domain, context)
            except (OSError, AssertionError):
                return None

        first = wait_for(verified, 40, "the pebble certificate")
        serials, failures = [first], []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(set(serials)) < 2:
            try:
                serials.append(_https_get(w, domain, context))
            except (OSError, AssertionError) as exc:
                failures.append(repr(exc))
            time.sleep(0.2)
        assert failures == [], failures
        assert len(set(serials)) >= 2, "no renewal seen"
        assert "Traceback" not in _log(w)
    finally:
        left = tb.close_with_log_tails("gateway", "pebble", tail=5000)
    assert not left, left
