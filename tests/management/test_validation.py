"""Every rule of nbgateway.management.validation, one test each."""

from __future__ import annotations

import dataclasses

import pytest

from nbgateway.management.errors import ValidationError
from nbgateway.management.model import (
    AccessRestrictions,
    AuthConfig,
    BearerAuth,
    HeaderAuth,
    PasswordAuth,
    PinAuth,
    Service,
    Target,
    TargetOptions,
)
from nbgateway.management.validation import (
    canonical_header_key,
    split_host_port_ok,
    validate_service,
)

DOMAIN = "myapp.eu.proxy.netbird.io"


def cluster_target(**kw) -> Target:
    base = dict(
        target_type="cluster",
        target_id="eu.proxy.netbird.io",
        host="backend.lan",
        port=8080,
        protocol="http",
        options=TargetOptions(direct_upstream=True),
    )
    base.update(kw)
    return Target(**base)


def peer_target(**kw) -> Target:
    base = dict(target_type="peer", target_id="peer-1", port=80, protocol="http")
    base.update(kw)
    return Target(**base)


def svc(**kw) -> Service:
    base = dict(account_id="acct-1", name="myapp", domain=DOMAIN, targets=(peer_target(),))
    base.update(kw)
    return Service(**base)


def private_svc(**kw) -> Service:
    base = dict(private=True, access_groups=("grp-admins",), targets=(cluster_target(),))
    base.update(kw)
    return svc(**base)


def rejects(service: Service, fragment: str) -> str:
    with pytest.raises(ValidationError) as info:
        validate_service(service)
    assert fragment in info.value.message, info.value.message
    assert info.value.http_status == 422
    return info.value.message


# --- basic fields ---------------------------------------------------------------------


def test_name_required():
    assert rejects(svc(name=""), "service name is required") == "service name is required"


def test_name_max_length():
    validate_service(svc(name="x" * 255))
    rejects(svc(name="x" * 256), "service name exceeds maximum length of 255 characters")


def test_targets_required():
    rejects(svc(targets=()), "at least one target is required")


def test_mode_defaults_to_http_and_input_not_mutated():
    original = svc(mode="")
    out = validate_service(original)
    assert out.mode == "http"
    assert original.mode == ""


def test_unsupported_mode():
    assert rejects(svc(mode="quic"), "unsupported mode") == 'unsupported mode "quic"'


# --- header auth ------------------------------------------------------------------------


def with_header(header: str, value: str = "secret", enabled: bool = True) -> Service:
    return svc(auth=AuthConfig(header_auths=(HeaderAuth(enabled, header, value),)))


def test_header_auth_name_required():
    rejects(with_header(""), "header_auths[0]: header name is required")


def test_header_auth_invalid_name():
    rejects(
        with_header("bad header"), 'header_auths[0]: "bad header" is not a valid HTTP header name'
    )


def test_header_auth_hop_by_hop():
    rejects(with_header("connection"), "is a hop-by-hop header and cannot be used for auth")


@pytest.mark.parametrize("name", ["Cookie", "x-forwarded-for", "X-Real-IP", "Content-Type"])
def test_header_auth_proxy_managed(name):
    rejects(with_header(name), "is managed by the proxy and cannot be used for auth")


def test_header_auth_host():
    rejects(with_header("host"), "header_auths[0]: Host header cannot be used for auth")


def test_header_auth_value_too_long():
    validate_service(with_header("X-Key", "v" * 4096))
    rejects(
        with_header("X-Key", "v" * 4097), "header_auths[0]: value exceeds maximum length of 4096"
    )


def test_header_auth_disabled_entries_are_not_checked():
    validate_service(with_header("", enabled=False))


# --- access restrictions --------------------------------------------------------------------


def test_restrictions_crowdsec_mode_invalid():
    r = AccessRestrictions(crowdsec_mode="block")
    assert rejects(svc(restrictions=r), "crowdsec_mode") == 'crowdsec_mode "block" is invalid'


def test_restrictions_cidr_count_limit():
    many = tuple(f"10.0.{i // 256}.{i % 256}/32" for i in range(201))
    rejects(
        svc(restrictions=AccessRestrictions(allowed_cidrs=many)),
        "allowed_cidrs: exceeds maximum of 200 entries",
    )


def test_restrictions_cidr_parse_error():
    rejects(svc(restrictions=AccessRestrictions(blocked_cidrs=("nope",))), "blocked_cidrs[0]")


