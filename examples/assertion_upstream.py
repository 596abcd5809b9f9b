#!/usr/bin/env python3
"""An upstream that trusts nobody's network position: it verifies the
``X-NetBird-Jwt-Assertion`` the nbgateway gateway stamps on each request
against the service's JWKS and answers 401 without a valid one.

    MGMT=http://127.0.0.1:33071
    python examples/assertion_upstream.py --audience app.example.com --port 8082 \\
        --jwks-url "$MGMT/.well-known/nbgateway/jwks.json?domain=app.example.com"

A valid request gets 200 and JSON naming the caller (``sub``, ``email``,
``groups``, ``group_names``, ``method``, ``peer_ip``, ``kid``); ``--echo-token``
adds the raw token (for demos and tests only: never echo credentials in a
real service).  Needs PyJWT with ``cryptography`` (``pip install
'pyjwt[crypto]'``).  PyJWKClient caches the key set and refetches it when a
token names a key id it has not seen (at most every ``--refresh-cooldown``
seconds): management publishes a rotated-in key 60 s before the gateway signs
with it, so the refetch finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

HEADER = "X-NetBird-Jwt-Assertion"
ISSUER = "nbgateway-management"


def verify(token: str, jwks: jwt.PyJWKClient, audience: str) -> dict:
    """The claims of a valid assertion; raises ``jwt.PyJWTError`` otherwise."""
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(token, key, algorithms=["EdDSA"], audience=audience, issuer=ISSUER,
                      options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jwks-url", required=True)
    p.add_argument("--audience", required=True, help="the service's domain")
    p.add_argument("--port", type=int, default=8082)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--echo-token", action="store_true", help="demo/tests: echo the token")
    p.add_argument("--refresh-cooldown", type=float, default=30.0,
                   help="least seconds between JWKS refetches for unknown key ids (keep it "
                        "below management's publish-ahead time, 60 s by default)")
    args = p.parse_args(argv)
    jwks = jwt.PyJWKClient(args.jwks_url, cache_keys=True,
                           cooldown_duration=args.refresh_cooldown)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            token = self.headers.get(HEADER, "")
            try:
                claims = verify(token, jwks, args.audience)
            except (jwt.PyJWTError, jwt.PyJWKClientError) as exc:
                self.reply(401, {"error": type(exc).__name__, "detail": str(exc)})
                return
            body = {k: claims.get(k) for k in ("sub", "email", "groups", "group_names",
                                               "method", "peer_ip", "jti", "exp")}
            body["kid"] = jwt.get_unverified_header(token).get("kid")
            if args.echo_token:
                body["token"] = token
            self.reply(200, body)

        def reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *a: object) -> None:
            sys.stderr.write(f"{self.address_string()} {fmt % a}\n")

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
