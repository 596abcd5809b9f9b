"""The generated wg-quick file is accepted as-is by wireguard-tools.

``wg-quick strip`` turns it into a ``wg`` config, which ``wg setconf`` loads onto a real
wireguard-go interface living in a network namespace this test creates (and removes).
``wg showconf`` must then show exactly the keys, endpoints and allowed IPs we wrote.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid

import pytest

from nbgateway.management.wgconfig import WgPeer, render_config

pytestmark = pytest.mark.interop


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    for tool in ("ip", "wg", "wg-quick", "wireguard-go"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _private_key() -> str:
    return subprocess.run(["wg", "genkey"], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def wg_iface():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    ns, ifname = f"nbgwcfg{tag}", f"wgc{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "wireguard-go", "-f", ifname],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sock = f"/var/run/wireguard/{ifname}.sock"
        for _ in range(200):
            if os.path.exists(sock):
                break
            if proc.poll() is not None:
                pytest.skip(f"wireguard-go did not start: {proc.stderr.read().decode()[:200]}")
            time.sleep(0.02)
        else:
            pytest.fail("wireguard-go control socket never appeared")
        yield ns, ifname
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _load(wg_iface, tmp_path, text: str) -> tuple[str, list[str]]:
    """``text`` as ``<ifname>.conf`` (mode 600) through ``wg-quick strip`` and ``wg
    setconf`` onto the interface: (the stripped config, ``wg show dump``'s lines)."""
    ns, ifname = wg_iface
    conf = tmp_path / f"{ifname}.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    stripped = subprocess.run(["wg-quick", "strip", str(conf)], check=True,
                              capture_output=True, text=True).stdout
    setconf = tmp_path / "stripped.conf"
    setconf.write_text(stripped)
    subprocess.run(["ip", "netns", "exec", ns, "wg", "setconf", ifname, str(setconf)],
                   check=True, capture_output=True, text=True)
    dump = subprocess.run(["ip", "netns", "exec", ns, "wg", "show", ifname, "dump"],
                          check=True, capture_output=True, text=True).stdout.splitlines()
    return stripped, dump


def test_wg_quick_strip_and_wg_setconf_accept_config(wg_iface, tmp_path):
    priv = _private_key()
    p1, p2 = _key(), _key()
    text = render_config(
        private_key=priv,
        addresses=["100.64.0.10", "fd00::a"],
        proxy_peers=[WgPeer(p1, "127.0.0.1:51820", ["100.64.0.99", "fd00::63"]),
                     WgPeer(p2, None, ["100.64.0.100"])],
    )
    stripped, dump = _load(wg_iface, tmp_path, text)
    assert "Address" not in stripped and "DNS" not in stripped
    assert dump[0].split("\t")[0] == priv
    peers = {line.split("\t")[0]: line.split("\t") for line in dump[1:]}
    assert set(peers) == {p1, p2}
    assert peers[p1][2] == "127.0.0.1:51820"
    assert peers[p1][3] == "100.64.0.99/32,fd00::63/128"
    assert peers[p1][7] == "25"
    assert peers[p2][2] == "(none)"
    assert peers[p2][3] == "100.64.0.100/32"


def test_config_without_private_key_is_accepted(wg_iface, tmp_path):
    p1 = _key()
    text = render_config(private_key=None, addresses=["100.64.0.10"],
                         proxy_peers=[WgPeer(p1, "127.0.0.1:51820", ["100.64.0.99"])])
    _, dump = _load(wg_iface, tmp_path, text)
    assert dump[1].split("\t")[0] == p1


def test_config_served_by_rest_api_is_accepted_as_is(wg_iface, tmp_path):
    """GET /api/peers/{id}/wireguard-config from a live server, straight into wg-quick/wg."""
    from tests.management.apiserver import ApiServer

    (tmp_path / "mgmt").mkdir()
    server = ApiServer(str(tmp_path / "mgmt")).start()
    try:
        gw = server.ok("POST", "/api/peers", {"name": "gw", "public_key": _key(),
                                              "endpoint": "127.0.0.1:51820",
                                              "proxy_cluster": "eu.proxy.test"})
        # the config lists the gateway only for a peer that may reach one of its services
        server.ok("POST", "/api/reverse-proxies/domains",
                  {"domain": "apps.test", "target_cluster": "eu.proxy.test"})
        grp = server.ok("POST", "/api/groups", {"name": "staff"})
        server.ok("POST", "/api/reverse-proxies/services", {
            "name": "app", "domain": "app.apps.test", "enabled": True, "private": True,
            "access_groups": [grp["id"]], "targets": [{
                "target_id": "eu.proxy.test", "target_type": "cluster", "protocol": "http",
                "host": "127.0.0.1", "port": 8080, "enabled": True,
                "options": {"direct_upstream": True}}]})
        laptop = server.ok("POST", "/api/peers", {"name": "laptop", "groups": [grp["id"]]})
        conf_text = server.ok("GET", f"/api/peers/{laptop['id']}/wireguard-config").decode()
    finally:
        server.stop()
    _, dump = _load(wg_iface, tmp_path, conf_text)
    assert dump[0].split("\t")[0] == laptop["private_key"]
    assert dump[0].split("\t")[1] == laptop["public_key"]
    fields = dump[1].split("\t")
    assert fields[0] == gw["public_key"]
    assert fields[2] == "127.0.0.1:51820"
    expected = [f"{gw['ip']}/32"] + ([f"{gw['ipv6']}/128"] if gw.get("ipv6") else [])
    assert fields[3].split(",") == expected
    assert fields[7] == "25"
