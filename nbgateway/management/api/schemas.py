"""JSON schema components of the REST API, and the decode-level type check.

One set of definitions serves two purposes: :func:`check_types` uses them to
reject request bodies whose JSON *types* are wrong (what Go's ``json.Decode``
refuses: a string where a bool belongs, 70000 in a uint16, a fraction in an
int), and :mod:`.openapi` publishes them verbatim as ``components.schemas``.

Semantic rules (required fields, enums, lengths, the private-service rules)
are NOT checked here: they belong to :mod:`nbgateway.management.validation`
and keep upstream's exact 422 messages.  The decode step additionally refuses
strings containing NUL or unpaired surrogates and integers outside int64, so
nothing a database would choke on gets past it.  Properties whose value is
JSON ``null`` are dropped (Go decodes ``null`` as "absent").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Longest string accepted anywhere in a body (the body limit bounds it anyway).
MAX_STRING = 65536


class TypeMismatchError(ValueError):
    """A JSON value has the wrong type; ``str()`` names the path."""


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _str(**kw: Any) -> dict[str, Any]:
    return {"type": "string", **kw}


def _bool(**kw: Any) -> dict[str, Any]:
    return {"type": "boolean", **kw}


def _int(**kw: Any) -> dict[str, Any]:
    return {"type": "integer", **kw}


def _arr(items: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **kw}


def _obj(props: dict[str, Any], required: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, **kw}
    if required:
        out["required"] = list(required)
    return out


_TS = _str(format="date-time")
_UINT16 = {"x-decode-range": [0, 65535]}

TARGET_OPTIONS = _obj({
    "skip_tls_verify": _bool(),
    "request_timeout": _str(description="Go duration string, e.g. 30s"),
    "path_rewrite": _str(enum=["preserve"]),
    "custom_headers": {"type": "object", "additionalProperties": _str()},
    "proxy_protocol": _bool(),
    "session_idle_timeout": _str(description="Go duration string"),
    "direct_upstream": _bool(default=False, description=(
        "dial the target through the proxy host's network stack instead of the tunnel")),
    "upstream_protocol": _str(enum=["", "http1", "h2"], default="", description=(
        "nbgateway extension: the protocol towards an http(s) target; h2 is HTTP/2 "
        "(cleartext prior knowledge for http, ALPN h2 for https) with trailers relayed, "
        "for gRPC services; empty or http1 is HTTP/1.1")),
})

SERVICE_TARGET = _obj({
    "target_id": _str(),
    "target_type": _str(enum=["peer", "host", "domain", "subnet", "cluster"]),
    "path": _str(),
    "protocol": _str(enum=["http", "https", "tcp", "udp"]),
    "host": _str(),
    "port": _int(minimum=1, maximum=65535, **_UINT16),
    "enabled": _bool(),
    "options": _ref("ServiceTargetOptions"),
}, ("target_id", "target_type", "protocol", "port", "enabled"))

LOAD_BALANCING = _obj({
    "policy": _str(enum=["round_robin", "least_conn"], default="round_robin"),
    "max_failures": _int(minimum=0, maximum=100, description=(
        "consecutive transport failures (refused, reset, timeout before any response byte) "
        "that take a target out of rotation (0: 3)")),
    "backoff_seconds": _int(minimum=0, maximum=3600, description=(
        "first ejection's back-off, doubled per consecutive ejection (0: 10)")),
    "max_backoff_seconds": _int(minimum=0, maximum=3600, description="back-off cap (0: 300)"),
    "health_check": _obj({
        "path": _str(description="GET this path on every target; must start with /"),
        "interval_seconds": _int(minimum=0, maximum=3600, description="0: 10"),
        "timeout_seconds": _int(minimum=0, maximum=3600, description="0: 5 (at most the "
                                                                      "interval)"),
        "expected_status": _int(minimum=0, maximum=599, description="0: any 2xx or 3xx"),
    }, ("path",)),
}, description=(
    "nbgateway extension (HTTP services): how gateways choose among the targets of one path "
    "(several targets with the same path) and check their health"))

AUTH_CONFIG = _obj({
    "password_auth": _obj({"enabled": _bool(), "password": _str()}, ("enabled", "password")),
    "pin_auth": _obj({"enabled": _bool(), "pin": _str()}, ("enabled", "pin")),
    "bearer_auth": _obj({"enabled": _bool(), "distribution_groups": _arr(_str())},
                        ("enabled",)),
    "link_auth": _obj({"enabled": _bool()}, ("enabled",)),
    "header_auths": _arr(_obj({"enabled": _bool(), "header": _str(), "value": _str()},
                              ("enabled", "header", "value"))),
})

ACCESS_RESTRICTIONS = _obj({
    "allowed_cidrs": _arr(_str()),
    "blocked_cidrs": _arr(_str()),
    "allowed_countries": _arr(_str()),
    "blocked_countries": _arr(_str()),
    "crowdsec_mode": _str(enum=["off", "enforce", "observe"]),
})

_SERVICE_COMMON = {
    "name": _str(maxLength=255),
    "domain": _str(),
    "mode": _str(enum=["http", "tcp", "udp", "tls"], default="http"),
    "listen_port": _int(minimum=0, maximum=65535, **_UINT16),
    "targets": _arr(_ref("ServiceTarget")),
    "enabled": _bool(),
    "pass_host_header": _bool(),
    "rewrite_redirects": _bool(),
    "auth": _ref("ServiceAuthConfig"),
    "access_restrictions": _ref("AccessRestrictions"),
    "private": _bool(default=False, description="NetBird-only service (HTTP mode only)"),
    "access_groups": _arr(_str(), description=(
        "group ids allowed to reach a private service; required (>= 1) when private, "
        "inert otherwise; mutually exclusive with bearer auth")),
    "assertion": _str(enum=["off", "on", "required"], default="off", description=(
        "nbgateway extension: stamp a signed X-NetBird-Jwt-Assertion (EdDSA JWT, keys at "
        "/.well-known/nbgateway/jwks.json?domain=<domain>) on requests forwarded for an "
        "authenticated identity; required: never forward without one (503)")),
    "max_session_age_seconds": _int(minimum=0, maximum=30 * 86400, description=(
        "session cookie lifetime in seconds (0: 24 h; else 60 to 30 days)")),
    "load_balancing": _ref("ServiceLoadBalancing"),
}

SERVICE_REQUEST = _obj(dict(_SERVICE_COMMON), ("name", "domain", "enabled"))

SERVICE = _obj({
    "id": _str(),
    **_SERVICE_COMMON,
    "proxy_cluster": _str(),
    "port_auto_assigned": _bool(readOnly=True),
    "terminated": _bool(readOnly=True),
    "meta": _obj({"created_at": _TS, "certificate_issued_at": _TS, "status": _str(enum=[
        "pending", "active", "tunnel_not_created", "certificate_pending", "certificate_failed",
        "error"]),
        "status_message": _str(description=(
            "nbgateway extension: the message a gateway sent with its last status update "
            "(why it refused the service); omitted when none")),
        "status_updated_at": _TS}, ("created_at", "status")),
}, ("id", "name", "domain", "targets", "enabled", "auth", "meta", "private"))

SERVICE_STATUS = _obj({
    "account_id": _str(), "id": _str(), "name": _str(), "domain": _str(),
    "proxy_cluster": _str(), "status": _str(), "status_message": _str(),
    "status_updated_at": _TS,
}, ("account_id", "id", "name", "domain", "status"))

ACCOUNT = _obj({
    "id": _str(), "name": _str(), "domain": _str(), "network_v4": _str(),
    "network_v6": _str(), "created_at": _TS,
}, ("id", "name", "domain", "network_v4", "created_at"))

ACCOUNT_REQUEST = _obj({
    "name": _str(minLength=1, maxLength=255),
    "admin_email": _str(description="email of the account's first admin (optional)"),
}, ("name",))

ACCOUNT_CREATED = {"allOf": [_ref("Account"), _obj({
    "admin_user_id": _str(),
    "token": _str(description="the first admin's personal access token, shown once"),
}, ("admin_user_id", "token"))]}

PROXY_CLUSTER = _obj({
    "id": _str(), "address": _str(), "type": _str(enum=["account", "shared"]),
    "online": _bool(), "connected_proxies": _int(),
    "supports_custom_ports": _bool(), "require_subdomain": _bool(),
    "supports_crowdsec": _bool(), "private": _bool(),
}, ("id", "address", "type", "online", "connected_proxies"))

REVERSE_PROXY_DOMAIN = _obj({
    "id": _str(), "domain": _str(), "validated": _bool(), "type": _str(enum=["free", "custom"]),
    "target_cluster": _str(), "supports_custom_ports": _bool(), "require_subdomain": _bool(),
    "supports_crowdsec": _bool(), "supports_private": _bool(),
}, ("id", "domain", "validated", "type"))

DOMAIN_REQUEST = _obj({"domain": _str(), "target_cluster": _str()}, ("domain", "target_cluster"))

PROXY_TOKEN = _obj({
    "id": _str(), "name": _str(), "expires_at": _TS, "created_at": _TS, "last_used": _TS,
    "revoked": _bool(),
}, ("id", "name", "created_at", "revoked"))

PROXY_TOKEN_CREATED = {"allOf": [_ref("ProxyToken"), _obj({"plain_token": _str()},
                                                          ("plain_token",))]}

PROXY_TOKEN_REQUEST = _obj({
    "name": _str(minLength=1, maxLength=255),
    "expires_in": _int(minimum=0, description="seconds; 0 or absent = never"),
    "global": _bool(default=False, description=(
        "nbgateway extension, instance admins only: a management-wide token for a "
        "gateway that serves every account")),
}, ("name",))

PROXY_ACCESS_LOG = _obj({
    "id": _str(), "service_id": _str(), "timestamp": _TS, "method": _str(), "host": _str(),
    "path": _str(), "duration_ms": _int(), "status_code": _int(), "source_ip": _str(),
    "reason": _str(), "user_id": _str(), "auth_method_used": _str(), "country_code": _str(),
    "city_name": _str(), "subdivision_code": _str(), "bytes_upload": _int(),
    "bytes_download": _int(), "protocol": _str(),
    "metadata": {"type": "object", "additionalProperties": _str()},
    "upstream_target": _str(description=(
        "nbgateway extension: the target that served the request (scheme://host:port)")),
    "user_groups": _arr(_str(), description=(
        "nbgateway extension (not upstream): names of the user's (or peer's) groups "
        "captured when the entry was written")),
}, ("id", "service_id", "timestamp", "method", "host", "path", "duration_ms", "status_code",
    "bytes_upload", "bytes_download"))

PROXY_ACCESS_LOGS_RESPONSE = _obj({
    "data": _arr(_ref("ProxyAccessLog")), "page": _int(), "page_size": _int(),
    "total_records": _int(), "total_pages": _int(),
}, ("data", "page", "page_size", "total_records", "total_pages"))

USER = _obj({
    "id": _str(), "email": _str(), "name": _str(), "role": _str(enum=["owner", "admin", "user"]),
    "status": _str(enum=["active", "pending", "blocked"]), "auto_groups": _arr(_str()),
    "is_service_user": _bool(), "is_blocked": _bool(), "pending_approval": _bool(),
    "issued": _str(),
}, ("id", "email", "name", "role", "status", "auto_groups", "is_service_user", "is_blocked"))

USER_CREATE_REQUEST = _obj({
    "email": _str(), "name": _str(), "role": _str(enum=["owner", "admin", "user"]),
    "auto_groups": _arr(_str()), "is_service_user": _bool(),
}, ("role", "auto_groups", "is_service_user"))

USER_REQUEST = _obj({
    "role": _str(enum=["owner", "admin", "user"]), "auto_groups": _arr(_str()),
    "is_blocked": _bool(), "pending_approval": _bool(), "email": _str(), "name": _str(),
}, ("role", "auto_groups", "is_blocked"))

PERSONAL_ACCESS_TOKEN = _obj({
    "id": _str(), "name": _str(), "expiration_date": _TS, "created_by": _str(),
    "created_at": _TS, "last_used": _TS,
}, ("id", "name", "created_by", "created_at"))

PERSONAL_ACCESS_TOKEN_GENERATED = _obj({
    "plain_token": _str(), "personal_access_token": _ref("PersonalAccessToken"),
}, ("plain_token", "personal_access_token"))

PERSONAL_ACCESS_TOKEN_REQUEST = _obj({
    "name": _str(minLength=1, maxLength=255),
    "expires_in": _int(minimum=1, maximum=365, description="days"),
}, ("name", "expires_in"))

GROUP_MINIMUM = _obj({"id": _str(), "name": _str(), "peers_count": _int()},
                     ("id", "name", "peers_count"))

PEER_MINIMUM = _obj({"id": _str(), "name": _str()}, ("id", "name"))

GROUP = _obj({
    "id": _str(), "name": _str(), "peers_count": _int(), "peers": _arr(_ref("PeerMinimum")),
    "issued": _str(enum=["api", "integration", "jwt"]),
}, ("id", "name", "peers_count", "peers"))

GROUP_REQUEST = _obj({"name": _str(), "peers": _arr(_str())}, ("name",))

PEER = _obj({
    "id": _str(), "name": _str(), "ip": _str(), "ipv6": _str(), "dns_label": _str(),
    "public_key": _str(description="WireGuard public key (base64)"),
    "user_id": _str(), "endpoint": _str(description="advertised UDP endpoint host:port"),
    "connected": _bool(), "last_seen": _TS, "groups": _arr(_ref("GroupMinimum")),
    "proxy_embedded": _bool(), "proxy_cluster": _str(), "ephemeral": _bool(),
}, ("id", "name", "ip", "public_key", "connected", "groups", "proxy_embedded"))

PEER_CREATED = {"allOf": [_ref("Peer"), _obj({"private_key": _str(description=(
    "server-generated WireGuard private key; present only when no public_key was sent"))})]}

PEER_CREATE_REQUEST = _obj({
    "name": _str(),
    "public_key": _str(description="omit to let the server generate the key pair"),
    "user_id": _str(), "groups": _arr(_str()),
    "endpoint": _str(description="static UDP endpoint host:port (server peers)"),
    "proxy_cluster": _str(description=(
        "nbgateway extension: register a proxy peer serving this cluster address")),
}, ("name",))

PEER_REQUEST = _obj({
    "name": _str(), "user_id": _str(), "groups": _arr(_str()), "endpoint": _str(),
}, ("name",))

ERROR = _obj({"message": _str(), "code": _int()}, ("message", "code"))

EMPTY = _obj({})

#: inspection views of the synthetic private-service DNS/ACL and network maps;
#: their inner shape follows nbgateway.management.synthetic / networkmap
INSPECTION = {"type": "object", "additionalProperties": True}

COMPONENTS: dict[str, dict[str, Any]] = {
    "ErrorResponse": ERROR,
    "Empty": EMPTY,
    "ServiceTargetOptions": TARGET_OPTIONS,
    "ServiceTarget": SERVICE_TARGET,
    "ServiceAuthConfig": AUTH_CONFIG,
    "ServiceLoadBalancing": LOAD_BALANCING,
    "AccessRestrictions": ACCESS_RESTRICTIONS,
    "ServiceRequest": SERVICE_REQUEST,
    # machine-client service token (issue 16); expires_in_seconds 0/absent = never
    "ServiceTokenRequest": _obj({"name": _str(), "expires_in_seconds": _int()}, ("name",)),
    # mTLS client certificates (issue 16): CA bundle and certificate -> user rule
    "ClientCertAuthRequest": _obj({
        "ca_pem": _str(), "mapping": {"type": "string", "enum": ["email", "list"]},
        "users": _arr(_obj({"match": _str(), "user_id": _str()}, ("match", "user_id")))},
        ("ca_pem",)),
    "Service": SERVICE,
    "ServiceStatus": SERVICE_STATUS,
    "Account": ACCOUNT,
    "AccountRequest": ACCOUNT_REQUEST,
    "AccountCreated": ACCOUNT_CREATED,
    "ProxyCluster": PROXY_CLUSTER,
    "ReverseProxyDomain": REVERSE_PROXY_DOMAIN,
    "ReverseProxyDomainRequest": DOMAIN_REQUEST,
    "ProxyToken": PROXY_TOKEN,
    "ProxyTokenCreated": PROXY_TOKEN_CREATED,
    "ProxyTokenRequest": PROXY_TOKEN_REQUEST,
    "ProxyAccessLog": PROXY_ACCESS_LOG,
    "ProxyAccessLogsResponse": PROXY_ACCESS_LOGS_RESPONSE,
    "User": USER,
    "UserCreateRequest": USER_CREATE_REQUEST,
    "UserRequest": USER_REQUEST,
    "PersonalAccessToken": PERSONAL_ACCESS_TOKEN,
    "PersonalAccessTokenGenerated": PERSONAL_ACCESS_TOKEN_GENERATED,
    "PersonalAccessTokenRequest": PERSONAL_ACCESS_TOKEN_REQUEST,
    "GroupMinimum": GROUP_MINIMUM,
    "PeerMinimum": PEER_MINIMUM,
    "Group": GROUP,
    "GroupRequest": GROUP_REQUEST,
    "Peer": PEER,
    "PeerCreated": PEER_CREATED,
    "PeerCreateRequest": PEER_CREATE_REQUEST,
    "PeerRequest": PEER_REQUEST,
    "PrivateServiceInspection": INSPECTION,
    "PeerNetworkMap": INSPECTION,
}


_JSON_TYPE_NAMES = {"object": "object", "array": "array", "string": "string",
                    "integer": "integer", "number": "number", "boolean": "boolean"}


def check_types(value: Any, schema: Mapping[str, Any],
                components: Mapping[str, Mapping[str, Any]] = COMPONENTS,
                path: str = "") -> Any:
    """Return *value* with ``null`` properties dropped, or raise :class:`TypeMismatchError`."""
    where = path or "body"
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    if "allOf" in schema:
        for part in schema["allOf"]:
            value = check_types(value, part, components, path)
        return value
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise TypeMismatchError(f"{where}: expected object")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            _check_string(key, f"{where} key")
            if item is None:
                continue
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            child = f"{path}.{key}" if path else key
            out[key] = check_types(item, sub, components, child) if sub else item
        return out
    if kind == "array":
        if not isinstance(value, list):
            raise TypeMismatchError(f"{where}: expected array")
        items = schema.get("items", {})
        out_list = []
        for i, item in enumerate(value):
            if item is None:
                raise TypeMismatchError(f"{where}[{i}]: must not be null")
            out_list.append(check_types(item, items, components, f"{where}[{i}]"))
        return out_list
    if kind == "string":
        if not isinstance(value, str):
            raise TypeMismatchError(f"{where}: expected string")
        _check_string(value, where)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise TypeMismatchError(f"{where}: expected boolean")
        return value
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeMismatchError(f"{where}: expected {_JSON_TYPE_NAMES[kind]}")
        if kind == "integer" and not isinstance(value, int):
            raise TypeMismatchError(f"{where}: expected integer")
        low, high = schema.get("x-decode-range", (INT64_MIN, INT64_MAX))
        if isinstance(value, int) and not low <= value <= high:
            raise TypeMismatchError(f"{where}: {value} is out of range {low}..{high}")
        return value
    return value


def _check_string(value: str, where: str) -> None:
    if len(value) > MAX_STRING:
        raise TypeMismatchError(f"{where}: string longer than {MAX_STRING} characters")
    if "\x00" in value:
        raise TypeMismatchError(f"{where}: string contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise TypeMismatchError(f"{where}: string is not valid UTF-8") from None
