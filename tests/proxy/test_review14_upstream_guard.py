"""Review 14 (sec14): a tenant's ``direct_upstream`` target aimed at the
gateway host itself or at cloud metadata (the dial guard,
:mod:`nbgateway.dial.guard`, sans-IO).  Pins, all holding on main:

* the gateway's own listeners -- the public port, the health/metrics port,
  the embedded management's REST and gRPC ports, each bound to every
  interface or to loopback -- are refused in every spelling a tenant can
  write (inet_aton forms, IPv4-mapped and NAT64 IPv6, unspecified
  addresses, the host's own addresses), even when the operator's allow-list
  covers them;
* link-local metadata (``169.254.169.254``, ``fe80::``) in every spelling,
  with or without an IPv6 zone, is not opened by a catch-all; only an
  entry inside the block opens it, and only for its account;
* an allow entry scoped to one account never opens a target for another
  (two tenants, one address).
"""

from __future__ import annotations

import ipaddress

import pytest

from nbgateway.dial.guard import (
    GATEWAY_LISTENER,
    NOT_ALLOWED,
    DialPolicy,
    Listener,
    classify_host,
    parse_allow_list,
)

HOST_ADDRESSES = {ipaddress.ip_address("198.51.100.7"), ipaddress.ip_address("2001:db8::7")}
#: public 443 and health/metrics 9090 on every interface; management REST
#: 8081 and gRPC 33073 on loopback only, as the embedded default binds them
LISTENERS = [Listener.of("", 443), Listener.of("0.0.0.0", 9090),
             Listener.of("127.0.0.1", 8081), Listener.of("localhost", 33073)]
#: an operator who opened everything, loopback included (scoped to the
#: embedded default's account "op"), and the host's own network
GENEROUS = ("0.0.0.0/0,::/0,127.0.0.0/8@op,::1/128@op,0.0.0.0/8@op,::/128@op,"
            "198.51.100.0/24,2001:db8::/64")


def _policy(allow: str = GENEROUS) -> DialPolicy:
    return DialPolicy(parse_allow_list(allow), listeners=lambda: LISTENERS,
                      is_local=lambda ip: ip in HOST_ADDRESSES)


def _judge(host: str, port: int, account: str = "op") -> str:
    kind = classify_host(host)
    assert kind.ip is not None, (host, kind)
    decision = _policy().check(account, kind.ip, port)
    return decision.reason


SELF_SPELLINGS_EVERY_INTERFACE = [
    "127.0.0.1", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "127.0.0.1.",
    "127.9.9.9", "[::1]", "::ffff:127.0.0.1", "[::ffff:7f00:1]", "0", "0.0.0.0", "[::]",
    "198.51.100.7", "::ffff:198.51.100.7", "[2001:db8::7]", "64:ff9b::7f00:1",
    "64:ff9b::c633:6407",
]


@pytest.mark.parametrize("port", [443, 9090])
@pytest.mark.parametrize("host", SELF_SPELLINGS_EVERY_INTERFACE)
def test_listeners_on_every_interface_are_never_reachable(host, port):
    reason = _judge(host, port)
    assert reason == GATEWAY_LISTENER, (host, port, reason)


@pytest.mark.parametrize("port", [8081, 33073])
@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "0x7f000001", "::ffff:127.0.0.1",
                                  "0.0.0.0", "[::]", "64:ff9b::7f00:1"])
def test_management_ports_on_loopback_are_never_reachable(host, port):
    assert _judge(host, port) == GATEWAY_LISTENER


def test_the_same_addresses_on_other_ports_follow_the_allow_list():
    # the pins above are about the listeners, not the addresses: the
    # operator's explicit loopback entry still opens another port for "op"
    assert _judge("127.0.0.1", 8000) == "allowed"
    assert _judge("127.0.0.1", 8000, account="tenant") == "loopback"
    assert _judge("198.51.100.7", 8000, account="tenant") == "allowed"


METADATA_SPELLINGS = [
    "169.254.169.254", "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518",
    "::ffff:169.254.169.254", "[::ffff:a9fe:a9fe]", "64:ff9b::a9fe:a9fe", "::a9fe:a9fe",
    "fe80::a9fe:a9fe", "fe80::1%eth0", "[fe80::1%25eth0]",
]


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_link_local_metadata_is_not_opened_by_a_catch_all(host):
    kind = classify_host(host)
    if kind.ip is None:  # a spelling the guard does not even read as an address
        assert kind.invalid, (host, kind)
        return
    decision = _policy().check("tenant", kind.ip, 80)
    assert not decision.allowed, (host, decision)
    assert decision.reason in ("link_local", "ipv4_compatible"), (host, decision)


def test_an_entry_inside_the_block_opens_metadata_for_its_account_only():
    policy = DialPolicy(parse_allow_list("0.0.0.0/0,169.254.169.254@infra"))
    ip = ipaddress.ip_address("169.254.169.254")
    assert policy.check("infra", ip, 80).allowed
    assert policy.check("tenant", ip, 80).reason == "link_local"


def test_one_address_two_tenants_scoped_entries():
    policy = DialPolicy(parse_allow_list("10.20.0.0/16@tenant-a"))
    ip = ipaddress.ip_address("10.20.1.2")
    assert policy.check("tenant-a", ip, 5432).allowed
    assert policy.check("tenant-b", ip, 5432).reason == NOT_ALLOWED
    assert policy.check("tenant-a ", ip, 5432).reason == NOT_ALLOWED
    assert policy.check("TENANT-A", ip, 5432).reason == NOT_ALLOWED
