"""``--target SPEC`` of ``nbgateway-admin services create``: where a service forwards.

Owns the two spellings (a URL, or ``type=,id=,host=,port=,...`` fields), their
help text and the defaults (a cluster target is dialled directly; its cluster
is the one serving the service's domain, looked up in the domains list).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from nbgateway.management.cli._client import Client, UsageError

TARGET_HELP = """\
target SPEC: where the gateway forwards requests. Either a URL, reached
directly from the gateway host:

  --target http://10.0.0.5:8080/app     (tcp://10.0.0.5:5432 for --mode tcp/tls,
                                         udp://10.0.0.5:53 for --mode udp)

or comma-separated fields:

  type=cluster|peer|host|domain|subnet   default: cluster (the gateway that serves
                                         the domain dials host:port itself)
  id=ID        the peer/resource id (type=peer etc.); for type=cluster the cluster
               address, default: the cluster whose address ends the --domain
  host=HOST    upstream host or IP (required for type=cluster)
  port=PORT    default 80, or 443 with protocol=https
  protocol=http|https, path=/prefix, timeout=30s
  direct       dial host:port from the gateway host (implied by type=cluster)
  upstream=h2  HTTP/2 to the target (h2c for http, ALPN h2 for https), with
               trailers relayed: for gRPC services (default: HTTP/1.1)"""


def parse_target(spec: str) -> dict[str, Any]:
    """``type=cluster,host=10.0.0.5,port=8080,protocol=http,path=/,direct``, or
    ``http://10.0.0.5:8080/path`` (a cluster target dialled directly).  A
    cluster target's ``target_id`` may be left for :func:`complete_targets`."""
    if "://" in spec:
        return _url_target(spec)
    target: dict[str, Any] = {"protocol": "http", "enabled": True}
    options: dict[str, Any] = {}
    keys = {"type": "target_type", "id": "target_id", "host": "host", "port": "port",
            "protocol": "protocol", "path": "path"}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if name in ("direct", "direct_upstream") and not sep:
            options["direct_upstream"] = True
        elif name == "timeout" and sep:
            options["request_timeout"] = value
        elif name == "upstream" and sep:
            if value not in ("h2", "http1"):
                raise UsageError(f"--target: upstream must be h2 or http1, not {value!r}")
            options["upstream_protocol"] = value
        elif name in keys and sep:
            if name == "port":
                try:
                    target["port"] = int(value)
                except ValueError:
                    raise UsageError(f"--target: port must be a number, not {value!r}") \
                        from None
            else:
                target[keys[name]] = value
        else:
            raise UsageError(f"--target: bad field {part!r}; use a URL or type=,id=,host=,"
                             "port=,protocol=,path=,timeout=,upstream=,direct (see "
                             "'nbgateway-admin services create --help')")
    target.setdefault("target_type", "peer" if "target_id" in target else "cluster")
    if target["target_type"] == "cluster":
        options.setdefault("direct_upstream", True)
        if not target.get("host"):
            raise UsageError("--target: a cluster target needs host= (the upstream the "
                             "gateway dials), e.g. host=10.0.0.5,port=8080")
    if options:
        target["options"] = options
    target.setdefault("port", 443 if target["protocol"] == "https" else 80)
    return target


def _url_target(spec: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(spec)
    if parts.scheme not in ("http", "https", "tcp", "udp") or not parts.hostname:
        raise UsageError(f"--target: {spec!r} is not an http(s)://host[:port] or "
                         "tcp|udp://host:port URL")
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        raise UsageError(f"--target: invalid port in {spec!r}") from None
    if port is None:
        raise UsageError(f"--target: {spec!r} needs a port (tcp://host:port)")
    target: dict[str, Any] = {"target_type": "cluster", "protocol": parts.scheme,
                              "host": parts.hostname, "port": port, "enabled": True,
                              "options": {"direct_upstream": True}}
    if parts.path not in ("", "/"):
        target["path"] = parts.path
    return target


def complete_targets(client: Client, domain: str, targets: list[dict[str, Any]]) -> None:
    """Fill a cluster target's missing id: the cluster serving ``domain``
    (a connected cluster's address, or a custom domain's target cluster)."""
    if all(t.get("target_id") for t in targets):
        return
    served: dict[str, str] = {}  # domain suffix -> cluster
    for d in client.get("/reverse-proxies/domains") or []:
        cluster = d.get("target_cluster") or (d.get("domain") if d.get("type") == "free" else "")
        if d.get("domain") and cluster:
            served[d["domain"]] = cluster
    owning = sorted((suffix for suffix in served
                     if domain == suffix or domain.endswith("." + suffix)), key=len, reverse=True)
    if not owning:
        raise UsageError(f"no gateway cluster serves {domain!r} (domains: "
                         f"{', '.join(sorted(served)) or 'none'}); pick a domain under one, or "
                         "give id=CLUSTER in --target")
    for t in targets:
        t.setdefault("target_id", served[owning[0]])

