"""The direct-dial policy (issue 11.1): host spellings, special blocks,
per-account allow-list scoping, the gateway's own listeners."""

from __future__ import annotations

import ipaddress

import pytest

from nbgateway.config import ConfigError, load
from nbgateway.dial.guard import (
    ALLOWED,
    GATEWAY_LISTENER,
    NOT_ALLOWED,
    AllowRule,
    DialPolicy,
    Listener,
    classify_host,
    format_allow_list,
    parse_allow_list,
    parse_inet_aton,
    parse_ip_literal,
)

ip = ipaddress.ip_address

# -- spellings --------------------------------------------------------------------------------

LOOPBACK_SPELLINGS = [
    "127.0.0.1", "127.1", "127.0.1", "0x7f000001", "0X7F000001", "2130706433", "0177.0.0.1",
    "017700000001", "0x7f.1", "0x7f.0.0.0x1", "127.0.0.1.", "[::ffff:127.0.0.1]",
    "::ffff:127.0.0.1", "::ffff:7f00:1", "[::ffff:7f00:1]",
]


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_every_loopback_spelling_is_127_0_0_1(spelling):
    assert parse_ip_literal(spelling) == ip("127.0.0.1")
    assert classify_host(spelling).ip == ip("127.0.0.1")


@pytest.mark.parametrize(("text", "expected"), [
    ("0", "0.0.0.0"), ("0.0.0.0", "0.0.0.0"), ("0x", "0.0.0.0"), ("1.2.65535", "1.2.255.255"),
    ("1.16777215", "1.255.255.255"), ("4294967295", "255.255.255.255"),
    ("169.254.169.254", "169.254.169.254"), ("0251.0376.0251.0376", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
])
def test_inet_aton_forms(text, expected):
    assert parse_inet_aton(text) == ip(expected)


@pytest.mark.parametrize("text", [
    "256.1.1.1", "1.2.3.256", "1.2.3.4.5", "08", "09.1.1.1", "1.2.16777216", "4294967296",
    "", "1..2", "0xg", "1.2.3.-1", "abc", "1 .2.3.4", "١٢٧.0.0.1",
])
def test_inet_aton_rejects(text):
    assert parse_inet_aton(text) is None


@pytest.mark.parametrize(("host", "kind"), [
    ("[::1]", ("ip", "::1")), ("::1", ("ip", "::1")), ("[::]", ("ip", "::")),
    ("0.0.0.0", ("ip", "0.0.0.0")), ("::7f00:1", ("ip", "::7f00:1")),
    ("localhost", ("name", "localhost")), ("LocalHost.", ("name", "localhost")),
    ("api.localhost", ("name", "api.localhost")), ("db1", ("name", "db1")),
    ("Example.COM", ("name", "example.com")), ("1e100.net", ("name", "1e100.net")),
    # numeric-looking hosts that are not IPv4 never reach DNS as names
    ("1.2.3.999", ("invalid", None)), ("10.0.0.0x1g", ("name", "10.0.0.0x1g")),
    ("host.123", ("invalid", None)), ("a.0x10", ("invalid", None)),
    ("foo bar", ("invalid", None)), ("[127.0.0.1", ("invalid", None)),
    ("-bad.example", ("invalid", None)), ("", ("invalid", None)), ("a..b", ("invalid", None)),
    ("[fe80::1", ("invalid", None)),
    ("bücher.example", ("name", "xn--bcher-kva.example")), ("xn--.example", ("invalid", None)),
])
def test_classify_host(host, kind):
    got = classify_host(host)
    what, value = kind
    if what == "ip":
        assert got.ip == ip(value)
    elif what == "name":
        assert got.ip is None and got.name == value
    else:
        assert got.ip is None and got.name is None and got.invalid


# -- special blocks -------------------------------------------------------------------------

CATCH_ALL = DialPolicy(parse_allow_list("0.0.0.0/0,::/0"))


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("169.254.169.254", "link_local"),
    ("fe80::1", "link_local"), ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"),
    ("::", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("255.255.255.255", "reserved"), ("240.0.0.1", "reserved"),
    ("::7f00:1", "ipv4_compatible"), ("::a9fe:a9fe", "ipv4_compatible"),
])
def test_special_addresses_are_not_opened_by_a_catch_all(address, reason):
    decision = CATCH_ALL.check("acct", ip(address), 80)
    assert not decision.allowed
    assert decision.reason == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "10.1.2.3", "2001:db8::1", "::ffff:8.8.8.8"])
