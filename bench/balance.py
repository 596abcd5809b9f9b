"""Benchmark: what several targets per path cost on the request path, one
target vs. three (round robin and least_conn), alternated in one run (no
network, no root needed).

Same harness as ``bench/http_path.py`` (imported from it): one keep-alive
connection on an in-memory transport carries requests for a private service
through the real front door, private gate, reverse proxy and access log to
an upstream agent that answers at once.  The variants differ only in the
mapping: one ``PathMapping`` for ``/``, or three with the same path (the
balancer picks a target per request, counts it in flight and releases it,
records the success).  Prints the median CPU microseconds per request of
each variant over ``--rounds`` alternated rounds, and the ratios to the
single target.  Checks every response and that the three targets got a
third of the requests each (round robin).

Run:  .venv/bin/python bench/balance.py [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_path import PEER, REQUEST, Mgmt, Response, Sent, Sink

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping

VARIANTS = ("single", "round_robin", "least_conn")


class Agent:
    def __init__(self) -> None:
        self.hosts: Counter[bytes] = Counter()

    def request(self, method: bytes, url: bytes, headers: Any, body: Any) -> Any:
        self.hosts[url.split(b"/")[2]] += 1
        return defer.succeed(Response())


class Pools:
    def __init__(self) -> None:
        self.the_agent = Agent()

    def agent(self, *_a: Any, **_kw: Any) -> Agent:
        return self.the_agent


def build(variant: str) -> tuple[Any, Sent, Sink, Pools]:
    clock = task.Clock()
    ports = (8081,) if variant == "single" else (8081, 8082, 8083)
    paths = []
    for port in ports:
        opts = pb.PathTargetOptions(direct_upstream=True)
        if variant != "single":
            opts.nbgw_balancing.policy = variant
        paths.append(pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/", options=opts))
    m = pb.ProxyMapping(id="svc-app", account_id="acct", domain="app.example", private=True,
                        path=paths)
    entries = {m.domain: entry_from_mapping(m)}
    gate = PrivateGate(TunnelValidationCache(Mgmt(), clock), lambda a, ip: True)
    pools = Pools()
    proxy = ReverseProxy(clock, pools, lambda a, d: object(), clock=clock)
    sink = Sink()
    res = GatewayResource(lookup=entries.get, proxy=proxy, gate=gate,
                          listener_account="acct", access_log=sink, clock=clock)
    site = ProxySite(res, reactor=clock)
    channel = site.buildProtocol(IPv4Address("TCP", PEER, 40000))
    transport = Sent()
    channel.makeConnection(transport)
    return channel, transport, sink, pools


def run(variant: str, requests: int) -> float:
    channel, transport, sink, pools = build(variant)
    channel.dataReceived(REQUEST)  # warm
    t0 = time.process_time()
    for _ in range(requests):
        channel.dataReceived(REQUEST)
    cpu = time.process_time() - t0
    served = requests + 1
    hosts = pools.the_agent.hosts
    if transport.ok != served or sink.entries != served:
        raise SystemExit(f"{variant}: {transport.ok} responses, {sink.entries} log entries "
                         f"for {served} requests")
    if variant != "single" and (len(hosts) != 3 or max(hosts.values()) - min(hosts.values()) > 1):
        raise SystemExit(f"{variant}: uneven spread {dict(hosts)}")
    channel.connectionLost(Failure(Exception("done")))
    return cpu * 1e6 / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.rounds):
        order = VARIANTS[i % 3:] + VARIANTS[:i % 3]
        for variant in order:
            results[variant].append(run(variant, args.requests))
    med = {v: statistics.median(r) for v, r in results.items()}
    print(f"{args.requests} requests x {args.rounds} rotated rounds, CPU microseconds per "
          "request (median):")
    for v in VARIANTS:
        print(f"  {v:12s} {med[v]:8.1f}   rounds: " + " ".join(f"{x:.1f}" for x in results[v]))
    for v in VARIANTS[1:]:
        print(f"  {v} / single: {med[v] / med['single']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
