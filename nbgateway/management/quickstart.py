"""``nbgateway-admin quickstart``: a private demo service in one command.

Owns the quickstart flow against a running gateway with management: pick the
connected gateway (cluster), ensure a group, a peer in it and a private HTTP
service for that group, then write the peer's wg-quick config and print how
to bring the tunnel up and reach the service.  Every step is idempotent, so a
re-run reuses what exists.  The CLI (``nbgateway.management.cli``) only
registers the subcommand and delegates here.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TextIO

from nbgateway.management.cli import DEFAULT_DATADIR, Client, CliError, _q

QUICKSTART_POLL = 0.5


def _retrying(deadline: float, what: str, attempt: Callable[[], Any]) -> Any:
    """Call ``attempt`` until it returns a truthy value; connection failures
    (management still starting) are retried too.  CliError when ``deadline``
    passes."""
    last = ""
    while True:
        try:
            value = attempt()
            if value:
                return value
        except CliError as exc:
            if exc.code != 2:  # only "cannot reach" is worth waiting for
                raise
            last = f" ({exc.message})"
        if time.monotonic() >= deadline:
            raise CliError(f"timed out waiting for {what}{last}", 3)
        time.sleep(QUICKSTART_POLL)


def _pick_cluster(client: Client, wanted: str | None) -> str | None:
    clusters = client.get("/reverse-proxies/clusters") or []
    online = [c["address"] for c in clusters
              if c.get("online") or (c.get("connected_proxies") or 0) > 0]
    if wanted:
        return wanted if wanted in online else None
    if len(online) > 1:
        raise CliError(f"several gateways are connected ({', '.join(sorted(online))}); "
                       "choose one with --cluster")
    return online[0] if online else None


def _ensure_group(client: Client, name: str) -> dict[str, Any]:
    for group in client.get("/groups"):
        if group.get("name") == name:
            return group
    return client.post("/groups", {"name": name, "peers": []})


def _ensure_peer(client: Client, name: str, group: dict[str, Any]) -> dict[str, Any]:
    matches = [p for p in client.get("/peers") if p.get("name") == name]
    if len(matches) > 1:
        raise CliError(f"peer name {name!r} is ambiguous; rename or delete one")
    if not matches:
        return client.post("/peers", {"name": name, "groups": [group["id"]]})
    peer = matches[0]
    members = [p["id"] if isinstance(p, dict) else p for p in group.get("peers") or ()]
    if peer["id"] not in members:
        client.put(f"/groups/{_q(group['id'])}",
                   {"name": group["name"], "peers": [*members, peer["id"]]})
    return peer


def upstream_target(url: str, cluster: str) -> dict[str, Any]:
    """The service target for ``--upstream`` (reached from the gateway host)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--upstream must be an http(s)://host[:port] URL, not {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise CliError(f"--upstream has an invalid port: {url!r}") from None
    target: dict[str, Any] = {"target_id": cluster, "target_type": "cluster",
                              "protocol": parts.scheme, "host": parts.hostname, "port": port,
                              "enabled": True, "options": {"direct_upstream": True}}
    if parts.path not in ("", "/"):
        target["path"] = parts.path
    return target


def _same_target(have: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(have.get(k) == want[k] for k in ("target_id", "protocol", "host", "port")) \
        and (have.get("path") or "/") == (want.get("path") or "/") \
        and bool((have.get("options") or {}).get("direct_upstream"))


def _ensure_service(client: Client, name: str, domain: str, group: dict[str, Any],
                    target: dict[str, Any]) -> tuple[dict[str, Any], str]:
    body = {"name": name, "domain": domain, "enabled": True, "mode": "http", "private": True,
            "access_groups": [group["id"]], "targets": [target], "pass_host_header": False}
    for svc in client.get("/reverse-proxies/services"):
        if svc.get("domain") != domain:
            continue
        targets = svc.get("targets") or []
        if (svc.get("private") and svc.get("enabled") and group["id"] in
                (svc.get("access_groups") or []) and len(targets) == 1
                and _same_target(targets[0], target)):
            return svc, "reused"
        return client.put(f"/reverse-proxies/services/{_q(svc['id'])}", body), "updated"
    return client.post("/reverse-proxies/services", body), "created"


def _config_with_peer(client: Client, peer_id: str) -> str | None:
    text = client.request("GET", f"/peers/{_q(peer_id)}/wireguard-config", raw=True).decode()
    return text if "[Peer]" in text else None


def _config_value(conf: str, key: str) -> list[str]:
    for line in conf.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return [v.strip() for v in value.split(",") if v.strip()]
    return []


def qr_ascii(text: str) -> str:
    """A terminal QR code of ``text`` (qrcode's ASCII renderer)."""
    import io

    import qrcode

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_L, border=2)
    qr.add_data(text)
    buf = io.StringIO()
    qr.print_ascii(out=buf, invert=True)
    return buf.getvalue()