def test_restrictions_cidr_host_bits():
    rejects(
        svc(restrictions=AccessRestrictions(allowed_cidrs=("10.0.0.1/8",))),
        'allowed_cidrs[0]: "10.0.0.1/8" has host bits set, use 10.0.0.0/8 instead',
    )


def test_restrictions_country_code_length():
    rejects(
        svc(restrictions=AccessRestrictions(allowed_countries=("DEU",))),
        'allowed_countries[0]: "DEU" must be a 2-letter ISO 3166-1 alpha-2 code',
    )


def test_restrictions_country_count_limit():
    rejects(
        svc(restrictions=AccessRestrictions(blocked_countries=("de",) * 51)),
        "blocked_countries: exceeds maximum of 50 entries",
    )


def test_restrictions_countries_upper_cased_in_copy():
    out = validate_service(svc(restrictions=AccessRestrictions(blocked_countries=("de", "Fr"))))
    assert out.restrictions.blocked_countries == ("DE", "FR")


# --- private services -------------------------------------------------------------------------


def test_private_requires_access_groups_empty():
    rejects(private_svc(access_groups=()), "private services require at least one access group")


def test_private_requires_access_groups_omitted():
    rejects(private_svc(access_groups=None), "private services require at least one access group")


def test_private_rejects_bearer_auth():
    msg = rejects(
        private_svc(auth=AuthConfig(bearer_auth=BearerAuth(enabled=True))), "mutually exclusive"
    )
    assert msg == (
        "private services cannot enable bearer auth (SSO): "
        "NetBird-only access and SSO are mutually exclusive"
    )
    assert msg.lower() == (
        "private services cannot enable bearer auth (sso): "
        "netbird-only access and sso are mutually exclusive"
    )


def test_private_accepts_disabled_bearer_auth():
    validate_service(private_svc(auth=AuthConfig(bearer_auth=BearerAuth(enabled=False))))


def test_private_l4_needs_a_listen_port():
    msg = rejects(private_svc(mode="tcp"), "listen_port")
    assert msg == "listen_port is required for private TCP/UDP/TLS services"


def test_private_l4_accepted_with_listen_port():
    target = cluster_target(protocol="tcp", port=22, target_id="eu.proxy.netbird.io")
    for mode in ("tcp", "udp", "tls"):
        out = validate_service(private_svc(mode=mode, listen_port=2222, targets=(target,)))
        assert out.private and out.mode == mode and out.listen_port == 2222


def test_private_mode_omitted_becomes_http():
    assert validate_service(private_svc(mode="")).mode == "http"


def test_private_accepts_peer_target():
    validate_service(private_svc(targets=(peer_target(),)))


def test_private_accepts_cluster_target_with_access_groups():
    out = validate_service(private_svc())
    assert out.private and out.access_groups == ("grp-admins",)


@pytest.mark.parametrize(
    "auth",
    [
        AuthConfig(password_auth=PasswordAuth(True, "pw")),
        AuthConfig(pin_auth=PinAuth(True, "123456")),
        AuthConfig(header_auths=(HeaderAuth(True, "X-Key", "v"),)),
    ],
    ids=["password", "pin", "header"],
)
def test_private_rejects_password_pin_header_auth_deviation_s7(auth):
    rejects(private_svc(auth=auth), "private services cannot enable password, pin or header auth")


def test_private_rejects_empty_group_id():
    rejects(private_svc(access_groups=("grp-admins", "")), "access_groups[1]: group id is required")


def test_non_private_access_groups_are_inert():
    out = validate_service(svc(access_groups=()))
    assert out.private is False


# --- HTTP mode ------------------------------------------------------------------------------------


def test_http_domain_required():
    rejects(svc(domain=""), "service domain is required")


def test_http_listen_port_rejected():
    rejects(svc(listen_port=8443), "listen_port is not supported for HTTP services")


def test_cluster_target_empty_host():
    rejects(private_svc(targets=(cluster_target(host="  "),)), "target 0: has empty host")


def test_cluster_target_requires_direct_upstream():
    t = cluster_target(options=TargetOptions(direct_upstream=False))
    msg = rejects(private_svc(targets=(t,)), "direct upstream disabled")
    assert msg == "target 0: backend.lan has direct upstream disabled"


def test_cluster_target_empty_target_id():
    rejects(private_svc(targets=(cluster_target(target_id=""),)), "target 0 has empty target_id")


@pytest.mark.parametrize("host", ["backend.lan:8080", "1.2.3.4:80", "[fd00::1]:80"])
def test_cluster_target_host_with_port(host):
    rejects(private_svc(targets=(cluster_target(host=host),)), "must not include a port")


