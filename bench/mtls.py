"""mTLS benchmark: what asking for and checking a client certificate costs.

Everything in one process, one core, no network (pyOpenSSL connections
handing each other their bytes in memory), rounds interleaved:

1. **handshakes/s**: full TLS handshakes (TLS 1.3, ECDSA P-256 server
   certificate from the gateway's local CA) through the gateway's
   ``SNIServerCreator`` for a name without a client CA, against the same
   handshakes for a name with one where the client presents an ECDSA P-256
   certificate (the CertificateRequest, the client's Certificate and
   CertificateVerify, the chain built against the service CA).  Printed as
   the ratio of medians.
2. **per-request check**: ``MtlsVerifier.verify_presented`` of a chain the
   connection already digested (what every later request on a connection
   costs: two dict lookups and the validity window) against a fresh
   verification (digest, bundle store, X509StoreContext, EKU, validity
   window: the first request presenting a new certificate).  Microseconds
   per call.

Usage: ``.venv/bin/python bench/mtls.py [--seconds 2] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from nbgateway.auth.mtls import MtlsVerifier, Presented, tls_lookup
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import SNIServerCreator
from tests.tls._clientcerts import IssuingCA


class Entry:
    private = False
    l4 = False

    def __init__(self, pem: str) -> None:
        self.client_ca_pem = pem


def handshake(creator: SNIServerCreator, client_ctx: SSL.Context, sni: bytes) -> bool:
    client = SSL.Connection(client_ctx, None)
    client.set_tlsext_host_name(sni)
    client.set_connect_state()
    server = creator.serverConnectionForTLS(None)
    server.set_accept_state()
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                a.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65536))
    return server.get_peer_certificate() is not None


def rate(fn, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ca = IssuingCA("Bench Client CA")
    leaf = ca.issue("bench", emails=("bench@example.com",))
    with tempfile.TemporaryDirectory() as tmp:
        store = CertificateStore(None, None, tmp, default_name="gw.example")
        store.reload()
        entries = {"mtls.example": Entry(ca.pem), "plain.example": Entry("")}
        verifier = MtlsVerifier()
        creator = SNIServerCreator(store, "gw.example",
                                   client_auth=tls_lookup(entries.get, verifier))
        plain_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        cert_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        cert_ctx.use_certificate(leaf.cert)
        cert_ctx.use_privatekey(crypto.PKey.from_cryptography_key(leaf.key))
        assert not handshake(creator, plain_ctx, b"plain.example")
        assert handshake(creator, cert_ctx, b"mtls.example")

        plain, mtls = [], []
        for _ in range(args.rounds):
            plain.append(rate(lambda: handshake(creator, plain_ctx, b"plain.example"),
                              args.seconds))
            mtls.append(rate(lambda: handshake(creator, cert_ctx, b"mtls.example"),
                             args.seconds))
        p, m = statistics.median(plain), statistics.median(mtls)
        print("rounds (handshakes/s): plain " + " ".join(f"{x:.0f}" for x in plain)
              + " | mtls " + " ".join(f"{x:.0f}" for x in mtls))
        print(f"handshakes/s, no client CA            : {p:8.0f}")
        print(f"handshakes/s, client CA + certificate : {m:8.0f}")
        print(f"ratio mtls/plain                      : {m / p:8.2f}")

        svc = verifier.ca_for(ca.pem)
        now = time.time()
        der = leaf.cert.public_bytes(serialization.Encoding.DER)
        presented = Presented.of(leaf.cert, [])
        assert verifier.verify_presented(svc, presented, now).ok
        cached, fresh = [], []
        for _ in range(args.rounds):
            # a later request on the connection: its Presented is kept per connection
            cached.append(1e6 / rate(lambda: verifier.verify_presented(svc, presented, now),
                                     args.seconds / 2))
            # the first request of a connection presenting a new certificate
            fresh.append(1e6 / rate(lambda: MtlsVerifier().verify(svc, leaf.cert, [], now),
                                    args.seconds / 2))
        c, f = statistics.median(cached), statistics.median(fresh)
        print(f"per-request check, later request      : {c:8.2f} us")
        print(f"per-request check, first verification: {f:8.1f} us")
        print(f"ratio first/later                     : {f / c:8.0f}  (leaf {len(der)} bytes)")


if __name__ == "__main__":
    main()
