"""``twistd nbmanagement``: command-line options and service construction.

Every flag also reads an ``NB_MANAGEMENT_*`` environment variable; precedence is
flag > environment > default. ``makeService`` only builds objects: the store is
opened and the REST port bound in ``privilegedStartService`` (see
:mod:`nbgateway.management.service`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.python import usage

from nbgateway.management.grpcserver import (
    DEFAULT_GRPC_ADDR,
    check_plaintext_bind,
    grpc_bind_address,
)
from nbgateway.management.oidc import OIDCError, OIDCSettings, load_client_secret
from nbgateway.management.quotas import SPECS as QUOTA_SPECS
from nbgateway.management.quotas import Quotas, flag_name
from nbgateway.management.ratelimit import DEFAULT_READ_RATE, DEFAULT_WRITE_RATE, parse_rate
from nbgateway.management.retention import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_ROWS,
    parse_max_age,
    parse_max_rows,
)
from nbgateway.management.service import (
    DEFAULT_API_ADDR,
    DEFAULT_DATADIR,
    INSECURE_BIND_ANY_ENV,
    ManagementService,
    endpoint_description,
    env_flag,
)
from nbgateway.observe.logging import PROCESS_LEVEL, filter_twistd_logs, log_level
from nbgateway.options import ReferenceRow, environment_help
from nbgateway.startup import OneLineUsage

ENV_PREFIX = "NB_MANAGEMENT_"
#: seconds after start of the management's fixed heap freeze (the start-up
#: heap: modules, the store, the REST tree); later growth is frozen adaptively
MGMT_HEAP_FREEZE_AFTER = (10.0,)
#: the OIDC client secret (environment only, never a flag: argv is public)
OIDC_SECRET_ENV = "NB_MANAGEMENT_OIDC_CLIENT_SECRET"

#: (flag, default, help); the environment variable is NB_MANAGEMENT_<FLAG upper, - -> _>.
SETTINGS = (
    ("datadir", DEFAULT_DATADIR, "data directory (SQLite store, admin-token)"),
    ("api-addr", DEFAULT_API_ADDR, "REST API listen address HOST:PORT (or an endpoint string)"),
    ("store-dsn", None, "database DSN, e.g. postgresql://user:pw@host/db "
                        "(default: SQLite file in the data directory)"),
    ("grpc-addr", DEFAULT_GRPC_ADDR, "gRPC listen address HOST:PORT for proxies (ProxyService) "
                                     "and peers (ManagementService); :PORT = all interfaces "
                                     "(needs --grpc-cert/--grpc-key or "
                                     "--grpc-insecure-bind-any)"),
    ("grpc-cert", None, "TLS certificate (PEM) for the gRPC listener (plaintext when unset)"),
    ("grpc-key", None, "TLS private key (PEM) for the gRPC listener"),
    ("log-level", "info", "log level of every log destination (-l FILE, stdout, syslog): "
                          "panic, fatal, error, warn, info, debug or trace"),
    ("access-log-max-age", DEFAULT_MAX_AGE, "access-log entries older than this are deleted "
                                            "in the background (30d, 12h, 90m; 0 = keep)"),
    ("access-log-max-rows", str(DEFAULT_MAX_ROWS), "most access-log entries kept per account, "
                                                   "newest first (0 = no limit)"),
    ("oidc-issuer", None, "SSO for public services: the OpenID Provider's issuer URL "
                          "(SSO is off when unset)"),
    ("oidc-client-id", None, "SSO: the client id registered at the provider"),
    ("oidc-client-secret-file", None, "SSO: file whose first line is the client secret "
                                      f"(else the environment's {OIDC_SECRET_ENV})"),
    ("oidc-scopes", "openid email profile", "SSO: scopes requested (space separated)"),
    ("oidc-groups-claim", "groups", "SSO: ID-token claim listing the user's groups"),
    ("oidc-callback-url", None, "SSO: the URL the provider sends browsers back to (default: "
                                "http://<api-addr>/reverse-proxy/callback)"),
    ("oidc-auto-groups", None, "SSO: comma-separated group names every SSO user joins"),
    ("api-write-rate", DEFAULT_WRITE_RATE, "REST mutations (POST/PUT/PATCH/DELETE) per account: "
                                           "RATE/BURST per second, 429 with Retry-After past "
                                           "it (0 = no limit)"),
    ("api-read-rate", DEFAULT_READ_RATE, "REST reads (GET) per account: RATE/BURST per second "
                                         "(0 = no limit)"),
    *((flag_name(q), str(q.default), f"{q.help} (0 = unlimited)") for q in QUOTA_SPECS),
)


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def reference_rows() -> list[ReferenceRow]:
    """The ``NB_MANAGEMENT_*`` variables (``--help``, ``nbgateway-admin env``)."""
    return [*(ReferenceRow(env_name(flag), f"--{flag}", default or "", text)
              for flag, default, text in SETTINGS),
            ReferenceRow(INSECURE_BIND_ANY_ENV, "--grpc-insecure-bind-any", "",
                         "1 allows a plaintext gRPC listener on a non-loopback address"),
            ReferenceRow(OIDC_SECRET_ENV, "(environment only)", "",
                         "SSO: the OIDC client secret (or --oidc-client-secret-file)")]


class Options(OneLineUsage, usage.Options):
    synopsis = ("[--datadir DIR] [--api-addr HOST:PORT] [--store-dsn DSN] "
                "[--grpc-addr HOST:PORT [--grpc-cert PEM --grpc-key PEM] "
                "[--grpc-insecure-bind-any]]")
    longdesc = ("Run the nbgateway management service. Every option can also be set with "
                "an environment variable: " + ", ".join(env_name(f) for f, _, _ in SETTINGS)
                + " (flags win over the environment).")
    optParameters = [[flag, None, None, f"{text} [env {env_name(flag)}; default: {default}]"]
                     for flag, default, text in SETTINGS]
    optFlags = [["grpc-insecure-bind-any", None,
                 "allow a plaintext gRPC listener on a non-loopback address (proxy tokens "
                 f"cross the network in clear) [env {INSECURE_BIND_ANY_ENV}=1]"]]

    def __init__(self, environ: Mapping[str, str] | None = None):
        super().__init__()
        self._environ = os.environ if environ is None else environ

    def getUsage(self, width: int | None = None) -> str:
        env = environment_help(reference_rows(), "Environment variables (flags win over the "
                               "environment):", width or 79)
        return f"{super().getUsage(width).rstrip()}\n\n{env}"

    def postOptions(self) -> None:
        for flag, default, _ in SETTINGS:
            if self[flag] is None:
                self[flag] = self._environ.get(env_name(flag)) or default
        try:
            endpoint_description(self["api-addr"])
        except ValueError as exc:
            raise usage.UsageError(f"--api-addr: {exc}") from None
        if not self["datadir"]:
            raise usage.UsageError("--datadir must not be empty")
        if not self["grpc-insecure-bind-any"]:
            self["grpc-insecure-bind-any"] = env_flag(self._environ.get(INSECURE_BIND_ANY_ENV, ""))
        try:
            bind = grpc_bind_address(self["grpc-addr"])
        except ValueError as exc:
            raise usage.UsageError(f"--grpc-addr: {exc}") from None
        if bool(self["grpc-cert"]) != bool(self["grpc-key"]):
            raise usage.UsageError("--grpc-cert and --grpc-key must be given together")
        try:
            log_level(self["log-level"])
        except ValueError as exc:
            raise usage.UsageError(f"--log-level: {exc}") from None
        for flag, parse in (("access-log-max-age", parse_max_age),
                            ("access-log-max-rows", parse_max_rows),
                            ("api-write-rate", parse_rate), ("api-read-rate", parse_rate)):
            try:
                parse(self[flag])
            except ValueError as exc:
                raise usage.UsageError(f"--{flag}: {exc}") from None
        try:
            self.quotas = Quotas.from_settings(self)
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None
        try:
            check_plaintext_bind(bind, tls=bool(self["grpc-cert"]),
                                 insecure_bind_any=bool(self["grpc-insecure-bind-any"]))
        except ValueError as exc:
            raise usage.UsageError(f"--grpc-addr: {exc}") from None
        if bool(self["oidc-issuer"]) != bool(self["oidc-client-id"]):
            raise usage.UsageError("--oidc-issuer and --oidc-client-id must be given together")
        if self["oidc-issuer"]:
            try:
                self.sso_settings = sso_settings(self, self._environ)
            except (OIDCError, OSError) as exc:
                raise usage.UsageError(f"--oidc-*: {exc}") from None


def sso_settings(options: Mapping[str, Any], environ: Mapping[str, str]) -> OIDCSettings:
    """The IdP settings from the flags (the client secret from its file or the
    environment; never from argv)."""
    secret = (load_client_secret(options["oidc-client-secret-file"])
              if options["oidc-client-secret-file"] else environ.get(OIDC_SECRET_ENV, "").strip())
    api = options["api-addr"]
    callback = options["oidc-callback-url"] or f"http://{api}/reverse-proxy/callback"
    return OIDCSettings(issuer=options["oidc-issuer"], client_id=options["oidc-client-id"],
                        client_secret=secret, callback_url=callback,
                        scopes=tuple(options["oidc-scopes"].split()),
                        groups_claim=options["oidc-groups-claim"] or "groups")


def makeService(options: Options) -> ManagementService:
    """twistd only: ``--log-level`` filters every log destination."""
    PROCESS_LEVEL.set(log_level(options["log-level"]))
    service = ManagementService(datadir=options["datadir"], api_addr=options["api-addr"],
                                store_dsn=options["store-dsn"], grpc_addr=options["grpc-addr"],
                                grpc_cert=options["grpc-cert"], grpc_key=options["grpc-key"],
                                grpc_insecure_bind_any=bool(options["grpc-insecure-bind-any"]),
                                access_log_max_age=parse_max_age(options["access-log-max-age"]),
                                access_log_max_rows=parse_max_rows(options["access-log-max-rows"]),
                                sso_settings=getattr(options, "sso_settings", None),
                                quotas=Quotas.from_settings(options),
                                api_write_rate=options.get("api-write-rate"),
                                api_read_rate=options.get("api-read-rate"),
                                sso_auto_groups=tuple(
                                    g.strip() for g in (options["oidc-auto-groups"] or "")
                                    .split(",") if g.strip()))
    filter_twistd_logs(service, "text", getattr(options, "parent", None))
    from twisted.internet import reactor

    from nbgateway.heapfreeze import HeapFreezer

    if os.environ.get("NBGW_MGMT_HEAP_FREEZE", "1") != "0":  # "0": off (bench A/B)
        # issue 18: full-GC pauses; the heap grows when gateways connect, so
        # one fixed freeze (no collect first) and the adaptive ones
        HeapFreezer(reactor, delays=MGMT_HEAP_FREEZE_AFTER, collect=None
                    ).setServiceParent(service)
    return service
