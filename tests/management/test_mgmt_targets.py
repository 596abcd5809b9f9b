"""The gateway's ``--mgmt`` naming several management replicas (failover targets)."""

from __future__ import annotations

import pytest

from nbgateway import config
from nbgateway.mgmt.session import ManagementTarget, make_channel, split_management_url


def test_one_address_unchanged():
    t = ManagementTarget("http://127.0.0.1:33073")
    assert (t.address, t.tls, t.endpoints) == ("127.0.0.1:33073", False, [("127.0.0.1", 33073)])
    assert ManagementTarget("https://mgmt.example").address == "mgmt.example:443"


def test_several_replicas_become_one_pick_first_target():
    t = ManagementTarget("http://127.0.0.1:33073,127.0.0.1:33083")
    assert t.address == "ipv4:127.0.0.1:33073,127.0.0.1:33083"
    assert (t.host, t.port) == ("127.0.0.1", 33073)
    t6 = ManagementTarget("https://[fd00::1]:443,https://[fd00::2]:8443")
    assert t6.address == "ipv6:[fd00::1]:443,[fd00::2]:8443" and t6.tls
    make_channel(t).close()  # gRPC accepts the target


def test_split_takes_the_first_scheme():
    assert split_management_url("https://10.0.0.1:1, 10.0.0.2:2") == [
        "https://10.0.0.1:1", "https://10.0.0.2:2"]
    assert split_management_url("") == []


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1,https://127.0.0.1:2",   # mixed schemes
    "http://127.0.0.1:1,[::1]:2",               # mixed families
    "https://a.example:1,b.example:2",          # several names: one DNS name instead
    "http://127.0.0.1:1,10.0.0.2:2",            # plaintext to a non-loopback replica
])
def test_refused(url):
    with pytest.raises(ValueError):
        ManagementTarget(url)


def test_config_accepts_a_list_and_checks_every_element():
    assert config.parse_management_url("http://127.0.0.1:1,127.0.0.1:2") == \
        "http://127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValueError):
        config.parse_management_url("http://127.0.0.1:1,ftp://127.0.0.1:2")
    with pytest.raises(ValueError):
        config.parse_management_url("http://127.0.0.1:1,127.0.0.1:0")
