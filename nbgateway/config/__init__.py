"""The gateway's configuration model: one flag table, environment overlay,
validation.  Pure: no sockets, no files, no DNS.

This package owns the table (:class:`Setting`, :data:`SETTINGS`), the
validated :class:`Config` and :func:`load` with its cross-setting checks; the
per-value parsers (text -> value) and :class:`HostPort` live in
:mod:`nbgateway.config._parsers` and are re-exported here.

:data:`SETTINGS` is the single definition of every setting (flag name,
``NB_PROXY_*`` environment variable, default, help text, parser).  The
``twistd nbgateway`` options (:mod:`nbgateway.options`) and :func:`load` are
both built from it, so help text and validation exist once.

Precedence: a flag given on the command line wins;
otherwise its environment variable **when set** (even to the empty string, as
upstream's ``os.LookupEnv``); otherwise the default.  Unlike upstream, which
silently falls back to the default on an unparsable environment value, every
invalid value -- flag or environment -- is rejected with a one-line
:class:`ConfigError` naming the flag (fail closed).

Differences from upstream netbird-proxy, on purpose:

* ``--mgmt`` has no default: without it the management service runs
  in-process (the embedded default).  ``NB_PROXY_TOKEN`` is required only when
  ``--mgmt`` is given, with upstream's error text.
* ``--domain`` is required with ``--mgmt``; the embedded default uses
  :data:`EMBEDDED_DOMAIN`.
* ``--wg-port`` defaults to 51820: all accounts share one demultiplexed UDP
  port here, so a fixed port does not limit us to one account.
* Listen hosts (``--addr``, ``--health-addr``) must be an IP literal,
  ``localhost`` or empty (all interfaces): resolving names is I/O.
* Added: ``--wg-endpoint``, ``--log-format``, ``--datadir``,
  ``--tunnel-http-port``, ``--tunnel-https-port``, ``--drain-timeout``.
* ``--l4-public-ports`` (default ``1024-65535``): the host ports public L4
  services may bind (upstream binds any ``listen_port``; ports below 1024 are
  the operator's).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from nbgateway.config._parsers import (
    HostPort,
    PortRanges,
    _choice,
    _management_urls,
    parse_bool,
    parse_cache_ttl,
    parse_direct_upstream_allow,
    parse_domain,
    parse_duration,
    parse_endpoint,
    parse_listen,
    parse_management_url,
    parse_nonempty,
    parse_optional_domain,
    parse_optional_listen,
    parse_port,
    parse_port_or_zero,
    parse_port_ranges,
    parse_positive_duration,
    parse_positive_int,
    parse_preshared_key,
    parse_text,
    parse_trusted_proxies,
)

__all__ = [
    "BY_FLAG",
    "BY_NAME",
    "DEFAULT_L4_PUBLIC_PORTS",
    "DEFAULT_WG_PORT",
    "EMBEDDED_DOMAIN",
    "FORWARDED_PROTOS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "REDACTED",
    "SETTINGS",
    "TOKEN_ENV",
    "TOKEN_REQUIRED",
    "Config",
    "ConfigError",
    "HostPort",
    "PortRanges",
    "Setting",
    "load",
    "parse_bool",
    "parse_cache_ttl",
    "parse_direct_upstream_allow",
    "parse_domain",
    "parse_duration",
    "parse_endpoint",
    "parse_listen",
    "parse_management_url",
    "parse_nonempty",
    "parse_optional_domain",
    "parse_optional_listen",
    "parse_port",
    "parse_port_or_zero",
    "parse_port_ranges",
    "parse_positive_duration",
    "parse_positive_int",
    "parse_preshared_key",
    "parse_text",
    "parse_trusted_proxies",
]

TOKEN_ENV = "NB_PROXY_TOKEN"
TOKEN_REQUIRED = f"proxy token is required: set {TOKEN_ENV} environment variable"
EMBEDDED_DOMAIN = "nbgateway.internal"
DEFAULT_WG_PORT = 51820
REDACTED = "[REDACTED]"

#: Upstream (logrus) level names accepted by ``--log-level``.
LOG_LEVELS = ("panic", "fatal", "error", "warn", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
FORWARDED_PROTOS = ("auto", "http", "https")
#: host ports public L4 services may bind by default (below 1024: the operator's)
DEFAULT_L4_PUBLIC_PORTS = PortRanges(((1024, 65535),))


class ConfigError(ValueError):
    """An invalid setting; ``str()`` is one line naming the flag."""


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting.  ``flag`` is None for environment-only settings."""

    name: str                       # Config attribute
    flag: str | None
    env: str
    default: str                    # textual default, parsed like any input
    help: str
    parse: Callable[[str], Any]
    is_bool: bool = False           # a presence flag (``--private``), value from env/default
    hidden: bool = False            # honoured, but not shown by --help
    secret: bool = False            # never shown in logs/repr

    @property
    def label(self) -> str:
        return f"--{self.flag}" if self.flag else self.env


