"""TLS over the netstack against the kernel side (issue 3, Acceptance "Interop" 6).

``openssl s_client`` in the test namespace connects through wireguard-go to a
``TLSMemoryBIOFactory`` listener on the gateway's tunnel address (a
``TunnelServerEndpoint`` on the in-process ``Stack``), verifies the generated
self-signed certificate (as its own CA, with host name check), and gets its
lines echoed back.  Topology: ``netstack_gateway.start_gateway``.
"""

from __future__ import annotations

import datetime

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory

from nbgateway.netstack.endpoints import TunnelServerEndpoint
from tests.interop.conftest import require_testbed
from tests.interop.netstack_gateway import GW4, GW6, P4, P6, start_gateway

pytestmark = pytest.mark.interop

NAME = "tunnel.nbgateway.test"
ORG = "nbgateway interop"


def self_signed() -> tuple[str, str]:
    """(certificate PEM, private key PEM) for NAME, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


class Echo(LineReceiver):
    """Echoes each line with the client's tunnel address; ``QUIT`` closes."""

    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"QUIT":
            self.transport.loseConnection()
            return
        peer = self.transport.getPeer()
        self.sendLine(b"echo " + line.strip() + f" from {peer.host}".encode())


@pytest.fixture
def gateway(testbed):
    require_testbed("openssl")
    gw = start_gateway(testbed, reactor)
    yield gw
    pytest_twisted.blockon(
        deferLater(reactor, 0, lambda: None).addCallback(lambda _: gw.close()))


@pytest_twisted.ensureDeferred
async def test_openssl_s_client_handshake_echo_and_subject(gateway, testbed):
    cert_pem, key_pem = self_signed()
    ca_file = testbed.write_file("tunnel-cert.pem", cert_pem)
    options = PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    factory = TLSMemoryBIOFactory(options, False, Factory.forProtocol(Echo))
    port = await TunnelServerEndpoint(gateway.stack, 443).listen(factory)
    try:
        for target, peer in ((f"{GW4}:443", P4), (f"[{GW6}]:443", P6)):
            res = await threads.deferToThread(
                gateway.ns.run,
                ["openssl", "s_client", "-connect", target, "-servername", NAME,
                 "-CAfile", ca_file, "-verify_return_error", "-verify_hostname", NAME,
                 "-ign_eof"],
                input="hello over tls\nsecond line\nQUIT\n", check=False, timeout=30,
            )
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
            out = res.stdout
            assert f"echo hello over tls from {peer}" in out
            assert f"echo second line from {peer}" in out
            assert f"subject=CN = {NAME}, O = {ORG}" in out, out[:3000]
            assert "Verify return code: 0 (ok)" in out
            assert "Verification: OK" in out
            assert f"Verified peername: {NAME}" in out
    finally:
        await port.stopListening()
    assert gateway.stack.counters["tcp_passive_opens"] == 2
