"""The PostgreSQL server the store tests use, started by the test session itself.

:func:`dsn` answers, in this order:

1. ``NBGW_TEST_PG_DSN`` when it is set (a server you run yourself);
2. else a throwaway cluster this process starts on first use when the
   PostgreSQL server binaries are installed (``initdb``/``pg_ctl`` on PATH or
   under ``/usr/lib/postgresql/*/bin``): ``initdb`` in a temporary directory,
   any free port on 127.0.0.1, the unix socket directory inside the temporary
   directory, trust authentication for the role ``nbgw`` (loopback only),
   fsync off.  ``initdb`` refuses to run as root, so as root the cluster runs
   as ``postgres`` (or ``nobody``).  :func:`stop` (called at session end by
   ``tests/conftest.py``, and at exit) stops it and deletes the directory;
3. else None (the PostgreSQL variants skip; with ``NBGW_REQUIRE_POSTGRES=1``
   they fail).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

ROLE = "nbgw"
DATABASE = "nbgw_test"
START_TIMEOUT = 60

_state: dict[str, object] = {}


def _bindir() -> str | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=os.path.dirname(found)):
        return os.path.dirname(found)

    def version(path: str) -> tuple[int, ...]:
        name = path.split(os.sep)[-3]
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    dirs = [os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
            if os.path.exists(os.path.join(os.path.dirname(p), "pg_ctl"))]
    return max(dirs, key=version) if dirs else None


def unavailable_reason() -> str | None:
    """Why no PostgreSQL can be had here, or None."""
    if os.environ.get("NBGW_TEST_PG_DSN"):
        return None
    if "error" in _state:
        return str(_state["error"])
    if _bindir() is None:
        return ("PostgreSQL not available: set NBGW_TEST_PG_DSN, or install the server "
                "binaries (apt-get install postgresql) for a throwaway cluster")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid
    raise RuntimeError("running as root and neither 'postgres' nor 'nobody' exists")


def _start() -> str:
    bindir = _bindir()
    assert bindir is not None
    owner = _run_as()
    tmp = tempfile.mkdtemp(prefix="nbgw-pg-")
    _state["tmp"] = tmp
    os.chmod(tmp, 0o700)
    if owner:
        os.chown(tmp, *owner)
    data = os.path.join(tmp, "data")
    kw: dict = {"capture_output": True, "text": True, "timeout": START_TIMEOUT, "cwd": tmp}
    if owner:
        kw.update(user=owner[0], group=owner[1], extra_groups=[])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    r = subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-U", ROLE, "-A", "trust",
                        "-E", "UTF8", "--no-sync"], env=env, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
    _state["data"] = data
    _state["pg_ctl"] = os.path.join(bindir, "pg_ctl")
    _state["kw"] = kw
    _state["env"] = env
    last = ""
    for _attempt in range(3):  # a free port can be taken between probe and bind
        port = _free_port()
        opts = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        r = subprocess.run([_state["pg_ctl"], "-D", data, "-o", opts, "-l",
                            os.path.join(tmp, "server.log"), "-w", "-t", str(START_TIMEOUT),
                            "start"], env=env, **kw)
        if r.returncode == 0:
            break
        last = r.stderr.strip() or r.stdout.strip()
    else:
        raise RuntimeError(f"pg_ctl start failed: {last[-500:]}")
    base = f"postgresql://{ROLE}@127.0.0.1:{port}"
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return f"{base}/{DATABASE}"


def dsn() -> str | None:
    """The DSN of a PostgreSQL database the tests may use, or None (see module docstring)."""
    env = os.environ.get("NBGW_TEST_PG_DSN")
    if env:
        return env
    if "dsn" in _state:
        return str(_state["dsn"])
    if unavailable_reason() is not None:
        return None
    try:
        _state["dsn"] = _start()
    except Exception as exc:  # reported as the skip/fail reason
        _state["error"] = f"throwaway PostgreSQL cluster did not start: {exc}"
        stop()
        return None
    atexit.register(stop)
    return str(_state["dsn"])


def stop() -> None:
    """Stop the throwaway cluster (if this process started one) and delete it."""
    data, tmp = _state.pop("data", None), _state.pop("tmp", None)
    _state.pop("dsn", None)
    if data and os.path.isdir(str(data)):
        subprocess.run([str(_state["pg_ctl"]), "-D", str(data), "-m", "immediate", "-w",
                        "stop"], env=_state["env"], **_state["kw"])  # type: ignore[arg-type]
    if tmp:
        shutil.rmtree(str(tmp), ignore_errors=True)
