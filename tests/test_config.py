"""The configuration model: precedence flags > env > defaults, validation errors
(one line, naming the flag), the token rule, --private."""

from __future__ import annotations

import base64

import pytest
from twisted.python import usage

from nbgateway.config import (
    EMBEDDED_DOMAIN,
    SETTINGS,
    TOKEN_REQUIRED,
    Config,
    ConfigError,
    HostPort,
    load,
)
from nbgateway.options import Options

MGMT_ENV = {"NB_PROXY_TOKEN": "secret-token", "NB_PROXY_DOMAIN": "proxy.example.com"}


def parse(argv, environ=None) -> Config:
    opts = Options(environ=environ or {})
    opts.parseOptions(argv)
    return opts.config


def usage_error(argv, environ=None) -> str:
    with pytest.raises(usage.UsageError) as info:
        parse(argv, environ)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- defaults and precedence ----------------------------------------------------------------


def test_defaults():
    cfg = parse([])
    assert cfg.embedded and cfg.mgmt == ""
    assert cfg.addr == HostPort("", 443)
    assert cfg.domain == EMBEDDED_DOMAIN
    assert cfg.health_addr == HostPort("127.0.0.1", 8080)
    assert cfg.cert_dir == "./certs"
    assert cfg.datadir == "./nbgateway-data"
    assert (cfg.tunnel_http_port, cfg.tunnel_https_port) == (80, 443)
    assert cfg.forwarded_proto == "auto"
    # the embedded default serves private services (its own management only sends
    # them to a proxy with the private capability); capabilities as acceptance b1
    assert cfg.private is True and cfg.supports_custom_ports is True
    assert cfg.advertised_wg_endpoint() == "127.0.0.1:51820"
    assert cfg.max_dial_timeout == 0.0 and cfg.max_session_idle_timeout == 0.0
    assert cfg.drain_timeout == 30.0 and cfg.tunnel_cache_ttl == 300.0
    assert cfg.mapping_batch_watchdog == 120.0
    assert cfg.log_level == "info" and cfg.log_format == "text"
    assert cfg.max_tunnel_connections == 16384


@pytest.mark.parametrize(
    ("flag", "env", "flag_value", "env_value", "attr", "from_flag", "from_env"),
    [
        ("--addr", "NB_PROXY_ADDRESS", "127.0.0.1:8443", ":9443", "addr",
         HostPort("127.0.0.1", 8443), HostPort("", 9443)),
        ("--wg-port", "NB_PROXY_WG_PORT", "5000", "6000", "wg_port", 5000, 6000),
        ("--log-level", "NB_PROXY_LOG_LEVEL", "debug", "warn", "log_level", "debug", "warn"),
        ("--log-format", "NB_PROXY_LOG_FORMAT", "json", "text", "log_format", "json", "text"),
        ("--cert-dir", "NB_PROXY_CERTIFICATE_DIRECTORY", "/a", "/b", "cert_dir", "/a", "/b"),
        ("--wildcard-cert-dir", "NB_PROXY_WILDCARD_CERT_DIR", "/w1", "/w2",
         "wildcard_cert_dir", "/w1", "/w2"),
        ("--max-dial-timeout", "NB_PROXY_MAX_DIAL_TIMEOUT", "1m30s", "250ms",
         "max_dial_timeout", 90.0, 0.25),
        ("--max-session-idle-timeout", "NB_PROXY_MAX_SESSION_IDLE_TIMEOUT", "2h", "10s",
         "max_session_idle_timeout", 7200.0, 10.0),
        ("--forwarded-proto", "NB_PROXY_FORWARDED_PROTO", "https", "http",
         "forwarded_proto", "https", "http"),
        ("--trusted-proxies", "NB_PROXY_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1",
         "172.16.0.0/12", "trusted_proxies", ("10.0.0.0/8", "192.168.1.1/32"),
         ("172.16.0.0/12",)),
        ("--datadir", "NB_PROXY_DATADIR", "/var/lib/a", "/var/lib/b", "datadir",
         "/var/lib/a", "/var/lib/b"),
        ("--tunnel-http-port", "NB_PROXY_TUNNEL_HTTP_PORT", "8080", "8081",
         "tunnel_http_port", 8080, 8081),
        ("--drain-timeout", "NB_PROXY_DRAIN_TIMEOUT", "5s", "1m", "drain_timeout", 5.0, 60.0),
        ("--wg-endpoint", "NB_PROXY_WG_ENDPOINT", "gw.example.com:51820", "192.0.2.1:4000",
         "wg_endpoint", "gw.example.com:51820", "192.0.2.1:4000"),
        ("--supports-custom-ports", "NB_PROXY_SUPPORTS_CUSTOM_PORTS", "true", "false",
         "supports_custom_ports", True, False),
        ("--health-addr", "NB_PROXY_HEALTH_ADDRESS", "[::1]:9000", "0.0.0.0:9001",
         "health_addr", HostPort("::1", 9000), HostPort("0.0.0.0", 9001)),
        ("--l4-public-ports", "NB_PROXY_L4_PUBLIC_PORTS", "8000-8999", "53,10000-20000",
         "l4_public_ports", ((8000, 8999),), ((53, 53), (10000, 20000))),
        ("--max-tunnel-connections", "NB_PROXY_MAX_TUNNEL_CONNECTIONS", "100", "7",
         "max_tunnel_connections", 100, 7),
    ],
)
def test_flag_beats_env_beats_default(flag, env, flag_value, env_value, attr, from_flag,
                                      from_env):
    assert getattr(parse([flag, flag_value], {env: env_value}), attr) == from_flag
    assert getattr(parse([], {env: env_value}), attr) == from_env
    assert getattr(parse([flag, flag_value]), attr) == from_flag


