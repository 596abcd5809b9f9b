"""``nbgateway-wg``: a small diagnostic console command in the spirit of wireguard-go.

    nbgateway-wg genkey            # like `wg genkey`
    nbgateway-wg pubkey            # like `wg pubkey` (private key on stdin)
    nbgateway-wg run CONFIG        # foreground endpoint answering ping on its addresses
"""

from __future__ import annotations

import argparse
import sys

from nbgateway.wireguard.keys import (
    generate_private_key,
    key_from_base64,
    key_to_base64,
    public_key,
)


def _genkey(_args) -> int:
    print(key_to_base64(generate_private_key()))
    return 0


def _pubkey(_args) -> int:
    try:
        private = key_from_base64(sys.stdin.read())
    except ValueError as exc:
        print(f"nbgateway-wg: error: {exc}", file=sys.stderr)
        return 1
    print(key_to_base64(public_key(private)))
    return 0


def _run(args) -> int:
    from nbgateway.wireguard.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"nbgateway-wg: error: {exc}", file=sys.stderr)
        return 1

    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from nbgateway.netstack.stack import Stack
    from nbgateway.wireguard.device import WireGuardDevice
    from nbgateway.wireguard.udp import listen

    level = LogLevel.levelWithName(args.log_level)
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    device = WireGuardDevice(cfg.private_key, reactor, mtu=cfg.mtu)
    # the netstack answers ping (and ICMP/UDP errors) on the configured addresses
    stack = Stack(device, reactor, [str(a.ip) for a in cfg.addresses], mtu=cfg.mtu,
                  verify_checksums=False)  # WireGuard authenticated every inbound packet
    device.sink = stack
    for p in cfg.peers:
        device.add_peer(
            p.public_key,
            allowed_ips=p.allowed_ips,
            endpoint=p.endpoint,
            preshared_key=p.preshared_key,
            persistent_keepalive=p.persistent_keepalive,
        )
    try:
        port = listen(reactor, device, cfg.listen_port, interface=args.listen_address)
    except Exception as exc:  # CannotListenError
        msg = f"cannot listen on UDP {cfg.listen_port}: {exc}"
        print(f"nbgateway-wg: error: {msg}", file=sys.stderr)
        return 1
    from twisted.logger import Logger

    log = Logger(namespace="nbgateway.wg")
    log.info(
        "WireGuard endpoint {public_key} listening on UDP {port}, addresses {addresses}",
        public_key=key_to_base64(device.public_key),
        port=port.getHost().port,
        addresses=", ".join(str(a) for a in cfg.addresses),
    )

    def start() -> None:
        for p in cfg.peers:
            if p.endpoint is not None:
                device.initiate(p.public_key)

    def stop() -> None:
        stack.close()
        device.close()
        log.info("stopped; counters {counters}", counters=dict(device.counters))

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbgateway-wg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("genkey", help="print a new private key").set_defaults(func=_genkey)
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key") \
        .set_defaults(func=_pubkey)
    run = sub.add_parser("run", help="run an endpoint in the foreground from a config file")
    run.add_argument("config")
    run.add_argument("--listen-address", default="", help="UDP bind address (default: all IPv4)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    run.set_defaults(func=_run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
