"""Shared helpers for the dashboard tests: a real ``twistd nbmanagement`` on a
free loopback port, and a small cookie-keeping HTTP client for the UI."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from tests.ports import free_port

VENV_BIN = os.path.dirname(sys.executable)




class Management:
    """A standalone management process (REST + UI) in a temporary directory."""

    def __init__(self, extra_args: list[str] | None = None, port: int | None = None) -> None:
        self.tmp = tempfile.mkdtemp(prefix="nbgw-ui-")
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "-l",
                os.path.join(self.tmp, "management.log"), "nbmanagement",
                "--datadir", os.path.join(self.tmp, "data"),
                "--api-addr", f"127.0.0.1:{self.port}"]
        self.grpc_port = free_port()  # the default port may be another test's
        args += ["--grpc-addr", f"127.0.0.1:{self.grpc_port}", *(extra_args or [])]
        self.proc = subprocess.Popen(args, cwd=self.tmp, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.base + "/api/openapi.json", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("management did not start") from None
                time.sleep(0.2)
        with open(os.path.join(self.tmp, "data", "admin-token")) as f:
            self.admin = f.read().strip()

    def rest(self, method: str, path: str, body=None, token: str | None = None):
        req = urllib.request.Request(
            self.base + "/api" + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {token or self.admin}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


class UiClient:
    """Cookie-keeping client; answers are ``(status, headers, text)``; no redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def request(self, method: str, path: str, form: dict | list | None = None):
        data = None if form is None else urllib.parse.urlencode(form, doseq=True).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        try:
            with self.opener.open(req, timeout=15) as resp:
                return resp.status, resp.headers, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read().decode()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, form):
        return self.request("POST", path, form)

    def csrf(self, path: str = "/ui/") -> str:
        status, _h, text = self.get(path)
        assert status == 200, (status, text[:300])
        return re.search(r'name="csrf" value="([^"]+)"', text).group(1)

    def sign_in(self, token: str) -> None:
        csrf = self.csrf("/ui/login")
        status, headers, text = self.post("/ui/login", {"csrf": csrf, "token": token})
        assert status == 303 and headers["Location"] == "/ui/", (status, text[:300])
