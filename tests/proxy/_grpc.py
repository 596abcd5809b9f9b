"""A real grpcio upstream and client helpers for the gRPC / HTTP/2 tests.

The service ``nbgw.test.Echo`` uses grpc's generic handlers with raw bytes
(no generated stubs):

- ``Unary``: answers ``echo:<request>``, records the request metadata, sends
  initial metadata ``x-initial: hello`` and trailing metadata
  ``x-trailing: bye`` and ``x-trail-bin`` (binary);
- ``Stream`` (server streaming): ``<n>`` -> ``msg0`` .. ``msg<n-1>``; after
  ``msg0`` it waits until :attr:`EchoGrpc.release` is set (so a test can
  prove ``msg0`` reached the client before the rest was even produced) and
  records a cancellation in :attr:`EchoGrpc.cancelled`;
- ``Fail``: aborts with ``PERMISSION_DENIED`` / ``nope: denied`` and trailing
  metadata ``x-why: because`` before anything else (a trailers-only answer);
- ``FailLate``: sends initial metadata first, then aborts with
  ``RESOURCE_EXHAUSTED`` (status in real trailers);
- ``Upload`` (client streaming): answers the total byte count;
- ``Big`` (server streaming): ``<n>`` messages of 16 KiB;
- ``Chat`` (bidirectional): says ``hello`` before reading, then answers
  ``re:<message>`` to each message.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization

SERVICE = "nbgw.test.Echo"


class EchoGrpc:
    def __init__(self, *, tls: tuple[bytes, bytes] | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.metadata: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.cancelled = threading.Event()
        self.stream_started = threading.Event()
        self.released_before_first = None
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Stream": grpc.unary_stream_rpc_method_handler(self._stream),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
            "FailLate": grpc.unary_unary_rpc_method_handler(self._fail_late),
            "Upload": grpc.stream_unary_rpc_method_handler(self._upload),
            "Big": grpc.unary_stream_rpc_method_handler(self._big),
            "Chat": grpc.stream_stream_rpc_method_handler(self._chat),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if tls is None:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        else:
            key, cert = tls
            creds = grpc.ssl_server_credentials([(key, cert)])
            self.port = self.server.add_secure_port(f"{host}:{port}", creds)
        self.server.start()

    def stop(self) -> None:
        self.release.set()
        self.server.stop(0)

    # -- handlers (grpc's threads) ----------------------------------------
    def _unary(self, request: bytes, context: Any) -> bytes:
        self.metadata.append(dict(context.invocation_metadata()))
        context.send_initial_metadata((("x-initial", "hello"),))
        context.set_trailing_metadata((("x-trailing", "bye"), ("x-trail-bin", b"\x00\x01\xff")))
        return b"echo:" + request

    def _stream(self, request: bytes, context: Any):
        self.metadata.append(dict(context.invocation_metadata()))
        context.add_callback(self.cancelled.set)
        self.stream_started.set()
        context.set_trailing_metadata((("x-count", request.decode()),))
        for i in range(int(request)):
            yield b"msg%d" % i
            if i == 0:
                self.release.wait(20)

    def _fail(self, request: bytes, context: Any) -> bytes:
        self.metadata.append(dict(context.invocation_metadata()))
        context.set_trailing_metadata((("x-why", "because"),))
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "nope: denied")
        return b""

    def _fail_late(self, request: bytes, context: Any) -> bytes:
        context.send_initial_metadata((("x-initial", "late"),))
        context.set_trailing_metadata((("x-why", "late"),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too much")
        return b""

    def _big(self, request: bytes, context: Any):
        chunk = b"b" * 16384
        for _ in range(int(request)):
            yield chunk

    def _chat(self, requests: Any, context: Any):
        yield b"hello"  # before reading anything
        for r in requests:
            yield b"re:" + r

    def _upload(self, requests: Any, context: Any) -> bytes:
        total = sum(len(r) for r in requests)
        return str(total).encode()


def leaf_pems(ca: Any, name: str = "localhost") -> tuple[bytes, bytes]:
    """``(key_pem, cert_pem)`` of a server certificate for ``name`` from the
    gateway's local CA (``CertificateStore(...).ca``)."""
    cert, key = ca.sign_leaf(name, 1)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_messages(body: bytes) -> list[bytes]:
    out = []
    while len(body) >= 5:
        n = int.from_bytes(body[1:5], "big")
        out.append(body[5:5 + n])
        body = body[5 + n:]
    return out


def method(channel: Any, name: str, kind: str = "unary_unary") -> Any:
    return getattr(channel, kind)(f"/{SERVICE}/{name}")


def tls_channel(port: int, ca_pem: bytes, authority: str) -> Any:
    """A grpcio channel to 127.0.0.1:``port`` over TLS trusting ``ca_pem``,
    with SNI, certificate name and ``:authority`` ``authority``."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[
        ("grpc.ssl_target_name_override", authority),
        ("grpc.default_authority", authority)])
