"""The ten-line PyJWT verifier in docs/identity.md works as printed (only its
JWKS URL is pointed at a loopback server) against tokens the gateway's signer
mints, and refuses a forged one."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.task import Clock

from nbgateway.auth.assertion import AssertionSigner
from nbgateway.routes.identity import Identity
from tests.auth.test_assertion import _keypair

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "identity.md")


def _python_snippet() -> str:
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Verifying in Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_documented_python_verifier(tmp_path):
    settings, _ = _keypair("doc-kid")
    settings = type(settings)(mode="on", kid="doc-kid", private_key=settings.private_key,
                              keys=settings.keys, issuer="nbgateway-management")
    body = json.dumps(settings.jwks()).encode()

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = _python_snippet()
        assert len([ln for ln in code.splitlines() if ln.strip()]) <= 12
        url = f"http://127.0.0.1:{server.server_port}/.well-known/nbgateway/jwks.json"
        code = re.sub(r'PyJWKClient\("[^"]+"\)', f'PyJWKClient("{url}")', code)
        scope: dict = {}
        exec(compile(code, "identity.md", "exec"), scope)  # the doc's own code
        clock = Clock()
        clock.advance(time.time())
        token = AssertionSigner(clock).token(settings, Identity("u1", "a@x", ("g",), ("devs",)),
                                             "100.64.0.9", "app.example.com")
        claims = scope["caller"]({"X-NetBird-Jwt-Assertion": token})
        assert claims["sub"] == "u1" and claims["peer_ip"] == "100.64.0.9"
        forged = jwt.encode({"iss": "nbgateway-management", "aud": "app.example.com",
                             "sub": "mallory", "iat": int(time.time()),
                             "exp": int(time.time()) + 60},
                            Ed25519PrivateKey.generate(), algorithm="EdDSA",
                            headers={"kid": "doc-kid"})
        with pytest.raises(jwt.PyJWTError):
            scope["caller"]({"X-NetBird-Jwt-Assertion": forged})
    finally:
        server.shutdown()
