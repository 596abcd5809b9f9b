"""Session revocation in management against a live ``twistd nbmanagement``:
blocking a user (REST), deleting a user and deleting a group set
``sessions_not_before`` on the account's services, which the mapping carries
(``nbgw_sessions_not_before``) and the gateway's policy enforces; an
unrelated user update changes nothing."""

from __future__ import annotations

import time

import pytest

from nbgateway.management.proxymapping import to_proto_mapping
from nbgateway.routes.service import entry_from_mapping

from .apiserver import running_server
from .test_cli import cli_service


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory) as srv:
        yield srv


def _not_before(server, domain) -> int:
    store = server.open_store()
    try:
        mapping = to_proto_mapping(store.services.get_by_domain(domain), 1)
    finally:
        store.close()
    assert entry_from_mapping(mapping).sessions_not_before == mapping.nbgw_sessions_not_before
    return mapping.nbgw_sessions_not_before


def test_block_delete_and_group_delete_revoke_sessions(server):
    domain = cli_service(server, "rv")["domain"]
    zone = domain.removeprefix("app.")
    assert _not_before(server, domain) == 0
    user = server.ok("POST", "/api/users", {"email": f"u@{zone}", "name": "u",
                                            "role": "user", "auto_groups": []})
    server.ok("PUT", f"/api/users/{user['id']}", {"name": "renamed", "role": "user",
                                                  "auto_groups": []})
    assert _not_before(server, domain) == 0  # an unrelated change revokes nothing

    t0 = time.time()
    server.ok("PUT", f"/api/users/{user['id']}", {"role": "user", "auto_groups": [],
                                                  "is_blocked": True})
    first = _not_before(server, domain)
    assert int(t0) < first <= int(time.time()) + 1

    time.sleep(1.1)
    server.ok("DELETE", f"/api/users/{user['id']}")
    second = _not_before(server, domain)
    assert second > first

    group = server.ok("POST", "/api/groups", {"name": f"g-{zone}", "peers": []})
    time.sleep(1.1)
    server.ok("DELETE", f"/api/groups/{group['id']}")
    assert _not_before(server, domain) > second