def _s(name: str, env: str, default: str, help: str, parse: Callable[[str], Any], *,
       flag: str | None = "", **kw: Any) -> Setting:
    return Setting(name=name, flag=name.replace("_", "-") if flag == "" else flag, env=env,
                   default=default, help=help, parse=parse, **kw)


SETTINGS: tuple[Setting, ...] = (
    _s("mgmt", "NB_PROXY_MANAGEMENT_ADDRESS", "",
       "management gRPC URL (http[s]://host:port); empty runs management in-process",
       parse_management_url),
    _s("addr", "NB_PROXY_ADDRESS", ":443", "public listener HOST:PORT", parse_listen),
    _s("domain", "NB_PROXY_DOMAIN", "",
       f"cluster domain of this proxy (required with --mgmt; embedded: {EMBEDDED_DOMAIN})",
       parse_optional_domain),
    _s("cert_dir", "NB_PROXY_CERTIFICATE_DIRECTORY", "./certs",
       "directory of per-domain certificates", parse_nonempty),
    _s("wildcard_cert_dir", "NB_PROXY_WILDCARD_CERT_DIR", "",
       "directory of wildcard certificates", parse_text),
    _s("wg_port", "NB_PROXY_WG_PORT", str(DEFAULT_WG_PORT),
       "WireGuard UDP port shared by all accounts (0 = random)", parse_port_or_zero),
    _s("wg_endpoint", "NB_PROXY_WG_ENDPOINT", "",
       "public WireGuard HOST:PORT advertised to peers (default: <domain>:<wg-port> with "
       "--mgmt; embedded: 127.0.0.1:<wg-port>, set it for peers on other machines)",
       parse_endpoint),
    _s("private", "NB_PROXY_PRIVATE", "false",
       "private services: per-account inbound listeners on each account's tunnel address "
       "(reachable only from peers through WireGuard) and the 'private' capability",
       parse_bool, is_bool=True),
    _s("health_addr", "NB_PROXY_HEALTH_ADDRESS", "localhost:8080",
       "health and /metrics listener HOST:PORT (empty disables)", parse_optional_listen),
    _s("trusted_proxies", "NB_PROXY_TRUSTED_PROXIES", "",
       "comma-separated trusted upstream proxy IPs/CIDRs", parse_trusted_proxies),
    _s("direct_upstream_allow", "NB_PROXY_DIRECT_UPSTREAM_ALLOW", "",
       "where direct_upstream targets may connect: comma-separated CIDR[@ACCOUNT[+ACCOUNT...]] "
       "(empty: nowhere; the embedded default adds loopback for its own account; "
       "never this gateway's own listeners)", parse_direct_upstream_allow),
    _s("forwarded_proto", "NB_PROXY_FORWARDED_PROTO", "auto",
       "X-Forwarded-Proto for backends: auto, http or https", _choice(FORWARDED_PROTOS)),
    _s("max_dial_timeout", "NB_PROXY_MAX_DIAL_TIMEOUT", "0",
       "cap on upstream dial timeouts, Go duration (0 = no cap)", parse_duration),
    _s("max_session_idle_timeout", "NB_PROXY_MAX_SESSION_IDLE_TIMEOUT", "0",
       "cap on L4 session idle timeouts, Go duration (0 = no cap)", parse_duration),
    _s("max_relays", "NB_PROXY_MAX_RELAYS", "4096",
       "most live L4 TCP relays per port router (beyond it new connections are closed)",
       parse_positive_int),
    _s("max_tunnel_connections", "NB_PROXY_MAX_TUNNEL_CONNECTIONS", "16384",
       "most TCP connections one account's tunnel netstack holds, inbound and outgoing "
       "(TIME-WAIT apart); beyond it new ones are refused with RST",
       parse_positive_int),
    _s("l4_public_ports", "NB_PROXY_L4_PUBLIC_PORTS", str(DEFAULT_L4_PUBLIC_PORTS),
       "host ports public TCP/TLS/UDP L4 services may bind: comma-separated ports and "
       "ranges (8000-8999,10000-20000; empty: none); others are refused (ERROR). TLS "
       "services on --addr's port share its listener and are always allowed. Advertised "
       "to management, which refuses other ports at create (422) and auto-assigns inside",
       parse_port_ranges),
    _s("proxy_protocol", "NB_PROXY_PROXY_PROTOCOL", "false",
       "accept PROXY protocol v1/v2 on the public listener and public L4 ports "
       "(--trusted-proxies must send it, others' headers are ignored)", parse_bool, is_bool=True),
    _s("preshared_key", "NB_PROXY_PRESHARED_KEY", "",
       "WireGuard pre-shared key between proxy and peers (prefer the env var)",
       parse_preshared_key, secret=True),
    _s("supports_custom_ports", "NB_PROXY_SUPPORTS_CUSTOM_PORTS", "true",
       "capability: can bind arbitrary L4 ports (true/false)", parse_bool),
    _s("require_subdomain", "NB_PROXY_REQUIRE_SUBDOMAIN", "false",
       "capability: services must be subdomains of --domain", parse_bool, is_bool=True),
    _s("log_level", "NB_PROXY_LOG_LEVEL", "info",
       "log level: panic, fatal, error, warn, info, debug or trace", _choice(LOG_LEVELS)),
    _s("debug", "NB_PROXY_DEBUG_LOGS", "false", "deprecated: same as --log-level debug",
       parse_bool, is_bool=True),
    _s("log_format", "NB_PROXY_LOG_FORMAT", "text", "log format: text or json",
       _choice(LOG_FORMATS)),
    _s("datadir", "NB_PROXY_DATADIR", "./nbgateway-data",
       "data directory of the embedded management (SQLite, admin token)", parse_nonempty),
    _s("tunnel_http_port", "NB_PROXY_TUNNEL_HTTP_PORT", "80",
       "HTTP port of the per-account tunnel listeners", parse_port),
    _s("tunnel_https_port", "NB_PROXY_TUNNEL_HTTPS_PORT", "443",
       "HTTPS port of the per-account tunnel listeners", parse_port),
    _s("drain_timeout", "NB_PROXY_DRAIN_TIMEOUT", "30s",
       "graceful shutdown: how long in-flight requests may finish, Go duration",
       parse_duration),
    _s("handshake_timeout", "NB_PROXY_HANDSHAKE_TIMEOUT", "10s",
       "deadline for a client's TLS handshake on every listener, Go duration "
       "(like the 10s public read-header deadline)", parse_positive_duration),
    _s("allow_underscore_headers", "NB_PROXY_ALLOW_UNDERSCORE_HEADERS", "false",
       "forward request header names containing '_' (dropped by default, as nginx; "
       "identity and forwarding headers are stripped in any spelling either way)",
       parse_bool, is_bool=True),
    _s("acme_certs", "NB_PROXY_ACME_CERTIFICATES", "false",
       "obtain certificates for public domains from an ACME server (--acme-dir)",
       parse_bool, is_bool=True),
    _s("acme_addr", "NB_PROXY_ACME_ADDRESS", ":80",
       "listener HOST:PORT answering ACME http-01 challenges (http-01 only)", parse_listen),
    _s("acme_dir", "NB_PROXY_ACME_DIRECTORY", "https://acme-v02.api.letsencrypt.org/directory",
       "ACME directory URL (any RFC 8555 server)", parse_nonempty),
    _s("acme_challenge_type", "NB_PROXY_ACME_CHALLENGE_TYPE", "tls-alpn-01",
       "ACME challenge: tls-alpn-01 (on --addr) or http-01 (on --acme-addr)",
       _choice(("tls-alpn-01", "http-01"))),
    _s("acme_eab_kid", "NB_PROXY_ACME_EAB_KID", "",
       "ACME external account binding key id", parse_text),
    _s("acme_eab_hmac_key", "NB_PROXY_ACME_EAB_HMAC_KEY", "",
       "ACME external account binding HMAC key, base64url (prefer the env var)",
       parse_text, secret=True),
    _s("acme_email", "NB_PROXY_ACME_EMAIL", "",
       "contact email of the ACME account (optional)", parse_text),
    _s("acme_ca_bundle", "NB_PROXY_ACME_CA_BUNDLE", "",
       "PEM file of CAs trusted for the ACME directory's own HTTPS (empty: system store)",
       parse_text),
    # environment-only
    _s("token", TOKEN_ENV, "", "proxy access token (required with --mgmt)", parse_text,
       flag=None, secret=True),
    _s("allow_insecure", "NB_PROXY_ALLOW_INSECURE", "false",
       "allow plaintext gRPC to a non-loopback management", parse_bool, flag=None),
    _s("tunnel_cache_ttl", "NB_PROXY_TUNNEL_CACHE_TTL", "5m",
       "ValidateTunnelPeer cache TTL, Go duration (invalid: warning, 5m)", parse_cache_ttl,
       flag=None),
    _s("mapping_batch_watchdog", "NB_PROXY_MAPPING_BATCH_WATCHDOG", "2m",
       "longest time applying one mapping batch may take, Go duration",
       parse_positive_duration, flag=None),
    _s("acme_retry_base", "NB_PROXY_ACME_RETRY_BASE", "1m",
       "first retry delay after a failed ACME order, doubling per failure up to 6h, "
       "Go duration", parse_positive_duration, flag=None),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
BY_FLAG: dict[str, Setting] = {s.flag: s for s in SETTINGS if s.flag}


@dataclass(frozen=True)
class Config:
    """Validated gateway settings (see :data:`SETTINGS` for meaning and defaults)."""

    mgmt: str
    addr: HostPort
    domain: str
    cert_dir: str
    wildcard_cert_dir: str
    wg_port: int
    wg_endpoint: str
    private: bool
    health_addr: HostPort | None
    trusted_proxies: tuple[str, ...]
    direct_upstream_allow: str
    forwarded_proto: str
    max_dial_timeout: float
    max_session_idle_timeout: float
    proxy_protocol: bool
    preshared_key: str
    supports_custom_ports: bool
    require_subdomain: bool
    log_level: str
    debug: bool
    log_format: str
    datadir: str
    tunnel_http_port: int
    tunnel_https_port: int
    drain_timeout: float
    handshake_timeout: float
    allow_underscore_headers: bool
    token: str
    allow_insecure: bool
    tunnel_cache_ttl: float
    mapping_batch_watchdog: float
    acme_certs: bool = False
    acme_addr: HostPort | None = None
    acme_dir: str = ""
    acme_challenge_type: str = "tls-alpn-01"
    acme_eab_kid: str = ""
    acme_eab_hmac_key: str = ""
    acme_email: str = ""
    acme_ca_bundle: str = ""
    acme_retry_base: float = 60.0
    max_relays: int = 4096
    max_tunnel_connections: int = 16384
    l4_public_ports: PortRanges = DEFAULT_L4_PUBLIC_PORTS

    @property
    def embedded(self) -> bool:
        """True when management runs in-process (no ``--mgmt``)."""
        return not self.mgmt

    @property
    def effective_log_level(self) -> str:
        """``--debug`` forces debug (upstream's deprecated flag)."""
        return "debug" if self.debug else self.log_level

    def advertised_wg_endpoint(self, bound_port: int | None = None) -> str:
        """``--wg-endpoint``, else ``<domain>:<port>`` with the bound port when
        known; embedded (no ``--mgmt``): ``127.0.0.1:<port>``, since the embedded
        domain is not a resolvable name (peers on other machines need
        ``--wg-endpoint``)."""
        if self.wg_endpoint:
            return self.wg_endpoint
        port = bound_port if bound_port is not None else self.wg_port
        host = "127.0.0.1" if self.embedded else self.domain
        return f"{host}:{port}"

    def for_log(self) -> dict[str, Any]:
        """Every setting with secrets reduced to presence booleans."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            value = getattr(self, s.name)
            if s.secret:
                out[f"{s.name}_present"] = bool(value)
            else:
                out[s.name] = (str(value) if isinstance(value, (HostPort, PortRanges))
                               else value)
        return out

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if BY_NAME[f.name].secret and value:
                value = REDACTED
            parts.append(f"{f.name}={value!r}")
        return f"Config({', '.join(parts)})"


def _invalid(setting: Setting, raw: str, source: str | None, reason: str) -> ConfigError:
    where = f" (from {source})" if source else ""
    return ConfigError(f"invalid {setting.label} value {raw!r}{where}: {reason}")


def load(flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config`.

    ``flags`` maps a setting name or flag (``"wg_port"`` / ``"wg-port"``) to the
    command-line value: a string, or for presence flags (``is_bool``) a truthy
    value when given; None / a false non-string means "not given".  Library
    callers may also pass environment-only settings (``token``) here; the
    command line cannot (they have no flag).  ``environ``
    defaults to an empty mapping (pass ``os.environ`` explicitly: no I/O here).
    """
    flags = {k.replace("-", "_"): v for k, v in (flags or {}).items()}
    unknown = set(flags) - set(BY_NAME)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    environ = environ or {}
    values: dict[str, Any] = {}
    for s in SETTINGS:
        given = flags.get(s.name)
        if s.is_bool and given is not None and not isinstance(given, str):
            if given:  # a presence flag that was given
                values[s.name] = True
                continue
            given = None
        if given is not None:
            raw, source = str(given), None
        elif s.env in environ:
            raw, source = environ[s.env], s.env
        else:
            raw, source = s.default, "default"
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            raise _invalid(s, raw, source, str(exc)) from None
    cfg = _cross_check(Config(**values))
    if cfg.embedded:
        # the embedded default is a working private-service gateway: its own
        # management serves private mappings only to a proxy that reports the
        # private capability
        cfg = replace(cfg, domain=cfg.domain or EMBEDDED_DOMAIN, private=True)
    return cfg


def _cross_check(cfg: Config) -> Config:
    if cfg.mgmt:
        if not cfg.token:
            raise ConfigError(TOKEN_REQUIRED)
        if not cfg.domain:
            raise ConfigError("invalid --domain value '': a domain is required with --mgmt")
        if not cfg.allow_insecure and _plaintext_to_remote(cfg.mgmt):
            raise ConfigError(
                f"invalid --mgmt value {cfg.mgmt!r}: plaintext gRPC to a non-loopback "
                "management would expose the proxy token; use https:// or set "
                "NB_PROXY_ALLOW_INSECURE=true")
    if cfg.tunnel_http_port == cfg.tunnel_https_port:
        raise ConfigError(
            f"invalid --tunnel-https-port value '{cfg.tunnel_https_port}': "
            "must differ from --tunnel-http-port")
    if bool(cfg.acme_eab_kid) != bool(cfg.acme_eab_hmac_key):
        raise ConfigError("--acme-eab-kid and --acme-eab-hmac-key go together: set both or "
                          "neither")
    if cfg.acme_certs and cfg.acme_ca_bundle and not os.path.isfile(cfg.acme_ca_bundle):
        raise ConfigError(f"invalid --acme-ca-bundle value {cfg.acme_ca_bundle!r}: no such file")
    return cfg


def _plaintext_to_remote(mgmt: str) -> bool:
    """Whether any ``--mgmt`` address is plaintext ``http`` to a host that is not
    loopback (the management client's own rule, checked here to fail at start)."""
    hosts = [parts.hostname or "" for parts in map(urlsplit, _management_urls(mgmt))
             if parts.scheme.lower() == "http"]
    if not hosts:
        return False
    # the client's module (grpc) is imported only when plaintext is asked for
    from nbgateway.mgmt.session import is_loopback_host

    return not all(is_loopback_host(host) for host in hosts)