@pytest.mark.parametrize(
    ("flag", "env", "attr"),
    [("--private", "NB_PROXY_PRIVATE", "private"),
     ("--proxy-protocol", "NB_PROXY_PROXY_PROTOCOL", "proxy_protocol"),
     ("--require-subdomain", "NB_PROXY_REQUIRE_SUBDOMAIN", "require_subdomain"),
     ("--debug", "NB_PROXY_DEBUG_LOGS", "debug")],
)
def test_presence_flags(flag, env, attr):
    remote = ["--mgmt", "http://127.0.0.1:33073", "--domain", "gw.example"]
    env_base = {"NB_PROXY_TOKEN": "t"}
    assert getattr(parse(remote, env_base), attr) is False
    assert getattr(parse([*remote, flag], env_base), attr) is True
    assert getattr(parse(remote, {**env_base, env: "true"}), attr) is True
    assert getattr(parse(remote, {**env_base, env: "1"}), attr) is True
    assert getattr(parse(remote, {**env_base, env: "False"}), attr) is False
    assert getattr(parse([flag], {env: "false"}), attr) is True  # the flag wins


def test_env_set_to_empty_overrides_default():
    # upstream uses os.LookupEnv: an empty variable is a value (here: disable health)
    assert parse([], {"NB_PROXY_HEALTH_ADDRESS": ""}).health_addr is None
    assert parse(["--health-addr", ""]).health_addr is None
    assert parse(["--health-addr="], {"NB_PROXY_HEALTH_ADDRESS": "127.0.0.1:1"}) \
        .health_addr is None


def test_debug_flag_forces_debug_level():
    assert parse(["--debug", "--log-level", "error"]).effective_log_level == "debug"
    assert parse(["--log-level", "error"]).effective_log_level == "error"


def test_domain_normalised_and_wg_endpoint_default():
    cfg = parse(["--mgmt", "http://127.0.0.1:33073", "--domain", "Proxy.Example.COM.",
                 "--wg-port", "4000"], {"NB_PROXY_TOKEN": "t"})
    assert cfg.domain == "proxy.example.com"
    assert cfg.advertised_wg_endpoint() == "proxy.example.com:4000"
    assert cfg.advertised_wg_endpoint(bound_port=4711) == "proxy.example.com:4711"
    # embedded: the default domain is not resolvable, peers dial loopback
    assert parse(["--wg-port", "4000"]).advertised_wg_endpoint() == "127.0.0.1:4000"
    cfg = parse(["--wg-endpoint", "vpn.example.net:443"])
    assert cfg.advertised_wg_endpoint(bound_port=1) == "vpn.example.net:443"