def test_catch_all_allows_ordinary_addresses(address):
    assert CATCH_ALL.check("acct", ip(address), 80).allowed


@pytest.mark.parametrize("spelling", [*LOOPBACK_SPELLINGS, "[::1]", "0.0.0.0", "[::]",
                                      "169.254.169.254", "2852039166"])
def test_nothing_listed_nothing_allowed(spelling):
    decision = DialPolicy().check("acct", parse_ip_literal(spelling), 8080)
    assert not decision.allowed
    assert decision.reason != ALLOWED


def test_empty_allow_list_denies_ordinary_addresses_too():
    decision = DialPolicy().check("acct", ip("10.1.2.3"), 80)
    assert (decision.allowed, decision.reason) == (False, NOT_ALLOWED)


def test_explicit_loopback_entry_scoped_to_one_account():
    policy = DialPolicy(parse_allow_list("127.0.0.1/32@a"))
    assert policy.check("a", ip("127.0.0.1"), 8000).allowed
    assert policy.check("a", ip("::ffff:127.0.0.1"), 8000).allowed  # mapped = the IPv4 address
    assert policy.check("b", ip("127.0.0.1"), 8000).reason == "loopback"
    assert policy.check("a", ip("127.0.0.2"), 8000).reason == "loopback"
    assert policy.check("a", ip("::1"), 8000).reason == "loopback"
    assert not policy.check("a", ip("10.0.0.1"), 8000).allowed


def test_link_local_needs_an_entry_inside_the_block():
    assert not DialPolicy(parse_allow_list("169.0.0.0/8")).check(
        "a", ip("169.254.169.254"), 80).allowed
    assert DialPolicy(parse_allow_list("169.254.169.254")).check(
        "a", ip("169.254.169.254"), 80).allowed


# -- allow-list scoping ---------------------------------------------------------------------------


def test_cidr_scoping_per_account():
    policy = DialPolicy(parse_allow_list("10.0.0.0/8@a+b, 192.168.1.5, 2001:db8::/32@c"))
    assert policy.check("a", ip("10.9.8.7"), 80).allowed
    assert policy.check("b", ip("10.9.8.7"), 80).allowed
    assert policy.check("c", ip("10.9.8.7"), 80).reason == NOT_ALLOWED
    assert policy.check("zzz", ip("192.168.1.5"), 80).allowed
    assert policy.check("zzz", ip("192.168.1.6"), 80).reason == NOT_ALLOWED
    assert policy.check("c", ip("2001:db8::5"), 443).allowed
    assert policy.check("a", ip("2001:db8::5"), 443).reason == NOT_ALLOWED
    # an account id that merely contains another's is not that account
    assert policy.check("ab", ip("10.9.8.7"), 80).reason == NOT_ALLOWED


def test_allow_list_syntax_and_normalisation():
    rules = parse_allow_list(" 10.1.2.3/8 @ b+a ,192.168.1.5,,::1")
    assert rules == (
        AllowRule(ipaddress.ip_network("10.0.0.0/8"), frozenset({"a", "b"})),
        AllowRule(ipaddress.ip_network("192.168.1.5/32")),
        AllowRule(ipaddress.ip_network("::1/128")),
    )
    assert format_allow_list(rules) == "10.0.0.0/8@a+b,192.168.1.5/32,::1/128"
    assert parse_allow_list("") == ()


@pytest.mark.parametrize("text", [
    "nope", "10.0.0.0/33", "10.0.0.0/8@", "10.0.0.0/8@a b", "10.0.0.0/8@a++b",
    "::ffff:0:0/96", "::ffff:127.0.0.1", "127.1",
])
def test_allow_list_rejects(text):
    with pytest.raises(ValueError):
        parse_allow_list(text)


