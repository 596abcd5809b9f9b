"""``nbgateway-admin quickstart``: a private demo service in one command.

Owns the quickstart flow against a running gateway with management: pick the
connected gateway (cluster), ensure a group and a private HTTP service for it,
wait for the gateway's tunnel peer (so on a fresh data directory the gateway
holds the account's first tunnel address), ensure a peer in the group, then
write the peer's wg-quick config (mode 0600) and print how to bring the tunnel
up and reach the service with a curl that does not need the system resolver
(``--resolve NAME:443:<gateway address>``).  The account's private CA, as
management got it from the gateway, is written as ``nbgateway-ca.crt`` beside
the config, and the printed curl trusts that file: each account's private
services are signed by the account's own local CA on the gateway (the
gateway's ``DATADIR/ca.crt`` signs only its default name).
wg-quick applies a ``DNS`` line with ``resolvconf``; where that is missing
(stock Debian/Ubuntu) the line is written as a comment saying why
(``--dns auto``, the default).  Every step is idempotent, so a re-run reuses
what exists.  The CLI (``nbgateway.management.cli``) only registers the
subcommand (:func:`add_arguments`) and delegates here (:func:`run`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TextIO

from nbgateway.atomicfile import write_atomic, write_secret_output
from nbgateway.management import privateca
from nbgateway.management.cli._client import DEFAULT_DATADIR, Client, CliError, _q
from nbgateway.management.cli._output import Progress

QUICKSTART_POLL = 0.5


def _retrying(deadline: float, what: str, attempt: Callable[[], Any]) -> Any:
    """Call ``attempt`` until it returns a truthy value; connection failures
    (management still starting) are retried too.  CliError when ``deadline``
    passes."""
    last = ""
    progress = None  # "waiting for ..." once, on a terminal's stderr only
    while True:
        try:
            value = attempt()
            if value:
                return value
        except CliError as exc:
            if not exc.retryable:  # only "cannot reach" is worth waiting for
                raise
            last = f" ({exc.message})"
        if time.monotonic() >= deadline:
            raise CliError(f"timed out waiting for {what}{last}")
        if progress is None:
            progress = Progress(sys.stderr)
            progress.note(f"waiting for {what} (up to {deadline - time.monotonic():.0f} s)...")
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


#: seconds quickstart waits for a gateway to report its private CA to management
PEER_CA_WAIT = 15.0
#: the account's private CA, beside the peer config
PEER_CA_FILE = "nbgateway-ca.crt"


def _peer_ca_path(config_path: str) -> str:
    """Where the account's private CA goes: ``nbgateway-ca.crt`` beside the config."""
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), PEER_CA_FILE)


def _write_peer_ca(client: Client, config_path: str, deadline: float) -> str | None:
    """Download the account's private CA from management and write it as
    ``nbgateway-ca.crt`` beside the peer config; None if no gateway reported
    one before ``deadline`` (older gateways)."""
    while True:
        try:
            pem = client.request("GET", "/reverse-proxies/ca-certificate", raw=True)
            break
        except CliError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
    path = _peer_ca_path(config_path)
    write_atomic(path, pem, 0o644)
    return path


def write_peer_config(path: str, conf: str) -> None:
    """Write the wg-quick config, which holds the peer's private key
    (:func:`~nbgateway.atomicfile.write_secret_output`: mode 0600 less
    the umask for a regular file, in place for ``/dev/stdout`` or a pipe)."""
    write_secret_output(path, conf.encode())


#: wg-quick applies a config's DNS line with ``resolvconf``; sudo runs it with
#: a PATH that has the sbin directories a normal user's PATH may lack
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def has_resolvconf(path: str | None = None) -> bool:
    """True when ``wg-quick`` can apply a ``DNS`` line here: a ``resolvconf``
    (openresolv, or systemd-resolved's compatibility link) is on ``path``
    (default ``$PATH``) or in the usual sbin directories."""
    search = os.pathsep.join([os.environ.get("PATH", "") if path is None else path,
                              *SBIN_DIRS])
    return shutil.which("resolvconf", path=search) is not None


def without_dns(conf: str) -> str:
    """``conf`` with its ``DNS`` line turned into a comment saying why."""
    out = []
    for line in conf.splitlines():
        name, sep, _value = line.partition("=")
        if sep and name.strip() == "DNS":
            out += ["# " + line.strip(),
                    "# ^ commented out by nbgateway-admin quickstart: wg-quick applies a DNS",
                    "#   line with resolvconf, which this machine does not have (wg-quick up",
                    "#   would fail). Reach services with curl --resolve NAME:443:<gateway",
                    "#   address>, or install openresolv and run quickstart again."]
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _gateway_peer(client: Client, cluster: str) -> dict[str, Any] | None:
    """The gateway's proxy peer for ``cluster`` once it has registered one."""
    for peer in client.get("/peers") or ():
        if peer.get("proxy_cluster") == cluster and peer.get("ip"):
            return peer
    return None