def test_endpoint_description():
    assert HostPort("", 443).endpoint() == "tcp:port=443"
    assert HostPort("127.0.0.1", 80).endpoint() == "tcp:port=80:interface=127.0.0.1"
    assert HostPort("::1", 80).endpoint() == r"tcp:port=80:interface=\:\:1"
    assert str(HostPort("::1", 80)) == "[::1]:80"


# -- private: shown by --help and honoured (issue 11.9 / 12.6) ------------------------------


def test_private_shown_in_help_and_honoured():
    opts = Options(environ={})
    text = str(opts)
    assert "--private" in text and "NB_PROXY_PRIVATE" in text
    flat = " ".join(text.split())
    assert "embedded: 127.0.0.1:<wg-port>" in flat  # --wg-endpoint default as it really is
    assert "--wg-port" in text and "NB_PROXY_WG_PORT" in text
    assert parse(["--private"]).private is True
    assert parse([], {"NB_PROXY_PRIVATE": "true"}).private is True


def test_every_visible_flag_documented_with_env_and_default():
    text = str(Options(environ={}))
    for s in SETTINGS:
        if s.flag and not s.hidden:
            assert f"--{s.flag}" in text
            assert s.env in " ".join(text.split())  # help text wraps


# -- token / management ----------------------------------------------------------------------


def test_token_required_with_mgmt():
    assert usage_error(["--mgmt", "https://mgmt.example.com", "--domain", "p.example.com"]) \
        == TOKEN_REQUIRED
    assert TOKEN_REQUIRED == "proxy token is required: set NB_PROXY_TOKEN environment variable"
    env = dict(MGMT_ENV, NB_PROXY_TOKEN="")
    assert usage_error(["--mgmt", "https://mgmt.example.com"], env) == TOKEN_REQUIRED


def test_token_not_required_when_embedded():
    assert parse([]).token == ""


def test_mgmt_from_env_with_token():
    env = dict(MGMT_ENV, NB_PROXY_MANAGEMENT_ADDRESS="https://mgmt.example.com:33073")
    cfg = parse([], env)
    assert cfg.mgmt == "https://mgmt.example.com:33073" and not cfg.embedded
    assert cfg.token == "secret-token" and cfg.domain == "proxy.example.com"


def test_mgmt_requires_domain():
    msg = usage_error(["--mgmt", "https://m.example.com"], {"NB_PROXY_TOKEN": "t"})
    assert msg.startswith("invalid --domain value")


def test_plaintext_mgmt_only_to_loopback_unless_allowed():
    assert parse(["--mgmt", "http://127.0.0.1:33073"], MGMT_ENV).mgmt == "http://127.0.0.1:33073"
    msg = usage_error(["--mgmt", "http://mgmt.example.com"], MGMT_ENV)
    assert msg.startswith("invalid --mgmt value") and "NB_PROXY_ALLOW_INSECURE" in msg
    env = dict(MGMT_ENV, NB_PROXY_ALLOW_INSECURE="true")
    assert parse(["--mgmt", "http://mgmt.example.com"], env).allow_insecure is True


def test_secrets_not_in_repr_or_log_view():
    psk = base64.b64encode(bytes(range(32))).decode()
    cfg = parse(["--mgmt", "https://m.example.com", "--preshared-key", psk], MGMT_ENV)
    assert "secret-token" not in repr(cfg) and psk not in repr(cfg)
    view = cfg.for_log()
    assert view["token_present"] is True and view["preshared_key_present"] is True
    assert "secret-token" not in str(view) and psk not in str(view)


