"""The --acme-* settings: upstream's flag and environment names, defaults,
and the start-up checks."""

from __future__ import annotations

import pytest

from nbgateway.config import ConfigError, load


def test_defaults_and_environment_names():
    cfg = load({}, {})
    assert (cfg.acme_certs, cfg.acme_challenge_type, cfg.acme_addr.port) == \
        (False, "tls-alpn-01", 80)
    assert cfg.acme_dir.startswith("https://acme-v02.api.letsencrypt.org/")
    cfg = load({}, {"NB_PROXY_ACME_CERTIFICATES": "true",
                    "NB_PROXY_ACME_DIRECTORY": "https://ca.example/dir",
                    "NB_PROXY_ACME_CHALLENGE_TYPE": "http-01",
                    "NB_PROXY_ACME_ADDRESS": "127.0.0.1:5002",
                    "NB_PROXY_ACME_EAB_KID": "kid", "NB_PROXY_ACME_EAB_HMAC_KEY": "secret",
                    "NB_PROXY_ACME_RETRY_BASE": "5s"})
    assert cfg.acme_certs and cfg.acme_dir == "https://ca.example/dir"
    assert cfg.acme_challenge_type == "http-01" and cfg.acme_addr.port == 5002
    assert cfg.acme_retry_base == 5.0
    assert "secret" not in repr(cfg)


def test_flags_win_over_environment():
    cfg = load({"acme-challenge-type": "tls-alpn-01"},
               {"NB_PROXY_ACME_CHALLENGE_TYPE": "http-01"})
    assert cfg.acme_challenge_type == "tls-alpn-01"


@pytest.mark.parametrize("environ", [
    {"NB_PROXY_ACME_CHALLENGE_TYPE": "dns-01"},
    {"NB_PROXY_ACME_EAB_KID": "kid"},
    {"NB_PROXY_ACME_CERTIFICATES": "true", "NB_PROXY_ACME_CA_BUNDLE": "/nonexistent.pem"},
])
def test_bad_values_refused(environ):
    with pytest.raises(ConfigError):
        load({}, environ)