def _display_path(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def run(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    """Create (or reuse) the demo and write ``<name>.conf``; see the module docstring."""
    deadline = time.monotonic() + args.wait
    cluster = _retrying(deadline, "a connected gateway (is `twistd -n nbgateway --private` "
                        "running?)", lambda: _pick_cluster(client, args.cluster))
    domain = args.domain or f"demo.{cluster}"
    target = upstream_target(args.upstream, cluster)
    group = _ensure_group(client, args.group)
    service, verb = _ensure_service(client, domain.split(".")[0], domain, group, target)
    # the gateway registers its tunnel peer when it gets its first service; wait
    # for it before creating our peer, so on a fresh data directory the gateway
    # holds the account's first tunnel address
    gateway = _retrying(deadline, "the gateway's tunnel peer (the gateway must run with "
                        "--private)", lambda: _gateway_peer(client, cluster))
    peer = _ensure_peer(client, args.name, group)
    full = _retrying(deadline, "the gateway's proxy peer in the peer config",
                     lambda: _config_with_peer(client, peer["id"]))
    # the CA goes to its own file beside the config (below): the config stays the
    # same whether or not the gateway had reported its CA yet
    full = privateca.strip_block(full)
    dns = args.dns == "keep" or (args.dns == "auto" and has_resolvconf())
    conf = full if dns else without_dns(full)
    path = args.config_out or f"{args.name}.conf"
    write_peer_config(path, conf)
    # the account's own CA (what management has from the gateway): it signs
    # this account's service names; the gateway's DATADIR/ca.crt does not
    peer_ca = _write_peer_ca(client, path, min(deadline, time.monotonic() + PEER_CA_WAIT))
    ca = peer_ca or _peer_ca_path(path)
    gateway_ip = gateway["ip"]
    curl = (f"curl --cacert {_display_path(ca)} --resolve {domain}:443:{gateway_ip} "
            f"https://{domain}/")
    if args.json:
        out.write(json.dumps({"cluster": cluster, "group": group, "peer": peer,
                              "service": service, "service_action": verb, "config": conf,
                              "config_path": os.path.abspath(path),
                              "ca": peer_ca, "peer_ca": peer_ca,
                              "gateway_ip": gateway_ip, "dns_line": dns, "curl": curl},
                             indent=2) + "\n")
        return
    out.write(f"group   {group['name']} ({group['id']})\n"
              f"peer    {peer['name']} ({peer['id']}), address {peer.get('ip', '-')}\n"
              f"gateway {cluster}, tunnel address {gateway_ip}\n"
              f"service https://{domain}/ -> {args.upstream} ({verb}; private, "
              f"group {group['name']} only)\n\n"
              f"wg-quick config for {peer['name']} (written to {path}):\n\n{conf}\n")
    if peer_ca:
        out.write(f"The private CA from management (trust it once on the peer) is written "
                  f"to {_display_path(peer_ca)} beside the config.\n\n")
    else:
        out.write(f"No gateway has reported this account's private CA yet; once one has, "
                  f"download it for the curl below with\n\n    nbgateway-admin ca download "
                  f"-o {_display_path(ca)}\n\n")
    if not args.no_qr:
        out.write("The same config as a QR code for the WireGuard mobile apps (\"scan from "
                  "QR code\"; they apply the DNS line themselves):\n\n" + qr_ascii(full)
                  + "\n")
    wg_path = path if os.path.isabs(path) or path.startswith(".") else f"./{path}"
    out.write(f"Bring the tunnel up with a stock WireGuard client:\n\n"
              f"    sudo wg-quick up {wg_path}\n\n"
              f"then reach the private service through it:\n\n    {curl}\n\n")
    if dns:
        out.write(f"(with the tunnel up, the config's DNS line also makes "
                  f"`curl --cacert {_display_path(ca)} https://{domain}/` work)\n")
    else:
        out.write("(the config has no DNS line: this machine has no resolvconf, which "
                  "wg-quick needs to apply one; --resolve above does not need it)\n")


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
                    help="the gateway's data directory: admin-token "
                         "(default: %(default)s)")
    sp.add_argument("--config-out", metavar="FILE",
                    help="where to write the wg-quick config (default: ./<name>.conf)")
    sp.add_argument("--wait", type=float, default=60.0,
                    help="seconds to wait for management and the gateway (default: %(default)s)")
    sp.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    sp.add_argument("--dns", choices=["auto", "keep", "omit"], default="auto",
                    help="the config's DNS line: keep it, omit it (as a comment), or "
                         "auto: keep it only where wg-quick can apply it (resolvconf "
                         "installed) (default: %(default)s)")
