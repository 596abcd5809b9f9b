"""A service's operator auth changed (a secret rotated, a way in added or
removed, SSO groups changed) sets its ``sessions_not_before``: its
``nb_session`` cookies were minted under the old rules, and the gateway
refuses cookies issued before the cut-off from the next mapping update.  An
update that keeps the auth (empty secrets keep the stored hashes) revokes
nothing, and another service of the account keeps its sessions."""

from __future__ import annotations

import dataclasses
import time

from nbgateway.management.model import (
    Account,
    AuthConfig,
    BearerAuth,
    Group,
    PasswordAuth,
    PinAuth,
)
from tests.management.test_grpc_support import ACCOUNT, make_service


def _not_before(store, sid: str) -> int:
    return store.services.get(ACCOUNT, sid).sessions_not_before


def test_auth_change_revokes_that_service_s_sessions(store) -> None:
    store.accounts.create(Account(id=ACCOUNT, domain="netbird.test"))
    store.groups.create(Group(id="grp-a", account_id=ACCOUNT, name="a"))
    pin = store.services.create(make_service(
        "pinned", auth=AuthConfig(pin_auth=PinAuth(True, "123456"))))
    other = store.services.create(make_service(
        "other", auth=AuthConfig(password_auth=PasswordAuth(True, "s3cret"))))
    assert _not_before(store, pin.id) == 0

    # the same auth resubmitted without its secret (the stored hash is kept)
    store.services.update(dataclasses.replace(
        pin, auth=AuthConfig(pin_auth=PinAuth(True, ""))))
    assert _not_before(store, pin.id) == 0
    # an unrelated change
    store.services.update(dataclasses.replace(
        pin, name="renamed", auth=AuthConfig(pin_auth=PinAuth(True, ""))))
    assert _not_before(store, pin.id) == 0

    t0 = int(time.time())
    store.services.update(dataclasses.replace(
        pin, auth=AuthConfig(pin_auth=PinAuth(True, "654321"))))
    first = _not_before(store, pin.id)
    assert t0 < first <= int(time.time()) + 1
    assert _not_before(store, other.id) == 0  # another service keeps its sessions

    # the PIN replaced by SSO with groups
    time.sleep(1.1)
    store.services.update(dataclasses.replace(
        pin, auth=AuthConfig(bearer_auth=BearerAuth(True, distribution_groups=("grp-a",)))))
    second = _not_before(store, pin.id)
    assert second > first
    assert _not_before(store, other.id) == 0
