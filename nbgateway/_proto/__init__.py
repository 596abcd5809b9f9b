"""Generated protobuf/gRPC code for the NetBird wire contract (do not edit).

``proxy_service_pb2`` / ``proxy_service_pb2_grpc``: the ProxyService the gateway
calls (mappings, tunnel-peer validation, status, access log).
``management_pb2`` / ``management_pb2_grpc``: the peer-facing ManagementService
subset (GetServerKey, Login, Sync) an embedded peer uses.

Regenerate with ``python proto/generate.py`` after editing ``proto/*.proto``;
the generated modules are committed.
"""
