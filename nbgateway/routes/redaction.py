"""THE redaction of a ``ProxyMapping`` for logs (security relevant: one copy).

:func:`redacted` returns a deep copy with a non-empty ``auth_token``, every
non-empty ``header_auths[].hashed_value`` and every ``custom_headers`` value
replaced by ``[REDACTED]``, as are the identity assertion signing keys
``nbgw_assertion.private_key`` and ``next_private_key`` and every service
token's ``secret_sha256`` and the certificate names and emails of the mTLS
user table (header names, token ids, user ids, the client CA bundle and
``session_key``, public keys, kept; empty fields stay empty; unset
sub-messages stay unset; the original is never mutated).
:func:`redacted_json` renders that copy as single-line protojson (proto
field names, zero values included) and :class:`LazyRedacted` defers that
work until a log observer actually formats it, so a filtered-out debug line
costs nothing.  The mapping store and the log observers both use these;
nothing else redacts mappings.
"""

from __future__ import annotations

from google.protobuf import json_format

from nbgateway._proto import proxy_service_pb2 as pb

REDACTED = "[REDACTED]"


def redacted(mapping: pb.ProxyMapping) -> pb.ProxyMapping:
    """A redacted deep copy of ``mapping`` (see the module docstring)."""
    copy = pb.ProxyMapping()
    copy.CopyFrom(mapping)
    if copy.auth_token:
        copy.auth_token = REDACTED
    if copy.HasField("auth"):
        for header_auth in copy.auth.header_auths:
            if header_auth.hashed_value:
                header_auth.hashed_value = REDACTED
    if copy.HasField("nbgw_assertion"):
        if copy.nbgw_assertion.private_key:
            copy.nbgw_assertion.private_key = REDACTED
        if copy.nbgw_assertion.next_private_key:
            copy.nbgw_assertion.next_private_key = REDACTED
    for token in copy.nbgw_tokens:
        if token.secret_sha256:
            token.secret_sha256 = REDACTED
    for user in copy.nbgw_client_cert_users:  # mTLS: emails/names are personal data
        if user.match:
            user.match = REDACTED
        if user.email:
            user.email = REDACTED
    for path in copy.path:
        if path.HasField("options"):
            headers = path.options.custom_headers
            for name in list(headers):
                headers[name] = REDACTED
    return copy


def redacted_json(mapping: pb.ProxyMapping) -> str:
    """Single-line protojson of :func:`redacted` (proto field names, zero values)."""
    return json_format.MessageToJson(
        redacted(mapping),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=None,
    )


class LazyRedacted:
    """A log field value that renders a mapping redacted, and only when
    formatted: ``log.debug("mapping {mapping}", mapping=LazyRedacted(m))``."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: pb.ProxyMapping) -> None:
        self._mapping = mapping

    def __str__(self) -> str:
        return redacted_json(self._mapping)

    __repr__ = __str__
