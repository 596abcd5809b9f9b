"""Kernel-side helper for the netstack TCP interop tests and ``bench/netstack.py``.

Run inside the test's network namespace (``ip netns exec T python <this file> MODE ...``)
so the Linux kernel's TCP stack talks to the gateway's netstack through wireguard-go.
Only ever addresses tunnel addresses given on the command line.  Standard library only.

Modes (results are printed as ``KEY value ...`` lines on stdout):

- ``upload HOST PORT NBYTES SEED``: send the deterministic stream, half-close, read
  the gateway's reply; prints ``SENT <sha256> <n>`` and ``REPLY <reply>``.
- ``download HOST PORT``: read until EOF; prints ``RECV <sha256> <n>``.
- ``serve HOST PORT NBYTES SEED``: listen, print ``READY``, accept one connection,
  send the stream (then half-close) while receiving until EOF; prints ``RECV`` and
  ``SENT`` lines.
- ``many HOST PORT N``: open N connections first, then send one request on each,
  then read every response; prints ``OK <count>`` and ``BAD ...`` lines.
- ``flood DST DPORT N``: N IPv4 SYNs with spoofed sources in 100.64.1.0-100.64.255.255
  through a raw socket; prints ``SENT <n>``.
- ``blast HOST PORT SECONDS``: send as fast as possible for SECONDS, half-close,
  wait for EOF; prints ``SENT <n> <elapsed>``.
- ``sink HOST PORT``: read until EOF; prints ``RECV <n> <elapsed-from-first-byte>``.
- ``idle HOST PORT N``: print ``START <unix time>``, open N connections (non-blocking,
  all at once), print ``CONNECTED <n> <elapsed>``, keep them open until stdin closes.
"""

from __future__ import annotations

import hashlib
import random
import resource
import select
import socket
import struct
import sys
import threading
import time

CHUNK = 64 * 1024


def stream_chunks(nbytes: int, seed: str):
    """The deterministic test stream: SHAKE-256 of ``seed:i`` per 64 KiB chunk."""
    i = 0
    left = nbytes
    while left > 0:
        n = min(CHUNK, left)
        yield hashlib.shake_256(f"{seed}:{i}".encode()).digest(n)
        left -= n
        i += 1


def connect(host: str, port: int, timeout: float = 30.0) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def recv_all(s: socket.socket) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    buf = bytearray(256 * 1024)
    while True:
        k = s.recv_into(buf)
        if not k:
            return h.hexdigest(), n
        h.update(memoryview(buf)[:k])
        n += k


def send_stream(s: socket.socket, nbytes: int, seed: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for chunk in stream_chunks(nbytes, seed):
        s.sendall(chunk)
        h.update(chunk)
        n += len(chunk)
    s.shutdown(socket.SHUT_WR)
    return h.hexdigest(), n


def upload(host: str, port: str, nbytes: str, seed: str) -> None:
    s = connect(host, int(port))
    sha, n = send_stream(s, int(nbytes), seed)
    print("SENT", sha, n, flush=True)
    reply = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        reply += d
    print("REPLY", reply.decode().strip(), flush=True)


def download(host: str, port: str) -> None:
    s = connect(host, int(port))
    sha, n = recv_all(s)
    print("RECV", sha, n, flush=True)


def serve(host: str, port: str, nbytes: str, seed: str) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(1)
    srv.settimeout(30)
    print("READY", flush=True)
    s, _ = srv.accept()
    s.settimeout(60)
    sent: list = []
    t = threading.Thread(target=lambda: sent.extend(send_stream(s, int(nbytes), seed)))
    t.start()
    sha, n = recv_all(s)
    t.join()
    print("RECV", sha, n, flush=True)
    print("SENT", *sent, flush=True)


def many(host: str, port: str, count: str) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    socks = [connect(host, int(port)) for _ in range(int(count))]
    for i, s in enumerate(socks):
        s.sendall(f"GET /conn/{i} HTTP/1.0\r\nHost: gw\r\n\r\n".encode())
    ok = 0
    for i, s in enumerate(socks):
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        if data.startswith(b"HTTP/1.") and data.endswith(f"reply {i}\n".encode()):
            ok += 1
        else:
            print("BAD", i, data[:200], flush=True)
    print("OK", ok, flush=True)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def flood(dst: str, dport: str, count: str) -> None:
    rng = random.Random(1234)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    d = socket.inet_aton(dst)
    port = int(dport)
    sent = 0
    for k in range(int(count)):
        src = socket.inet_aton(f"100.64.{rng.randint(1, 255)}.{rng.randint(1, 254)}")
        sport = rng.randint(1024, 65535)
        opts = struct.pack("!BBH", 2, 4, 1460)  # MSS
        tcp = struct.pack("!HHIIBBHHH", sport, port, rng.getrandbits(32), 0,
                          (5 + len(opts) // 4) << 4, 0x02, 64240, 0, 0) + opts
        pseudo = src + d + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), k & 0xFFFF, 0, 64, 6, 0,
                         src, d)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        raw.sendto(ip + tcp, (dst, 0))
        sent += 1
        if k % 50 == 49:
            time.sleep(0.01)  # stay inside the UDP socket buffers, not a rate test
    print("SENT", sent, flush=True)


def blast(host: str, port: str, seconds: str) -> None:
    s = connect(host, int(port))
    buf = bytes(1024 * 1024)
    n = 0
    start = time.monotonic()
    end = start + float(seconds)
    while time.monotonic() < end:
        s.sendall(buf)
        n += len(buf)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print("SENT", n, time.monotonic() - start, flush=True)


def sink(host: str, port: str) -> None:
    s = connect(host, int(port))
    buf = bytearray(256 * 1024)
    n = 0
    first = None
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        if first is None:
            first = time.monotonic()
        n += k
    print("RECV", n, time.monotonic() - (first or time.monotonic()), flush=True)


def idle(host: str, port: str, count: str) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    print("START", repr(time.time()), flush=True)
    start = time.monotonic()
    pending = {}
    for _ in range(int(count)):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        pending[s.fileno()] = s
    done = []
    poll = select.poll()
    for fd in pending:
        poll.register(fd, select.POLLOUT)
    deadline = start + 60
    while pending and time.monotonic() < deadline:
        for fd, _ev in poll.poll(1000):
            s = pending.pop(fd)
            poll.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done.append(s)
    print("CONNECTED", len(done), time.monotonic() - start, flush=True)
    sys.stdin.read()
    for s in done:
        s.close()


MODES = {"upload": upload, "download": download, "serve": serve, "many": many,
         "flood": flood, "blast": blast, "sink": sink, "idle": idle}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])
