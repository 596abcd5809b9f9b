"""``nbgateway-admin status``: is the deployment healthy, and if not, why.

Three parts:

* :func:`collect` asks management (REST: clusters, proxies, services, peers)
  and, when reachable, the gateway's TLS listener (one handshake per service
  domain, SNI = the domain, to read the certificate it serves).
* :func:`assess` is pure: it turns what was collected into a report with
  problems (the deployment is degraded) and hints (it works, but maybe not
  as intended, e.g. a WireGuard endpoint on loopback).
* :func:`render` prints the report (colours only on a terminal).

Exit status: 0 healthy, 1 degraded or management unreachable.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import ssl
import urllib.parse
from datetime import UTC, datetime
from typing import Any, TextIO

from nbgateway.management.cli._client import Client, CliError, UnreachableError, UsageError
from nbgateway.management.cli._output import Painter, use_colour, write_json

#: certificates expiring sooner than this are a hint
EXPIRY_WARNING_DAYS = 14
PROBE_TIMEOUT = 3.0


# --- collection (I/O) -----------------------------------------------------------------


def probe_certificate(host: str, port: int, server_name: str,
                      timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """The certificate ``host:port`` presents for ``server_name``; never raises.

    No verification (the point is to see what is served, e.g. a certificate
    from the gateway's local CA): ``{"subject", "issuer", "names",
    "not_after", "matches"}`` or ``{"error": "..."}``."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID, NameOID

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return {"error": f"{host}:{port}: {exc.strerror or exc}"
                if isinstance(exc, OSError) and exc.strerror else f"{host}:{port}: {exc}"}
    if not der:
        return {"error": f"{host}:{port}: no certificate presented"}
    cert = x509.load_der_x509_certificate(der)

    def cn(name: x509.Name) -> str:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else name.rfc4514_string()

    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        names = [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    return {"subject": cn(cert.subject), "issuer": cn(cert.issuer), "names": names,
            "not_after": cert.not_valid_after_utc.isoformat(),
            "matches": any(_name_matches(n, server_name) for n in names)}


def _name_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and name.count(".") == pattern.count(".")
    return pattern == name


def default_tls_addr(url: str) -> tuple[str, int]:
    """The gateway's public TLS listener, assumed on the management host."""
    host = urllib.parse.urlsplit(url).hostname or "127.0.0.1"
    return host, 443


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"status: --tls-addr must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def collect(client: Client, tls_addr: tuple[str, int] | None) -> dict[str, Any]:
    """Everything :func:`assess` needs; ``{"management": {"error": ...}}``
    when management does not answer."""
    try:
        clusters = client.get("/reverse-proxies/clusters") or []
    except UnreachableError as exc:  # anything else (401, 403) is an error of its own
        return {"management": {"url": client.base, "reachable": False, "error": exc.message}}
    try:
        proxies = client.get("/reverse-proxies/proxies") or []
    except CliError as exc:  # an older management without the route
        proxies, proxies_error = [], exc.message
    else:
        proxies_error = ""
    services = client.get("/reverse-proxies/services") or []
    peers = client.get("/peers") or []
    certs: dict[str, Any] = {}
    if tls_addr is not None:
        host, port = tls_addr
        for svc in services:
            # private services are served inside the tunnel only: not from here
            if ((svc.get("mode") or "http") == "http" and svc.get("domain")
                    and not svc.get("private")):
                certs[svc["domain"]] = probe_certificate(host, port, svc["domain"])
    return {"management": {"url": client.base, "reachable": True},
            "clusters": clusters, "proxies": proxies, "proxies_error": proxies_error,
            "services": services, "peers": peers, "certificates": certs,
            "tls_addr": f"{tls_addr[0]}:{tls_addr[1]}" if tls_addr else None}


# --- assessment (pure) ----------------------------------------------------------------


def endpoint_hint(endpoint: str) -> str:
    """Why peers elsewhere may not reach ``endpoint`` ("" when it looks public)."""
    host = endpoint.rpartition(":")[0].strip("[]") if ":" in endpoint else endpoint
    if host in ("localhost", ""):
        return "loopback"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return ""  # a DNS name: cannot judge without resolving
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private or ip.is_link_local:
        return "private"
    return ""


def assess(data: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The report: sections plus ``problems`` (degraded) and ``hints``."""
    now = now or datetime.now(UTC)
    mgmt = data["management"]
    if not mgmt.get("reachable"):
        return {"healthy": False, "management": mgmt,
                "problems": [f"management unreachable: {mgmt.get('error')}"], "hints": []}
    problems: list[str] = []
    hints: list[str] = []
    online = [c for c in data["clusters"] if c.get("online")]
    if not online:
        problems.append("no gateway is connected to management (start one: twistd -n "
                        "nbgateway, or with --mgmt URL and a proxy token)")
    for p in data["proxies"]:
        if not p.get("online"):
            problems.append(f"gateway {p['id']} ({p['cluster_address']}) is {p.get('status')}"
                            f", last seen {p.get('last_seen') or 'never'}")
    if data.get("proxies_error"):
        hints.append(f"gateway details unavailable: {data['proxies_error']}")

    gateways = [p for p in data["peers"] if p.get("proxy_embedded") or p.get("proxy_cluster")]
    endpoints = []
    for peer in gateways:
        endpoint = peer.get("endpoint") or ""
        kind = endpoint_hint(endpoint) if endpoint else "missing"
        endpoints.append({"peer": peer.get("name"), "cluster": peer.get("proxy_cluster"),
                          "endpoint": endpoint, "reachability": kind or "public"})
        if kind == "missing":
            problems.append(f"gateway peer {peer.get('name')} has no WireGuard endpoint; "
                            "peers cannot reach it (set --wg-endpoint)")
        elif kind == "loopback":
            hints.append(f"WireGuard endpoint {endpoint} is loopback: only peers on this host "
                         "can connect; set --wg-endpoint PUBLIC_IP:PORT "
                         "(NB_PROXY_WG_ENDPOINT) for peers elsewhere")
        elif kind == "unspecified":
            problems.append(f"WireGuard endpoint {endpoint} is not an address peers can "
                            "dial; set --wg-endpoint PUBLIC_IP:PORT")
        elif kind == "private":
            hints.append(f"WireGuard endpoint {endpoint} is a private address: reachable "
                         "only from the same network")
    if not gateways and online:
        hints.append("no gateway peer is registered: peers get no [Peer] in their config "
                     "(run the gateway with --private for private services)")

    services = []
    for svc in data["services"]:
        meta = svc.get("meta") or {}
        status = meta.get("status") or "unknown"
        entry = {"domain": svc.get("domain"), "status": status, "private": svc.get("private"),
                 "mode": svc.get("mode") or "http", "enabled": svc.get("enabled"),
                 "message": meta.get("status_message") or "",
                 "certificate": data["certificates"].get(svc.get("domain"))}
        services.append(entry)
        if not svc.get("enabled"):
            continue
        if status in ("error", "certificate_failed", "tunnel_not_created"):
            problems.append(f"service {svc.get('domain')} is {status.upper()}"
                            + (f": {entry['message']}" if entry["message"] else ""))
        cert = entry["certificate"]
        if cert and "not_after" in cert:
            expiry = datetime.fromisoformat(cert["not_after"])
            days = (expiry - now).total_seconds() / 86400
            if days < 0:
                problems.append(f"certificate for {svc.get('domain')} expired "
                                f"{cert['not_after']}")
            elif days < EXPIRY_WARNING_DAYS:
                hints.append(f"certificate for {svc.get('domain')} expires in "
                             f"{int(days)} days")
            if not cert.get("matches"):
                problems.append(f"certificate served for {svc.get('domain')} does not name "
                                f"it (names: {', '.join(cert.get('names') or []) or 'none'})")
    return {"healthy": not problems, "management": mgmt, "clusters": data["clusters"],
            "gateways": data["proxies"], "wireguard_endpoints": endpoints,
            "services": services, "tls_addr": data.get("tls_addr"),
            "problems": problems, "hints": hints}


# --- rendering ------------------------------------------------------------------------


def render(report: dict[str, Any], out: TextIO, paint: Painter) -> None:
    ok, bad, warn = (lambda t: paint(t, "green")), (lambda t: paint(t, "red")), \
        (lambda t: paint(t, "yellow"))
    mgmt = report["management"]
    if not mgmt.get("reachable"):
        out.write(f"management  {bad('UNREACHABLE')}  {mgmt.get('error')}\n")
        out.write(f"status: {bad('DOWN')}\n")
        return
    out.write(f"management  {ok('reachable')}  {mgmt['url']}\n\n")
    out.write(paint("gateways", "bold") + "\n")
    if not report["gateways"] and not report["clusters"]:
        out.write("  none registered\n")
    for c in report["clusters"]:
        state = ok("connected") if c.get("online") else bad("disconnected")
        out.write(f"  cluster {c['address']}: {state}, {c.get('connected_proxies', 0)} "
                  f"gateway(s){', private services' if c.get('private') else ''}\n")
    for p in report["gateways"]:
        caps = [k for k, v in sorted((p.get("capabilities") or {}).items()) if v]
        state = ok("online") if p.get("online") else bad(p.get("status") or "offline")
        out.write(f"  {p['id']} ({p['cluster_address']}, {p.get('ip_address') or '-'}): "
                  f"{state}; capabilities: {', '.join(caps) or 'none'}\n")
        if "l4_public_ports" in p:
            tls = f" (TLS also on {p['l4_tls_port']})" if p.get("l4_tls_port") else ""
            out.write(f"    public L4 ports: {p['l4_public_ports'] or 'none'}{tls}\n")
        for li in p.get("inbound_listeners") or []:
            out.write(f"    inbound listener in the tunnel: {li['tunnel_ip']} "
                      f"https {li['https_port']}, http {li['http_port']}\n")
    out.write("\n" + paint("wireguard endpoint (what peers dial)", "bold") + "\n")
    if not report["wireguard_endpoints"]:
        out.write("  none\n")
    for e in report["wireguard_endpoints"]:
        where = {"public": ok("reachable from other hosts if the UDP port is open"),
                 "loopback": warn("loopback: this host only"),
                 "private": warn("private address: same network only"),
                 "missing": bad("missing"), "unspecified": bad("not dialable")}[e["reachability"]]
        out.write(f"  {e['endpoint'] or '-'} (gateway peer {e['peer']}): {where}\n")
    out.write("\n" + paint("services", "bold") + "\n")
    if not report["services"]:
        out.write("  none (create one: nbgateway-admin services create --help)\n")
    for s in report["services"]:
        status = s["status"].upper()
        coloured = ok(status) if s["status"] == "active" else \
            bad(status) if s["status"] in ("error", "certificate_failed",
                                           "tunnel_not_created") else warn(status)
        line = f"  {s['domain']}  {coloured}"
        line += " (private)" if s.get("private") else ""
        line += "" if s.get("enabled") else " (disabled)"
        if s["message"]:
            line += f": {s['message']}"
        out.write(line + "\n")
        cert = s.get("certificate")
        if cert and "not_after" in cert:
            out.write(f"    certificate: {cert['subject']} issued by {cert['issuer']}, valid "
                      f"until {cert['not_after']}\n")
        elif cert:
            out.write(f"    certificate: not checked ({cert['error']})\n")
        elif s.get("private"):
            out.write("    certificate: served inside the tunnel only (not checked from "
                      "here)\n")
    for hint in report["hints"]:
        out.write(f"\n{warn('hint')}: {hint}")
    if report["hints"]:
        out.write("\n")
    for problem in report["problems"]:
        out.write(f"\n{bad('problem')}: {problem}")
    if report["problems"]:
        out.write("\n")
    verdict = ok("OK") if report["healthy"] else bad(f"DEGRADED ({len(report['problems'])} "
                                                    "problem(s))")
    out.write(f"\nstatus: {verdict}\n")


def cmd_status(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.no_tls_check:
        tls_addr = None
    elif args.tls_addr:
        tls_addr = parse_addr(args.tls_addr)
    else:
        tls_addr = default_tls_addr(client.base)
    report = assess(collect(client, tls_addr))
    if args.json:
        write_json(out, report)
    else:
        render(report, out, Painter(use_colour(out)))
    return 0 if report["healthy"] else 1


def register(cmd: Any) -> None:
    c = cmd.add(
        "status", "check management, gateways, services, certificates and the WireGuard "
        "endpoint", func=cmd_status, aliases=["doctor"],
        description="Check the deployment: is management reachable; which gateways are "
        "connected, with\nwhich capabilities and inbound listeners; which services are ACTIVE "
        "or in ERROR\nand why; which certificate the gateway's TLS listener serves for each "
        "domain and\nuntil when; which WireGuard endpoint peers dial and whether other hosts "
        "can reach\nit. Exit status 0 when healthy, 1 when degraded or management is down.",
        example=["nbgateway-admin status",
                 "nbgateway-admin status --tls-addr 203.0.113.7:443",
                 "nbgateway-admin status --json | jq .problems"])
    c.add_argument("--tls-addr", metavar="HOST:PORT",
                   help="the gateway's TLS listener to read certificates from (default: the "
                        "--url host, port 443)")
    c.add_argument("--no-tls-check", action="store_true", help="do not connect to the "
                                                               "gateway's TLS listener")