# -- validation: one line, naming the flag ----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--wg-port", "70000"], {}, "invalid --wg-port value '70000': port must be in 0-65535"),
        (["--wg-port", "abc"], {}, "invalid --wg-port value 'abc'"),
        ([], {"NB_PROXY_WG_PORT": "-1"}, "invalid --wg-port value '-1' (from NB_PROXY_WG_PORT)"),
        (["--addr", "443"], {}, "invalid --addr value '443'"),
        (["--addr", "example.com:443"], {}, "invalid --addr value 'example.com:443'"),
        (["--addr", ":99999"], {}, "invalid --addr value ':99999'"),
        (["--health-addr", "nohost"], {}, "invalid --health-addr value 'nohost'"),
        (["--forwarded-proto", "ftp"], {},
         "invalid --forwarded-proto value 'ftp': must be auto, http, or https"),
        (["--log-level", "loud"], {}, "invalid --log-level value 'loud'"),
        (["--log-format", "xml"], {}, "invalid --log-format value 'xml': must be text, or json"),
        (["--max-dial-timeout", "10"], {}, "invalid --max-dial-timeout value '10'"),
        (["--max-dial-timeout", "-5s"], {}, "invalid --max-dial-timeout value '-5s'"),
        ([], {"NB_PROXY_MAX_SESSION_IDLE_TIMEOUT": "soon"},
         "invalid --max-session-idle-timeout value 'soon' (from NB_PROXY_MAX_SESSION"),
        (["--drain-timeout", "1 minute"], {}, "invalid --drain-timeout value '1 minute'"),
        (["--trusted-proxies", "10.0.0.0/8,not-an-ip"], {},
         "invalid --trusted-proxies value '10.0.0.0/8,not-an-ip': 'not-an-ip' is not"),
        (["--domain", "localhost"], {}, "invalid --domain value 'localhost'"),
        (["--domain", "bad_name.example.com"], {}, "invalid --domain value"),
        (["--wg-endpoint", "gw.example.com"], {}, "invalid --wg-endpoint value"),
        (["--wg-endpoint", "gw.example.com:0"], {}, "invalid --wg-endpoint value"),
        (["--mgmt", "ftp://m.example.com"], {}, "invalid --mgmt value 'ftp://m.example.com'"),
        (["--mgmt", "https://m.example.com:notaport"], {}, "invalid --mgmt value"),
        (["--preshared-key", "c2hvcnQ="], {}, "invalid --preshared-key value"),
        (["--supports-custom-ports", "maybe"], {}, "invalid --supports-custom-ports value"),
        ([], {"NB_PROXY_PRIVATE": "yes"}, "invalid --private value 'yes' (from NB_PROXY_PRIVATE)"),
        (["--tunnel-http-port", "0"], {}, "invalid --tunnel-http-port value '0'"),
        (["--tunnel-http-port", "8443", "--tunnel-https-port", "8443"], {},
         "invalid --tunnel-https-port value '8443': must differ from --tunnel-http-port"),
        (["--datadir", ""], {}, "invalid --datadir value ''"),
        (["--cert-dir", " "], {}, "invalid --cert-dir value ' '"),
        ([], {"NB_PROXY_ALLOW_INSECURE": "sure"}, "invalid NB_PROXY_ALLOW_INSECURE value"),
        ([], {"NB_PROXY_MAPPING_BATCH_WATCHDOG": "-1s"},
         "invalid NB_PROXY_MAPPING_BATCH_WATCHDOG value '-1s'"),
        (["--l4-public-ports", "1024-70000"], {},
         "invalid --l4-public-ports value '1024-70000': '1024-70000': port must be in 1-65535"),
        (["--l4-public-ports", "0-100"], {}, "invalid --l4-public-ports value '0-100'"),
        (["--l4-public-ports", "9000-8000"], {},
         "invalid --l4-public-ports value '9000-8000': '9000-8000': the range's first port "
         "is above its last"),
        (["--l4-public-ports", "1024-2000-3000"], {},
         "invalid --l4-public-ports value '1024-2000-3000'"),
        (["--l4-public-ports", "8000 - 9000, http"], {},
         "invalid --l4-public-ports value '8000 - 9000, http': 'http': must be a port number"),
        ([], {"NB_PROXY_L4_PUBLIC_PORTS": "1024-"},
         "invalid --l4-public-ports value '1024-' (from NB_PROXY_L4_PUBLIC_PORTS)"),
        ([], {"NB_PROXY_L4_PUBLIC_PORTS": "80;443"},
         "invalid --l4-public-ports value '80;443' (from NB_PROXY_L4_PUBLIC_PORTS)"),
        (["--max-tunnel-connections", "0"], {}, "invalid --max-tunnel-connections value '0'"),
        ([], {"NB_PROXY_MAX_TUNNEL_CONNECTIONS": "many"},
         "invalid --max-tunnel-connections value 'many' (from NB_PROXY_MAX_TUNNEL_CONNECTIONS)"),
    ],
)
def test_validation_errors(argv, env, expected):
    assert usage_error(argv, env).startswith(expected)


