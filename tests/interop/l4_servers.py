"""Upstream servers for the L4 interop tests (run as a script inside a namespace).

    python l4_servers.py tcp-echo HOST PORT        echo; on EOF send "BYE\\n" and shut down writing
    python l4_servers.py udp-echo HOST PORT        echo every datagram back
    python l4_servers.py tls-name HOST PORT CERT KEY NAME
                                                  HTTPS: every request answered with NAME
    python l4_servers.py conn-count HOST PORT FILE  TCP echo that appends a line to FILE per accept
    python l4_servers.py hold HOST PORT            accept and keep every connection (one thread)
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _echo(conn: socket.socket) -> None:
    with conn:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            conn.sendall(data)
        conn.sendall(b"BYE\n")
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)


def tcp_echo(host: str, port: int, count_file: str | None = None) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(512)
    while True:
        conn, _ = s.accept()
        if count_file:
            with open(count_file, "a") as f:
                f.write("x\n")
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def hold(host: str, port: int) -> None:
    import selectors

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(4096)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is s:
                conn, _ = s.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
            else:
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()


def udp_echo(host: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((host, port))
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(data, addr)


def tls_name(host: str, port: int, cert: str, key: str, name: str) -> None:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd = ThreadingHTTPServer((host, port), H)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.serve_forever()


if __name__ == "__main__":
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "tcp-echo":
        tcp_echo(host, port)
    elif kind == "conn-count":
        tcp_echo(host, port, sys.argv[4])
    elif kind == "hold":
        hold(host, port)
    elif kind == "udp-echo":
        udp_echo(host, port)
    elif kind == "tls-name":
        tls_name(host, port, sys.argv[4], sys.argv[5], sys.argv[6])
    else:
        raise SystemExit(f"unknown server {kind}")
