"""mTLS client certificates of a service, management side (issue 16).

Owns a service's client-certificate settings (:class:`ClientCertAuth`): the
client CA bundle (PEM, validated by :func:`nbgateway.cabundle.parse_ca_bundle`:
CA certificates only, bounded) and the rule mapping a certificate to a user:

* ``email``: the certificate's SAN email (or a subject CN holding an email)
  equal to an active user's email (case-insensitive);
* ``list``: an explicit list of ``(match, user_id)``: a SAN email, SAN URI or
  subject CN value naming one of the account's users.

Stored as JSON in ``services.client_cert_auth`` (migration 0013), written
only through :meth:`ServiceRepository.set_client_cert_auth`.  When mappings
are built the rule is resolved against the account's users and groups
(:func:`resolve_rows`) into the table the mapping carries
(``ProxyMapping.nbgw_client_ca_pem`` / ``nbgw_client_cert_users``, fields
1005/1006), so the gateway verifies and maps a certificate without an RPC.
Blocked and pending users are left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.cabundle import BundleError, parse_ca_bundle
from nbgateway.management.errors import ValidationError

MAPPINGS = ("email", "list")
MAX_LIST = 500
MAX_MATCH = 512
#: a mapping never carries more certificate users than this
MAX_ROWS = 10_000


@dataclass(frozen=True)
class ClientCertAuth:
    ca_pem: str = ""
    mapping: str = "email"
    #: the explicit list: (match, user_id)
    users: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"ca_pem": self.ca_pem, "mapping": self.mapping,
                "users": [{"match": m, "user_id": u} for m, u in self.users]}

    @classmethod
    def from_json(cls, data: Any) -> ClientCertAuth | None:
        if not isinstance(data, dict) or not data.get("ca_pem"):
            return None
        return cls(ca_pem=str(data["ca_pem"]), mapping=str(data.get("mapping") or "email"),
                   users=tuple((str(u.get("match", "")), str(u.get("user_id", "")))
                               for u in data.get("users") or () if isinstance(u, dict)))

    def public(self) -> dict[str, Any]:
        """The REST view: the settings and each CA's subject, expiry and
        SHA-256 fingerprint."""
        out = self.to_json()
        cas = []
        try:
            for cert in parse_ca_bundle(self.ca_pem):
                cas.append({"subject": cert.subject.rfc4514_string(),
                            "not_after": cert.not_valid_after_utc.isoformat(),
                            "sha256": hashlib.sha256(cert.public_bytes(
                                serialization.Encoding.DER)).hexdigest()})
        except BundleError:
            pass
        out["enabled"] = True
        out["certificate_authorities"] = cas
        return out


def validate(body: Mapping[str, Any], known_users: Iterable[str], now: float) -> ClientCertAuth:
    """A REST/CLI body -> settings, or :class:`ValidationError` naming the field."""
    if not isinstance(body, Mapping):
        raise ValidationError("body must be an object")
    pem = body.get("ca_pem")
    if not isinstance(pem, str) or not pem.strip():
        raise ValidationError("ca_pem: a PEM bundle of CA certificates is required")
    try:
        parse_ca_bundle(pem, now=now)
    except BundleError as exc:
        raise ValidationError(f"ca_pem: {exc}") from None
    mapping = body.get("mapping", "email") or "email"
    if mapping not in MAPPINGS:
        raise ValidationError(f"mapping: must be one of {', '.join(MAPPINGS)}")
    raw = body.get("users") or []
    if not isinstance(raw, list) or len(raw) > MAX_LIST:
        raise ValidationError(f"users: a list of at most {MAX_LIST} entries")
    if mapping == "list" and not raw:
        raise ValidationError("users: the list mapping needs at least one entry")
    if mapping == "email" and raw:
        raise ValidationError("users: only with mapping 'list'")
    known = set(known_users)
    users: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, u in enumerate(raw):
        if not isinstance(u, Mapping):
            raise ValidationError(f"users[{i}]: must be an object with match and user_id")
        match, user_id = u.get("match"), u.get("user_id")
        if not isinstance(match, str) or not match.strip() or len(match) > MAX_MATCH \
                or any(ord(c) < 0x20 for c in match):
            raise ValidationError(f"users[{i}].match: a certificate name "
                                  f"(at most {MAX_MATCH} characters)")
        if not isinstance(user_id, str) or user_id not in known:
            raise ValidationError(f"users[{i}].user_id: not a user of this account")
        key = match.strip().lower() if "@" in match else match.strip()
        if key in seen:
            raise ValidationError(f"users[{i}].match: listed twice")
        seen.add(key)
        users.append((match.strip(), user_id))
    return ClientCertAuth(ca_pem=pem.strip() + "\n", mapping=mapping, users=tuple(users))


def resolve_rows(auth: ClientCertAuth, users: Iterable[Any],
                 group_names: Mapping[str, str]) -> tuple[tuple[str, str, str, tuple[str, ...],
                                                                tuple[str, ...]], ...]:
    """The certificate-user table for a mapping: ``(match, user_id, email,
    group_ids, group_names)`` of active users (``model.User``)."""
    active = {u.id: u for u in users if not u.blocked and not u.pending_approval}

    def row(match: str, u: Any) -> tuple[str, str, str, tuple[str, ...], tuple[str, ...]]:
        gids = tuple(g for g in u.auto_groups if g in group_names)
        return (match, u.id, u.email or u.id, gids, tuple(group_names[g] for g in gids))

    if auth.mapping == "list":
        out = [row(m, active[uid]) for m, uid in auth.users if uid in active]
    else:
        out = [row(u.email.lower(), u) for u in sorted(active.values(), key=lambda u: u.id)
               if u.email and not u.is_service_user]
    return tuple(out[:MAX_ROWS])


def fill_mapping(m: pb.ProxyMapping, auth: ClientCertAuth | None,
                 rows: Iterable[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]]) -> None:
    """Set fields 1005/1006 of an HTTP mapping."""
    if auth is None or not auth.ca_pem:
        return
    m.nbgw_client_ca_pem = auth.ca_pem
    for match, user_id, email, gids, gnames in rows:
        m.nbgw_client_cert_users.add(match=match, user_id=user_id, email=email,
                                     group_ids=list(gids), group_names=list(gnames))