def test_config_flag_and_env():
    cfg = load({"direct_upstream_allow": "10.0.0.0/8@acct1+acct2,127.0.0.1/32@acct1"})
    assert cfg.direct_upstream_allow == "10.0.0.0/8@acct1+acct2,127.0.0.1/32@acct1"
    cfg = load({}, {"NB_PROXY_DIRECT_UPSTREAM_ALLOW": "192.0.2.0/24"})
    assert cfg.direct_upstream_allow == "192.0.2.0/24"
    assert load({}).direct_upstream_allow == ""
    with pytest.raises(ConfigError, match="--direct-upstream-allow"):
        load({"direct_upstream_allow": "10.0.0.0/8@"})


# -- the gateway's own listeners ------------------------------------------------------------------


def test_own_listeners_are_never_reachable_even_when_listed():
    local = {ip("192.0.2.2"), ip("fd00::2")}
    policy = DialPolicy(
        parse_allow_list("127.0.0.0/8,::1/128,0.0.0.0/8,192.0.2.0/24,fd00::/64,::/128"),
        listeners=lambda: [Listener.of("127.0.0.1", 8080), Listener.of("", 8443),
                           Listener.of("192.0.2.2", 33073), Listener.of("localhost", 9000)],
        is_local=lambda a: a in local)
    for address, port in [
        ("127.0.0.1", 8080), ("::ffff:127.0.0.1", 8080), ("0.0.0.0", 8080),
        ("127.0.0.5", 8443), ("::1", 8443), ("192.0.2.2", 8443), ("fd00::2", 8443),
        ("0.0.0.0", 8443), ("::", 8443), ("192.0.2.2", 33073), ("127.0.0.1", 9000),
    ]:
        decision = policy.check("acct", ip(address), port)
        assert (decision.allowed, decision.reason) == (False, GATEWAY_LISTENER), (address, port)
    for address, port in [
        ("127.0.0.1", 8081), ("127.0.0.2", 8080), ("192.0.2.3", 8443), ("192.0.2.9", 33073),
    ]:
        assert policy.check("acct", ip(address), port).allowed, (address, port)


def test_listener_of_bind_addresses():
    assert Listener.of("", 443) == Listener(None, 443)
    assert Listener.of("0.0.0.0", 443) == Listener(None, 443)
    assert Listener.of("::", 443) == Listener(None, 443)
    assert Listener.of("[::1]", 443) == Listener(ip("::1"), 443)
    with pytest.raises(ValueError):
        Listener.of("mgmt.example.com", 443)


def test_nat64_addresses_are_judged_as_the_ipv4_they_reach():
    """``64:ff9b::/96`` (RFC 6052) translates to the IPv4 address it embeds on
    a host with a NAT64 path: a catch-all does not open loopback, metadata
    or the gateway's own listeners behind the prefix."""
    policy = DialPolicy(parse_allow_list("::/0,0.0.0.0/0"),
                        listeners=lambda: [Listener.of("192.0.2.2", 8443)])
    for address, reason in [("64:ff9b::7f00:1", "loopback"),
                            ("64:ff9b::127.0.0.1", "loopback"),
                            ("64:ff9b::a9fe:a9fe", "link_local"),
                            ("64:ff9b::e000:1", "multicast")]:
        decision = policy.check("acct", ip(address), 80)
        assert (decision.allowed, decision.reason) == (False, reason), address
    decision = policy.check("acct", ip("64:ff9b::192.0.2.2"), 8443)
    assert (decision.allowed, decision.reason) == (False, GATEWAY_LISTENER)
    # a public IPv4 address behind the prefix: the IPv6 rule decides
    assert policy.check("acct", ip("64:ff9b::198.51.100.7"), 80).allowed
    v4_only = DialPolicy(parse_allow_list("198.51.100.0/24"))
    assert v4_only.check("acct", ip("64:ff9b::198.51.100.7"), 80).reason == NOT_ALLOWED
    # an explicit IPv4 loopback entry does not open the NAT64 spelling alone
    lo = DialPolicy(parse_allow_list("127.0.0.0/8"))
    assert not lo.check("acct", ip("64:ff9b::7f00:1"), 80).allowed
