"""Every file nbgateway keeps is written through
:func:`nbgateway.atomicfile.write_atomic` with the mode it needs:
secrets (ACME keys and account, WireGuard account keys, the admin token, the
local CA key, the quickstart peer config) never readable by others under any
umask, certificates 0644 at most; a failed rewrite keeps the old file and
leaves no temporary file."""

from __future__ import annotations

import argparse
import errno
import io
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from nbgateway import atomicfile
from nbgateway.acme.client import write_private
from nbgateway.management import quickstart
from nbgateway.management.cli._certificates import ca_download
from nbgateway.management.service import write_secret_file
from nbgateway.service._accounts import account_key
from nbgateway.tls.ca import PrivateCA


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory) -> bytes:
    ca = PrivateCA(str(tmp_path_factory.mktemp("pem")))
    with open(ca.cert_path, "rb") as f:
        return f.read()


class _Client:
    def __init__(self, pem: bytes) -> None:
        self.pem = pem

    def request(self, method: str, path: str, body=None, raw: bool = False) -> bytes:
        assert (method, raw) == ("GET", True)
        return self.pem


@dataclass
class Case:
    #: writes (or rewrites, on a second call) the file and returns its path
    write: Callable[[str, bytes, int], str]
    #: the file's mode under a umask
    mode: Callable[[int], int]


def _acme(d: str, pem: bytes, n: int) -> str:
    write_private(os.path.join(d, "account.key"), b"key %d" % n)
    return os.path.join(d, "account.key")


def _token(d: str, pem: bytes, n: int) -> str:
    write_secret_file(os.path.join(d, "admin-token"), f"token {n}")
    return os.path.join(d, "admin-token")


def _account(d: str, pem: bytes, n: int) -> str:
    account_key(d, "acct-1", fresh=n > 0)
    folder = os.path.join(d, "accounts")
    return os.path.join(folder, os.listdir(folder)[0])


def _ca_key(d: str, pem: bytes, n: int) -> str:
    if n:  # the key is written once, with the CA; a rewrite is a new CA
        os.unlink(os.path.join(d, "ca.crt"))
    return PrivateCA(d).key_path


def _ca_cert(d: str, pem: bytes, n: int) -> str:
    return PrivateCA(d, permitted=[f"n{i}.example" for i in range(n + 1)]).cert_path


def _peer_ca(d: str, pem: bytes, n: int) -> str:
    path = quickstart._write_peer_ca(_Client(pem), os.path.join(d, "peer.conf"),
                                     time.monotonic() + 5)
    assert path == os.path.join(d, "nbgateway-ca.crt")
    return path


def _peer_conf(d: str, pem: bytes, n: int) -> str:
    quickstart.write_peer_config(os.path.join(d, "laptop.conf"), f"[Interface]\n# {n}\n")
    return os.path.join(d, "laptop.conf")


def _download(d: str, pem: bytes, n: int) -> str:
    out = os.path.join(d, "ca.crt")
    ca_download(_Client(pem), argparse.Namespace(output=out), io.StringIO())
    return out


CASES = {
    "acme write_private": Case(_acme, lambda mask: 0o600 & ~mask),
    "admin token": Case(_token, lambda mask: 0o600),
    "account key": Case(_account, lambda mask: 0o600 & ~mask),
    "local CA key": Case(_ca_key, lambda mask: 0o600),
    "local CA cert": Case(_ca_cert, lambda mask: 0o644),
    "quickstart peer CA": Case(_peer_ca, lambda mask: 0o644 & ~mask),
    "quickstart peer config": Case(_peer_conf, lambda mask: 0o600 & ~mask),
    "ca download": Case(_download, lambda mask: 0o644 & ~mask),
}


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize("name", CASES)
def test_each_writer_gives_its_mode_under_any_umask(tmp_path, ca_pem, name, mask):
    case = CASES[name]
    old = os.umask(mask)
    try:
        path = case.write(str(tmp_path), ca_pem, 0)
        os.chmod(path, 0o666)  # a rewrite narrows a file made wider meanwhile
        path = case.write(str(tmp_path), ca_pem, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == case.mode(mask)
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]


@pytest.mark.parametrize("name", CASES)
def test_each_writer_keeps_the_old_file_when_the_rewrite_fails(tmp_path, ca_pem, monkeypatch,
                                                                name):
    case = CASES[name]
    path = case.write(str(tmp_path), ca_pem, 0)
    with open(path, "rb") as f:
        before = f.read()
    listing = sorted(os.listdir(os.path.dirname(path)))

    def fail(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(atomicfile.os, "replace", fail)
    with pytest.raises(OSError):
        case.write(str(tmp_path), ca_pem, 1)
    with open(path, "rb") as f:
        assert f.read() == before
    after = os.listdir(os.path.dirname(path))  # (the CA key case removed ca.crt itself)
    assert set(after) <= set(listing) and not [n for n in after if n.startswith(".")]


def test_the_peer_config_goes_to_a_pipe_in_place(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    got: list[str] = []

    def read() -> None:
        with open(fifo) as f:
            got.append(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    quickstart.write_peer_config(fifo, "[Interface]\n")
    reader.join(10)
    assert got == ["[Interface]\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["fifo"]


#: files that still rename or make temporary files by hand, and why
HAND_ROLLED = {
    "nbgateway/atomicfile.py": "the one writer",
    "nbgateway/tap.py": "debug heap/malloc snapshots on SIGUSR2 (not kept state)",
    "nbgateway/management/crypto_box.py": "create-if-absent by link(): the first key wins, "
                                          "never replaced (another operation)",
}


def test_no_new_hand_rolled_atomic_writer():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    found = set()
    for dirpath, _dirs, files in os.walk(os.path.join(root, "nbgateway")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                if any(s in text for s in ("os.replace(", "os.rename(", "mkstemp(")):
                    found.add(os.path.relpath(path, root))
    assert found <= set(HAND_ROLLED), f"write kept files with nbgateway.atomicfile: {found}"
