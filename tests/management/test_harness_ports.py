"""The management test harness survives a port taken between its probe and the
server's bind (the CI flake: "already in use by another process"), and its
ports come from below the kernel's ephemeral range."""

from __future__ import annotations

import socket

from tests.management.apiserver import ApiServer
from tests.ports import _ephemeral_low, free_port


def test_free_port_is_below_the_ephemeral_range_and_binds():
    low = _ephemeral_low()
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        port = free_port(kind)
        assert 1024 <= port < low
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", port))


def test_api_server_retries_with_new_ports_when_its_port_is_taken(tmp_path):
    server = ApiServer(str(tmp_path))
    taken = server.port
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", taken))
    squatter.listen(1)
    try:
        server.start()
        assert server.port != taken
        assert server.request("GET", "/api/openapi.json", auth=False).status == 200
    finally:
        server.stop()
        squatter.close()