def test_unknown_flag_rejected():
    with pytest.raises(usage.UsageError):
        parse(["--no-such-flag"])


def test_env_only_settings():
    cfg = parse([], {"NB_PROXY_TUNNEL_CACHE_TTL": "90s", "NB_PROXY_MAPPING_BATCH_WATCHDOG": "30s",
                     "NB_PROXY_ALLOW_INSECURE": "1"})
    assert (cfg.tunnel_cache_ttl, cfg.mapping_batch_watchdog, cfg.allow_insecure) == \
        (90.0, 30.0, True)
    # environment-only settings have no flag
    with pytest.raises(usage.UsageError):
        parse(["--token", "x"])


def test_load_without_options():
    cfg = load({"wg-port": "1234", "private": True}, {"NB_PROXY_LOG_LEVEL": "debug"})
    assert cfg.wg_port == 1234 and cfg.private and cfg.log_level == "debug"
    cfg = load({"mgmt": "https://m.example.com", "domain": "p.example.com", "token": "t"})
    assert cfg.token == "t" and not cfg.embedded
    with pytest.raises(ConfigError, match="unknown setting"):
        load({"bogus": "1"})


def test_tunnel_cache_ttl_env_b37():
    """45s is 45 s; nonsense, 0s, -30s, '' -> 300 s."""
    assert parse([], {"NB_PROXY_TUNNEL_CACHE_TTL": "45s"}).tunnel_cache_ttl == 45
    assert parse([], {"NB_PROXY_TUNNEL_CACHE_TTL": " 1h30m "}).tunnel_cache_ttl == 5400
    for bad in ("nonsense", "0s", "-30s", ""):
        assert parse([], {"NB_PROXY_TUNNEL_CACHE_TTL": bad}).tunnel_cache_ttl == 300
    assert parse([]).tunnel_cache_ttl == 300


def test_l4_public_ports_default_normalised_and_empty():
    """Default 1024-65535 (ports below 1024 are the operator's); ranges are
    sorted and merged, single ports allowed, blanks skipped; an empty value is
    no host port at all; the log view shows the canonical text."""
    cfg = parse([])
    assert cfg.l4_public_ports == ((1024, 65535),) and str(cfg.l4_public_ports) == "1024-65535"
    assert not cfg.l4_public_ports.covers(1023) and cfg.l4_public_ports.covers(1024)
    assert cfg.l4_public_ports.covers(65535)
    assert cfg.for_log()["l4_public_ports"] == "1024-65535"
    ranges = parse(["--l4-public-ports", " 9000-9100, 53,8000-9050 ,54, 25,"]).l4_public_ports
    assert ranges == ((25, 25), (53, 54), (8000, 9100))
    assert str(ranges) == "25,53-54,8000-9100"
    assert [p for p in (24, 25, 26, 53, 54, 55, 7999, 8000, 9100, 9101)
            if ranges.covers(p)] == [25, 53, 54, 8000, 9100]
    none = parse([], {"NB_PROXY_L4_PUBLIC_PORTS": ""}).l4_public_ports
    assert none == () and not none.covers(1024) and str(none) == ""


def test_max_tunnel_connections_reaches_the_account_settings(tmp_path):
    """--max-tunnel-connections / NB_PROXY_MAX_TUNNEL_CONNECTIONS -> the
    runtimes' shared settings (tests/test_accounts.py: settings -> each
    account's netstack)."""
    from twisted.internet.task import Clock

    from nbgateway.service import GatewayService

    base = {"mgmt": "http://127.0.0.1:1", "domain": "gw.test", "datadir": str(tmp_path),
            "private": True, "health_addr": "", "wg_port": "0"}
    for flags, env, expected in ((base, {}, 16384),
                                 ({**base, "max_tunnel_connections": "12"}, {}, 12),
                                 (base, {"NB_PROXY_MAX_TUNNEL_CONNECTIONS": "34"}, 34)):
        svc = GatewayService(load(flags, {"NB_PROXY_TOKEN": "t", **env}), reactor=Clock())
        for account in ("acct-a", "acct-b"):
            assert svc._make_runtime(account).settings.max_tcp_connections == expected
