"""The validity rule the stored tokens share (nbgateway.management.model:
ProxyAccessToken and PersonalAccessToken, one ``is_valid``): a token is
valid unless revoked or expired (``expires_at`` at or before now)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nbgateway.management.model import PersonalAccessToken, ProxyAccessToken

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("kind", [ProxyAccessToken, PersonalAccessToken])
@pytest.mark.parametrize(("expires_at", "revoked", "valid"), [
    (None, False, True),
    (NOW + timedelta(seconds=1), False, True),
    (NOW, False, False),
    (NOW - timedelta(days=1), False, False),
    (None, True, False),
    (NOW + timedelta(days=1), True, False),
])
def test_token_validity(kind: type, expires_at: datetime | None, revoked: bool,
                        valid: bool) -> None:
    assert kind(expires_at=expires_at, revoked=revoked).is_valid(NOW) is valid


def test_tokens_keep_their_own_field_order() -> None:
    # the shared rule is a method only: no field moved into a common base
    assert [f for f in ProxyAccessToken.__dataclass_fields__][:4] == [
        "id", "name", "hashed_token", "account_id"]
    assert [f for f in PersonalAccessToken.__dataclass_fields__][:4] == [
        "id", "account_id", "user_id", "name"]