def test_cluster_target_bare_ipv6_host_is_fine():
    validate_service(private_svc(targets=(cluster_target(host="fd00::1"),)))


def test_direct_upstream_peer_target_host_invalid_characters():
    t = peer_target(host="bad host", options=TargetOptions(direct_upstream=True))
    rejects(svc(targets=(t,)), 'target 0: host "bad host" contains invalid characters')


def test_peer_target_host_unchecked_without_direct_upstream():
    validate_service(svc(targets=(peer_target(host="bad host"),)))


def test_subnet_target_requires_host():
    t = Target(target_type="subnet", target_id="res-1", port=80)
    rejects(svc(targets=(t,)), 'target 0 has empty host but target_type is "subnet"')


def test_invalid_target_type():
    rejects(svc(targets=(peer_target(target_type="bogus"),)), "invalid target_type")


def test_http_target_proxy_protocol_rejected():
    rejects(
        svc(targets=(peer_target(proxy_protocol=True),)),
        "target 0: proxy_protocol is not supported for HTTP services",
    )


def test_target_invalid_protocol():
    rejects(
        svc(targets=(peer_target(protocol="gopher"),)), 'target 0 has invalid protocol "gopher"'
    )


def test_target_port_out_of_range():
    rejects(svc(targets=(peer_target(port=70000),)), "target 0: port 70000 is out of range")


def test_path_rewrite_unknown():
    t = peer_target(options=TargetOptions(path_rewrite="strip"))
    rejects(svc(targets=(t,)), 'target 0: unknown path_rewrite mode "strip"')


def test_negative_request_timeout():
    t = peer_target(options=TargetOptions(request_timeout=-1))
    rejects(svc(targets=(t,)), "target 0: request_timeout must be positive")


def test_negative_session_idle_timeout():
    t = peer_target(options=TargetOptions(session_idle_timeout=-1))
    rejects(svc(targets=(t,)), "target 0: session_idle_timeout must be positive")


def test_request_timeout_maximum():
    t = peer_target(options=TargetOptions(request_timeout=301 * 10**9))
    rejects(svc(targets=(t,)), "target 0: request_timeout exceeds maximum of 5m0s")


def test_session_idle_timeout_maximum_and_order_of_timeout_checks():
    t = peer_target(options=TargetOptions(session_idle_timeout=601 * 10**9))
    rejects(svc(targets=(t,)), "target 0: session_idle_timeout exceeds maximum of 10m0s")
    ok = peer_target(options=TargetOptions(session_idle_timeout=600 * 10**9,
                                           request_timeout=300 * 10**9))
    validate_service(svc(targets=(ok,)))
    # request_timeout is checked before session_idle_timeout
    both = peer_target(options=TargetOptions(request_timeout=301 * 10**9,
                                             session_idle_timeout=-1))
    rejects(svc(targets=(both,)), "target 0: request_timeout exceeds maximum of 5m0s")


def test_custom_headers_too_many():
    headers = {f"X-H{i}": "v" for i in range(17)}
    t = peer_target(options=TargetOptions(custom_headers=headers))
    rejects(svc(targets=(t,)), "custom_headers count 17 exceeds maximum of 16")


def test_custom_header_invalid_name():
    t = peer_target(options=TargetOptions(custom_headers={"bad key": "v"}))
    rejects(svc(targets=(t,)), "is not a valid HTTP header name")


def test_custom_header_crlf():
    t = peer_target(options=TargetOptions(custom_headers={"X-A": "v\r\nX-B: evil"}))
    rejects(svc(targets=(t,)), "contains invalid characters")


def test_custom_header_collision():
    t = peer_target(options=TargetOptions(custom_headers={"x-a": "1", "X-A": "2"}))
    rejects(svc(targets=(t,)), "collide")


def test_custom_header_hop_by_hop():
    t = peer_target(options=TargetOptions(custom_headers={"Upgrade": "x"}))
    rejects(svc(targets=(t,)), "is a hop-by-hop header and cannot be set")


def test_custom_header_proxy_managed():
    t = peer_target(options=TargetOptions(custom_headers={"X-Forwarded-For": "x"}))
    rejects(svc(targets=(t,)), "is managed by the proxy and cannot be overridden")


def test_custom_header_host():
    t = peer_target(options=TargetOptions(custom_headers={"host": "x"}))
    rejects(svc(targets=(t,)), "use pass_host_header instead")


# --- L4 modes ----------------------------------------------------------------------------------