def _local_ca(datadir: str) -> str:
    """The path of the gateway's local CA certificate.  The gateway creates
    its CA on the first TLS handshake; on the gateway host (``datadir``
    exists) create it now, the same way, so ``curl --cacert`` works at once
    (the gateway loads an existing ``ca.crt``/``ca.key`` pair)."""
    path = os.path.abspath(os.path.join(datadir, "ca.crt"))
    if os.path.isdir(datadir) and not os.path.exists(path):
        from nbgateway.tls.certstore import LocalCA

        LocalCA(datadir)
    return path


def run(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    deadline = time.monotonic() + args.wait
    cluster = _retrying(deadline, "a connected gateway (is `twistd -n nbgateway --private` "
                        "running?)", lambda: _pick_cluster(client, args.cluster))
    domain = args.domain or f"demo.{cluster}"
    target = upstream_target(args.upstream, cluster)
    group = _ensure_group(client, args.group)
    peer = _ensure_peer(client, args.name, group)
    service, verb = _ensure_service(client, domain.split(".")[0], domain, group, target)
    conf = _retrying(deadline, "the gateway's proxy peer in the peer config (the gateway "
                     "must run with --private)", lambda: _config_with_peer(client, peer["id"]))
    path = args.config_out or f"{args.name}.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(conf)
    ca = _local_ca(args.datadir)
    dns = [a for a in _config_value(conf, "DNS") if ":" not in a]
    gateway_ip = dns[0] if dns else ""
    if args.json:
        out.write(json.dumps({"cluster": cluster, "group": group, "peer": peer,
                              "service": service, "service_action": verb, "config": conf,
                              "config_path": os.path.abspath(path), "ca": ca,
                              "gateway_ip": gateway_ip}, indent=2) + "\n")
        return
    out.write(f"group   {group['name']} ({group['id']})\n"
              f"peer    {peer['name']} ({peer['id']}), address {peer.get('ip', '-')}\n"
              f"service https://{domain}/ -> {args.upstream} ({verb}; private, "
              f"group {group['name']} only)\n\n"
              f"wg-quick config for {peer['name']} (written to {path}):\n\n{conf}\n")
    if not args.no_qr:
        out.write("The same config as a QR code (WireGuard mobile apps: "
                  "\"scan from QR code\"):\n\n" + qr_ascii(conf) + "\n")
    out.write(f"Bring the tunnel up with a stock WireGuard client:\n\n"
              f"    sudo wg-quick up ./{path}\n\n"
              f"then reach the private service (the config's DNS line makes "
              f"{gateway_ip or 'the gateway'} resolve {domain}):\n\n"
              f"    curl --cacert {ca} https://{domain}/\n\n")
    if gateway_ip:
        out.write(f"or, without the DNS line:\n\n"
                  f"    curl --cacert {ca} --resolve {domain}:443:{gateway_ip} "
                  f"https://{domain}/\n")


def add_arguments(sp: argparse.ArgumentParser) -> None:
    """The ``quickstart`` subcommand's options."""
    sp.add_argument("--upstream", default="http://127.0.0.1:8000",
                    help="where the demo service forwards, seen from the gateway host "
                         "(default: %(default)s)")
    sp.add_argument("--name", default="laptop", help="peer name (default: %(default)s)")
    sp.add_argument("--group", default="quickstart", help="group name (default: %(default)s)")
    sp.add_argument("--domain", help="service domain (default: demo.<cluster>)")
    sp.add_argument("--cluster", help="gateway cluster address (default: the connected one)")
    sp.add_argument("--datadir", default=DEFAULT_DATADIR,
                    help="the gateway's data directory: admin-token, ca.crt "
                         "(default: %(default)s)")
    sp.add_argument("--config-out", metavar="FILE",
                    help="where to write the wg-quick config (default: ./<name>.conf)")
    sp.add_argument("--wait", type=float, default=60.0,
                    help="seconds to wait for management and the gateway (default: %(default)s)")
    sp.add_argument("--no-qr", action="store_true", help="do not print the QR code")
