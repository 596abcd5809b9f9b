"""The dashboard with a real gateway and a real WireGuard peer, in a browser.

Management, gateway and upstream run in namespace G (see
:mod:`tests.interop.test_private_e2e`); headless Chromium and its driver are
started with the test thread inside G, so the browser reaches the management's
``/ui/`` on G's loopback.  Through the UI only: create the gateway's proxy
token, see the gateway's inbound listener on the overview, create a group and
a peer, a private service with that group (after the API's 422 for an empty
group list), then a wireguard-go peer configured from the UI's download makes a
request that appears in the access log with the user's groups, and revoking
the token shows the gateway as disconnected.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.interop.conftest import require_testbed
from tests.interop.test_private_e2e import APP, DOMAIN, World, wait_for
from tests.interop.testbed import Testbed, inside_netns
from tests.ui.browser import Browser, require_browser

pytestmark = pytest.mark.interop
UI = "http://127.0.0.1:33071/ui"


def _by(kind: str):
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def page_until(b: Browser, url: str, predicate, timeout: float, what: str) -> None:
    from selenium.common.exceptions import WebDriverException

    def check():
        b.driver.get(url)
        try:
            return predicate(b.driver)
        except WebDriverException:  # the live view replaced the element meanwhile
            return None
    wait_for(check, timeout, what, interval=0.5)


@pytest.fixture
def world_and_browser():
    require_testbed("curl", "wg-quick")
    require_browser()
    tb = Testbed()
    b = None
    try:
        w = World(tb)
        w.start_upstream()
        w.start_management()
        with inside_netns(w.g.name):
            b = Browser()
        yield w, b
    finally:
        if b is not None:
            with inside_netns(w.g.name):
                b.close()
        left = tb.close()
    assert not left, left


def test_dashboard_with_gateway_and_tunnel_peer(world_and_browser):
    from selenium.webdriver.support.ui import Select

    w, b = world_and_browser
    d = b.driver
    with inside_netns(w.g.name):
        d.get(UI + "/login")
        d.find_element(_by("ID"), "token").send_keys(w.admin)
        b.click_and_wait("form.card button")
        d.get(UI + "/tokens")
        d.find_element(_by("ID"), "token-name").send_keys("gw")
        b.click_and_wait("main form.card button[type=submit]")
        token = d.find_element(_by("ID"), "plain-token").text
    w.start_gateway(token)
    with inside_netns(w.g.name):
        # the overview lists the gateway as connected
        page_until(b, UI + "/", lambda dr: [r.get_attribute("data-status") for r in
                                            dr.find_elements(_by("CSS_SELECTOR"),
                                                             "#gateways tr.gateway")]
                   == ["connected"], 45, "the gateway on the overview")
        assert DOMAIN in d.find_element(_by("ID"), "clusters").text
        # group and peer
        d.get(UI + "/groups")
        d.find_element(_by("ID"), "group-name").send_keys("devs")
        b.click_and_wait("main form.card button[type=submit]")
        d.get(UI + "/peers")
        d.find_element(_by("ID"), "peer-name").send_keys("alice")
        Select(d.find_element(_by("ID"), "peer-groups")).select_by_visible_text("devs")
        b.click_and_wait("main form.card button[type=submit]")
        peer_url = d.current_url
        # a private service: first without a group (the API's 422), then with it
        d.get(UI + "/services/new")
        for field, value in (("name", "app"), ("domain", APP), ("target_id", DOMAIN),
                             ("host", "127.0.0.1"), ("port", "8081")):
            d.find_element(_by("ID"), field).send_keys(value)
        Select(d.find_element(_by("ID"), "target_type")).select_by_visible_text("cluster")
        d.find_element(_by("ID"), "private").click()
        d.find_element(_by("ID"), "direct_upstream").click()
        b.click_and_wait("#service-form button[type=submit]")
        assert d.find_element(_by("ID"), "form-error").text == \
            "private services require at least one access group"
        Select(d.find_element(_by("ID"), "access_groups")).select_by_visible_text("devs")
        b.click_and_wait("#service-form button[type=submit]")
        assert d.current_url == UI + "/services", d.find_element(_by("TAG_NAME"), "main").text
        assert APP in d.find_element(_by("ID"), "services").text
        b.shoot("gw-services")
        # the edit form reads the service back and saves it unchanged
        b.click_and_wait("#services a[href^='/ui/services/']")
        assert d.find_element(_by("ID"), "private").is_selected()
        assert [o.text for o in Select(d.find_element(_by("ID"), "access_groups"))
                .all_selected_options] == ["devs"]
        assert d.find_element(_by("ID"), "domain").get_attribute("value") == APP
        b.shoot("gw-service-edit")
        b.click_and_wait("#service-form button[type=submit]")
        assert d.current_url == UI + "/services", d.find_element(_by("TAG_NAME"), "main").text
        # with a private service the gateway reports its inbound listener
        page_until(b, UI + "/", lambda dr: re.search(
            r"\d+\.\d+\.\d+\.\d+ \(https 443, http 80\)",
            dr.find_element(_by("CSS_SELECTOR"), "#gateways td.listeners").text),
            45, "the gateway's inbound listener on the overview")
        assert b.axe() == []
        b.shoot("gw-overview")
        # the peer's config once it lists the gateway (the UI's download)
        page_until(b, peer_url, lambda dr: "[Peer]" in dr.find_element(
            _by("ID"), "config").text, 45, "a [Peer] section in alice's config")
        conf = d.find_element(_by("ID"), "config").text + "\n"
        b.shoot("gw-peer")
    peer = next(p for p in w.rest("GET", "/peers") if p["name"] == "alice")
    private = re.search(r"^PrivateKey\s*=\s*(\S+)", conf, re.M).group(1)
    w.peers["alice"] = {**peer, "private_key": private}
    ns, gw_ip, _ = w.connect_peer("alice", conf)
    wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(
            w.curl(ns, f"https://{APP}/through-the-ui", gw_ip=gw_ip)),
        30, "a 200 through the tunnel")
    devs = next(g["id"] for g in w.rest("GET", "/groups") if g["name"] == "devs")
    with inside_netns(w.g.name):
        # the request, with alice's groups, in the access log (filtered by the API)
        def logged(dr):
            rows = dr.find_elements(_by("CSS_SELECTOR"), "#access-log tr.entry")
            return any("/through-the-ui" in r.text and "devs" in r.find_element(
                _by("CSS_SELECTOR"), "td.groups").text for r in rows)
        page_until(b, UI + f"/access-log?group_id={devs}", logged, 45,
                   "the request in the log")
        assert b.axe() == []
        b.shoot("gw-access-log")
    for i in range(30):  # more than a page (25) of entries
        assert w.curl(ns, f"https://{APP}/page-{i}", gw_ip=gw_ip)[0] == 200
    with inside_netns(w.g.name):
        # every one of the group's entries: the 30 and the first request's (they
        # arrive in batches, so "page 1 of 2" alone can show while the last
        # batch is still on its way)
        def all_logged(dr) -> bool:
            m = re.search(r"(\d+) entries; page 1 of 2", dr.find_element(
                _by("TAG_NAME"), "main").text)
            return m is not None and int(m.group(1)) >= 31
        page_until(b, UI + f"/access-log?group_id={devs}", all_logged, 45,
                   "two full pages of the group's entries in the access log")
        total = int(re.search(r"(\d+) entries", d.find_element(_by("TAG_NAME"), "main").text)
                    .group(1))
        assert len(d.find_elements(_by("CSS_SELECTOR"), "#access-log tr.entry")) == 25
        b.click_and_wait("a[rel=next]")
        assert "page 2 of 2" in d.find_element(_by("TAG_NAME"), "main").text
        assert len(d.find_elements(_by("CSS_SELECTOR"), "#access-log tr.entry")) == total - 25
        d.get(UI + "/access-log?start_date=2099-01-01T00:00:00Z")
        assert "0 entries" in d.find_element(_by("TAG_NAME"), "main").text
        d.get(UI + "/access-log?status=failed")
        assert not d.find_elements(_by("CSS_SELECTOR"), "#access-log tr.entry")
        # the instance admin's accounts page counts the active service
        d.get(UI + "/accounts")
        row = d.find_element(_by("CSS_SELECTOR"), "#accounts tr.account")
        assert row.find_element(_by("CSS_SELECTOR"), "td.services").text == "1", row.text
        assert b.axe() == []
        b.shoot("gw-accounts")
        # revoke the gateway's token: the live view (server-sent events) shows
        # it disconnected
        d.get(UI + "/tokens")
        d.execute_script("window.confirm = function () { return true; };")
        b.click_and_wait("#tokens button.danger")
        d.get(UI + "/live")
        wait_for(lambda: d.find_element(_by("ID"), "live").get_attribute(
            "data-mode") == "events", 10, "the live view's event stream")
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:  # the page's own script refreshes the table
            state = d.execute_script(
                "var r = document.querySelector('#gateways tr.gateway');"
                "return r && r.getAttribute('data-status');")
            if state == "disconnected":
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the gateway never showed as disconnected")
        b.shoot("gw-live-disconnected")