def l4(mode: str = "tcp", **kw) -> Service:
    t = Target(target_type="peer", target_id="peer-1", port=5432, protocol="tcp", enabled=False)
    base = dict(mode=mode, targets=(t,))
    base.update(kw)
    return svc(**base)


def test_l4_forces_targets_enabled():
    out = validate_service(l4())
    assert out.targets[0].enabled is True


def test_l4_exactly_one_target():
    two = l4().targets * 2
    rejects(l4(targets=two), "TCP/UDP services must have exactly one target")


def test_l4_target_port_required():
    t = dataclasses.replace(l4().targets[0], port=0)
    rejects(l4(targets=(t,)), "target port is required for L4 services")


def test_l4_cluster_target_requires_port_head_6268():
    t = Target(
        target_type="cluster",
        target_id="c",
        host="db.lan",
        port=0,
        protocol="tcp",
        options=TargetOptions(direct_upstream=True),
    )
    rejects(l4(targets=(t,)), "target port is required for L4 services")
    validate_service(l4(targets=(dataclasses.replace(t, port=5432),)))


def test_l4_invalid_target_type():
    t = dataclasses.replace(l4().targets[0], target_type="domain")
    rejects(l4(targets=(t,)), 'invalid target_type "domain" for L4 service')


def test_udp_proxy_protocol_rejected():
    t = dataclasses.replace(l4().targets[0], proxy_protocol=True)
    rejects(l4("udp", targets=(t,)), "proxy_protocol is not supported for UDP services")


def test_tls_requires_listen_port():
    rejects(l4("tls"), "listen_port is required for TLS services")
    validate_service(l4("tls", listen_port=8443))


def test_l4_domain_required():
    rejects(l4(domain=""), "domain is required for TCP/UDP services")


# --- helpers -------------------------------------------------------------------------------------


def test_split_host_port_matches_go():
    assert split_host_port_ok("a:1") and split_host_port_ok("[::1]:80")
    assert not split_host_port_ok("fd00::1") and not split_host_port_ok("backend.lan")


def test_canonical_header_key():
    assert canonical_header_key("x-real-ip") == "X-Real-Ip"


@pytest.mark.parametrize(
    "domain", ["a b.example", "app..example", "-app.example", "app/x.example", "x" * 64 + ".io"]
)
def test_invalid_domain_rejected(domain):
    rejects(svc(domain=domain), "invalid domain")


def test_domain_normalised():
    assert validate_service(svc(domain="MyApp.EU.proxy.netbird.io.")).domain == DOMAIN


def test_nul_in_any_field_rejected():
    rejects(svc(name="a\x00"), "must not contain NUL")
    t = peer_target(options=TargetOptions(custom_headers={"X-A": "\x00"}))
    rejects(svc(targets=(t,)), "must not contain NUL")


# --- the host of a tunnel target goes into the mapping's target URL as it is ----------


@pytest.mark.parametrize("tt", ["host", "domain", "subnet"])
@pytest.mark.parametrize("host", ["a@127.0.0.1", "10.0.0.5:22", "10.0.0.5/x", "h#x", "h?x",
                                  "bad host", "h\r\nx", "[::1", "0x0"])
def test_tunnel_target_host_cannot_rewrite_the_target_url(tt, host):
    """``http://a@127.0.0.1:9/`` would dial 127.0.0.1:9 whatever ``port`` says:
    a host/domain/subnet target's host is an IP literal or a hostname (HTTP and L4)."""
    t = peer_target(target_type=tt, target_id="res-1", host=host)
    rejects(svc(targets=(t,)), "target 0")
    if tt != "domain":  # no L4 domain targets
        rejects(svc(mode="tcp", listen_port=5000, targets=(dataclasses.replace(t, port=22),)),
                "target 0")


@pytest.mark.parametrize("tt", ["host", "domain", "subnet"])
def test_tunnel_target_host_spellings_accepted(tt):
    for host in ("db.internal", "10.0.0.5", "fd00::5", "[fd00::5]", "my_host.lan"):
        t = peer_target(target_type=tt, target_id="res-1", host=host)
        validate_service(svc(targets=(t,)))
        if tt != "domain":
            validate_service(svc(mode="tcp", listen_port=5000,
                                 targets=(dataclasses.replace(t, port=22),)))


def test_l4_direct_host_target_is_checked():
    t = peer_target(target_type="host", target_id="res-1", host="0x0", port=22,
                    options=TargetOptions(direct_upstream=True))
    rejects(svc(mode="tcp", listen_port=5000, targets=(t,)), "unspecified")
