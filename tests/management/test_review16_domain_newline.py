"""Review 16: a domain with a trailing newline, over real HTTP against
``twistd nbmanagement`` (SQLite and PostgreSQL).

Management's domain syntax check matches each label with ``re.match`` and a
pattern ending in ``$``, which also matches before a final newline: the
last label ``"test\\n"`` passes.  Management then compares names as stored
("app.a.test\\n" is not "app.a.test", nor under it), while every gateway
table keys a domain by ``domain_key`` (surrounding whitespace stripped):
there it *is* "app.a.test".  So account B could create a service that its
gateways serve as a name under account A's custom domain, which
``_check_domain_free`` / ``foreign_domain_over`` exist to refuse ("whatever
cluster its own gateway announces", tests/management/test_tenant_isolation.py);
its own (BYOP) gateway announces the matching cluster address, which the
mapping stream's address check (same ``$``) accepts as well.
"""

from __future__ import annotations

import uuid

import pytest

from nbgateway.management.model import ProxyRecord
from nbgateway.management.proxyrpcs import valid_proxy_address
from nbgateway.routes.hosts import domain_key

from .apiserver import BACKENDS, account_id, new_account, running_server, uniq

CLUSTER = "cl.review16.test"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        yield srv


def _service(server, auth: str, name: str):
    return server.post("/api/reverse-proxies/services", {
        "name": "s", "domain": name, "enabled": True,
        "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
                     "host": "10.0.0.5", "port": 80, "enabled": True,
                     "options": {"direct_upstream": True}}]}, auth=auth)


def test_a_trailing_newline_is_not_a_way_under_another_accounts_domain(server):
    a, b = new_account(server), new_account(server)
    apex = f"{uniq('d')}.test"
    resp = server.post("/api/reverse-proxies/domains",
                       {"domain": f"apps.{apex}", "target_cluster": CLUSTER}, auth=a)
    assert resp.status == 200, resp
    # B's own gateway announces "<apex>\n" (the mapping stream's check lets it,
    # asserted below)
    store = server.open_store()
    try:
        store.proxies.register(ProxyRecord(
            id=uniq("px"), session_id=str(uuid.uuid4()), cluster_address=f"{apex}\n",
            ip_address="127.0.0.1", account_id=account_id(server, b)))
    finally:
        store.close()
    sneaky = f"portal.apps.{apex}\n"
    assert domain_key(sneaky) == f"portal.apps.{apex}"  # what B's gateways would serve
    resp = _service(server, b, sneaky)
    assert resp.status in (409, 422), resp
    assert not any(domain_key(s["domain"]).endswith(f".apps.{apex}")
                   for s in server.get("/api/reverse-proxies/services", auth=b).json)
    assert not valid_proxy_address(f"{apex}\n"), "a cluster address with a newline"


def test_a_service_domain_with_a_trailing_newline_is_invalid(server):
    a = new_account(server)
    store = server.open_store()
    try:
        store.proxies.register(ProxyRecord(
            id=uniq("px"), session_id=str(uuid.uuid4()), cluster_address=CLUSTER,
            ip_address="127.0.0.1"))
    finally:
        store.close()
    assert _service(server, a, f"{uniq('ok')}.{CLUSTER}").status == 200
    for name in (f"x.{CLUSTER}\n", f"{CLUSTER}\n"):
        assert _service(server, a, name).status == 422, repr(name)
