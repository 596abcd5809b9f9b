"""The plain ``list``/``show``/``delete`` commands built by ``cli._lookup``,
as the resource families use them (requests made, lines and JSON printed)."""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

import pytest

from nbgateway.management.cli import _gateways, _members
from nbgateway.management.cli._client import CliError

TOKENS = [{"id": "t1", "name": "eu", "created_at": "x", "expires_at": None,
           "last_used": None, "revoked": False},
          {"id": "t2", "name": "dup"}, {"id": "t3", "name": "dup"}]
USERS = [{"id": "u1", "email": "eve@example.com", "name": "Eve", "role": "user",
          "status": "active", "auto_groups": []}]


class FakeClient:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items, self.calls = items, []

    def get(self, path: str) -> Any:
        self.calls.append(("GET", path))
        return self.items

    def delete(self, path: str) -> Any:
        self.calls.append(("DELETE", path))
        return {}


def ns(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"json": False, **kw})


def test_delete_finds_by_name_and_reports_with_its_verb() -> None:
    client, out = FakeClient(TOKENS), io.StringIO()
    _gateways.tokens_delete(client, ns(ref="eu"), out)
    assert client.calls == [("GET", "/reverse-proxies/proxy-tokens"),
                            ("DELETE", "/reverse-proxies/proxy-tokens/t1")]
    assert out.getvalue() == "revoked token t1 (eu)\n"


def test_delete_by_email_reports_json() -> None:
    client, out = FakeClient(USERS), io.StringIO()
    _members.users_delete(client, ns(ref="eve@example.com", json=True), out)
    assert client.calls[-1] == ("DELETE", "/users/u1")
    assert json.loads(out.getvalue()) == {"deleted": "user", "id": "u1",
                                          "name": "eve@example.com"}


def test_show_and_list_print_the_family_columns() -> None:
    out = io.StringIO()
    _members.users_show(FakeClient(USERS), ns(ref="u1"), out)
    shown = out.getvalue()
    out = io.StringIO()
    _members.users_list(FakeClient(USERS), ns(), out)
    assert shown == out.getvalue()
    assert shown.splitlines()[0].split() == ["ID", "EMAIL", "NAME", "ROLE", "STATUS",
                                             "AUTO_GROUPS"]


def test_ambiguous_and_missing_names_are_errors_not_guesses() -> None:
    client = FakeClient(TOKENS)
    with pytest.raises(CliError, match="token name 'dup' is ambiguous; use the id"):
        _gateways.tokens_delete(client, ns(ref="dup"), io.StringIO())
    with pytest.raises(CliError, match="token 'nope' not found"):
        _gateways.tokens_delete(client, ns(ref="nope"), io.StringIO())
    assert all(method == "GET" for method, _ in client.calls)
