"""Test harness: a real ``twistd -n nbmanagement`` process and a small HTTP client.

The server runs exactly as a user runs it (dropin discovery, option parsing,
privilegedStartService, real store on SQLite or PostgreSQL) on a free
127.0.0.1 port; tests talk to it over real HTTP with ``http.client``.

PostgreSQL: ``NBGW_TEST_PG_DSN`` names a server where the role may create
databases, else the session's throwaway cluster (:mod:`tests.pgcluster`); every
server gets a fresh database that is dropped afterwards.  Without either the
PostgreSQL variants skip (fail when ``NBGW_REQUIRE_POSTGRES=1``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.ports import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BACKENDS = [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


def pg_dsn_or_skip() -> str:
    from tests import pgcluster

    dsn = pgcluster.dsn()  # NBGW_TEST_PG_DSN, else a throwaway cluster of this session
    if not dsn:
        reason = pgcluster.unavailable_reason() or "PostgreSQL not available"
        if os.environ.get("NBGW_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return dsn


class PgDatabase:
    """A throw-away database on the server named by ``NBGW_TEST_PG_DSN``."""

    def __init__(self, base_dsn: str):
        import psycopg

        self._psycopg = psycopg
        self.base = base_dsn
        self.name = "nbgw_api_" + uuid.uuid4().hex[:10]
        with psycopg.connect(base_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        parts = urlsplit(base_dsn)
        self.dsn = urlunsplit(parts._replace(path="/" + self.name))

    def drop(self) -> None:
        with self._psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Response:
    def __init__(self, status: int, headers: dict[str, str], data: bytes):
        self.status = status
        self.headers = headers
        self.data = data

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.data[:300]!r}>"


class ApiServer:
    """One management server process with its own data directory (and PG database)."""

    def __init__(self, workdir: str, backend: str = "sqlite"):
        self.workdir = workdir
        self.backend = backend
        self.datadir = os.path.join(workdir, "data")
        self.port = free_port()
        self.pg: PgDatabase | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.log_path = os.path.join(workdir, "twistd.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_dsn(self) -> str | None:
        return self.pg.dsn if self.pg else None

    def start(self, timeout: float = 60.0, attempts: int = 3) -> ApiServer:
        if self.backend == "postgres":
            self.pg = PgDatabase(pg_dsn_or_skip())
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                # a port taken between the probe and the bind: new ports, again
                if "already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self.port = free_port()
                if os.path.exists(self.log_path):
                    os.remove(self.log_path)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> ApiServer:
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", f"--logfile={self.log_path}", "nbmanagement",
                "--datadir", self.datadir, "--api-addr", f"127.0.0.1:{self.port}",
                # gRPC listens by default on a fixed port: parallel servers need their own
                "--grpc-addr", f"127.0.0.1:{free_port()}"]
        if self.pg:
            args += ["--store-dsn", self.pg.dsn]
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = subprocess.Popen(args, cwd=self.workdir, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nbmanagement exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/api/openapi.json", auth=False).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nbmanagement did not come up:\n{self.log()}")
            time.sleep(0.1)
        with open(os.path.join(self.datadir, "admin-token")) as f:
            self.token = f.read().strip()
        return self

    def log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.pg is not None:
            self.pg.drop()
            self.pg = None

    def open_store(self) -> Any:
        """The same database, opened in the test process (for direct inserts)."""
        from nbgateway.management.store import Store

        return Store.open(self.store_dsn, datadir=self.datadir)

    # -- HTTP --------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                auth: bool | str = True, headers: dict[str, str] | None = None,
                timeout: float = 30.0) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        hdrs = dict(headers or {})
        if auth is True:
            hdrs["Authorization"] = f"Token {self.token}"
        elif isinstance(auth, str):
            hdrs["Authorization"] = auth
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                            resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        resp = self.request(method, path, body)
        assert resp.status == status, resp
        return resp.json if resp.headers.get("content-type", "").startswith(
            "application/json") else resp.data

    def add_domain(self, domain: str, cluster: str) -> Any:
        """Create the custom domain ``domain`` served by ``cluster`` (as the bootstrap admin)."""
        return self.ok("POST", "/api/reverse-proxies/domains",
                       {"domain": domain, "target_cluster": cluster})


def start_server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> ApiServer:
    if backend == "postgres":
        pg_dsn_or_skip()
    workdir = str(tmp_path_factory.mktemp(f"nbmgmt-{backend}"))
    return ApiServer(workdir, backend).start()


@contextmanager
def running_server(tmp_path_factory: pytest.TempPathFactory,
                   backend: str = "sqlite") -> Iterator[ApiServer]:
    """A started server (see :func:`start_server`), stopped when the block ends."""
    srv = start_server(tmp_path_factory, backend)
    try:
        yield srv
    finally:
        srv.stop()


@contextmanager
def server_with_cluster(tmp_path_factory: pytest.TempPathFactory, backend: str,
                        cluster: str) -> Iterator[ApiServer]:
    """:func:`running_server` where a management-wide gateway serves
    ``cluster`` (registered in the store), so services can be made on it."""
    from nbgateway.management.model import ProxyRecord

    with running_server(tmp_path_factory, backend) as srv:
        store = srv.open_store()
        try:
            store.proxies.register(ProxyRecord(
                id=uniq("px"), session_id=uniq("s"), cluster_address=cluster,
                ip_address="127.0.0.1", account_id=None))
        finally:
            store.close()
        yield srv


# -- helpers of the multi-account tests ----------------------------------------------


def uniq(prefix: str = "x") -> str:
    """A name no other test uses: ``prefix`` and eight random hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_account(server: ApiServer) -> str:
    """A new account created by the instance admin; its owner's ``Authorization`` value."""
    resp = server.post("/api/accounts", {"name": uniq("acct")})
    assert resp.status == 201, resp
    return f"Token {resp.json['token']}"


def account_id(server: ApiServer, auth: str) -> str:
    """The id of the (one) account the caller ``auth`` belongs to."""
    return server.get("/api/accounts", auth=auth).json[0]["id"]
