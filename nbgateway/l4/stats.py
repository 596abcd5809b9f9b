"""L4 counters, exported as Prometheus metrics (``nbgateway_l4_*``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class L4Stats:
    """Counters of one gateway's L4 routers; ``active`` is read live."""

    def __init__(self, active: Callable[[], int] | None = None,
                 udp_sessions: Callable[[], int] | None = None) -> None:
        self.active_fn = active
        self.udp_sessions_fn = udp_sessions
        self.accepted = 0
        self.relays_started = 0
        self.dial_failures = 0
        self.limit_hits = 0
        self.account_limit_hits = 0
        self.source_limit_hits = 0
        self.header_timeouts = 0
        self.bad_input = 0
        self.no_route = 0
        self.denied = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.udp_datagrams_in = 0
        self.udp_datagrams_out = 0
        self.udp_session_limit_hits = 0
        self.udp_rate_limit_hits = 0
        self.udp_queue_drops = 0
        self.udp_account_limit_hits = 0
        self.port_refused = 0

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("nbgateway_l4_active_relays", "live L4 TCP relays",
                                value=self.active_fn() if self.active_fn else 0)
        yield GaugeMetricFamily("nbgateway_l4_udp_sessions", "live UDP relay sessions",
                                value=self.udp_sessions_fn() if self.udp_sessions_fn else 0)
        for name, doc, value in (
            ("connections", "accepted L4 connections", self.accepted),
            ("relays", "L4 relays started (a route chosen, dialing)", self.relays_started),
            ("dial_failures", "L4 upstream dials that failed", self.dial_failures),
            ("limit_hits", "connections refused at the per-router relay limit",
             self.limit_hits),
            ("account_limit_hits", "connections refused because their account held half "
             "of a shared router's relays", self.account_limit_hits),
            ("source_limit_hits", "connections refused because their source address "
             "held its share of a router's connections still before their route",
             self.source_limit_hits),
            ("header_timeouts", "connections cut at the PROXY/SNI deadline",
             self.header_timeouts),
            ("bad_input", "malformed PROXY headers or missing required ones", self.bad_input),
            ("no_route", "connections with no matching route", self.no_route),
            ("denied", "connections refused by restrictions or the private gate",
             self.denied),
            ("udp_datagrams_in", "UDP datagrams from clients", self.udp_datagrams_in),
            ("udp_datagrams_out", "UDP datagrams to clients", self.udp_datagrams_out),
            ("udp_session_limit_hits", "UDP sessions refused at the per-service bound",
             self.udp_session_limit_hits),
            ("udp_rate_limit_hits", "UDP sessions refused by the new-session rate",
             self.udp_rate_limit_hits),
            ("udp_queue_drops", "UDP datagrams dropped while their session's private gate "
             "was pending (queue full)", self.udp_queue_drops),
            ("udp_account_limit_hits", "UDP sessions refused at the per-account bound "
             "(over the account's services)", self.udp_account_limit_hits),
            ("port_refused", "public L4 mappings refused: their host port is outside "
             "--l4-public-ports", self.port_refused),
        ):
            yield CounterMetricFamily(f"nbgateway_l4_{name}", doc, value=value)
        fam = CounterMetricFamily("nbgateway_l4_bytes", "bytes relayed by L4 TCP relays",
                                  labels=["direction"])
        fam.add_metric(["upstream"], self.bytes_up)
        fam.add_metric(["downstream"], self.bytes_down)
        yield fam

    def describe(self) -> list[Any]:
        return []
