"""``/api/users`` and ``/api/groups``: the people of an account and how they are grouped.

Owns the users (an admin manages them; a regular user sees itself only), their
personal access tokens (a user manages its own, an admin everyone's; the plain
token is in the creating answer only) and the peer groups (admins only; PUT
keeps the members when ``peers`` is omitted).  A user's e-mail is set when it
is created: PUT keeps it (a different one is refused), because the dashboard's
SSO maps a verified e-mail to the user created first, and an old user given
another account's address would take that account's sign-ins.

The instance admin is the one user whose powers reach every account: another
admin of its account may not mint or delete its tokens, update or delete it
(403), so account admin never becomes instance admin.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from nbgateway.management.errors import BadRequest, PermissionDenied, ValidationError
from nbgateway.management.model import Group, User

from . import mapping as m
from .calls import NOT_FOUND, acct, admin_acct, arr, is_admin, ref, require_admin
from .framework import Call, Result, Route


class UserHandlers:
    """Handlers of the user, token and group routes (a mixin of
    :class:`.routes.Handlers`)."""

    store: Any

    # -- users and their tokens ----------------------------------------------------

    def list_users(self, call: Call) -> Result:
        assert call.identity is not None
        found = self.store.users.list(acct(call))
        if not is_admin(call):  # a regular user sees itself only
            found = [u for u in found if u.id == call.identity.user_id]
        return Result(200, [m.user_to_api(u) for u in found])

    def create_user(self, call: Call) -> Result:
        account = admin_acct(call)
        b = call.body
        user = self.store.users.create(User(
            account_id=account, email=b.get("email", ""), name=b.get("name", ""),
            role=b.get("role", "user"), is_service_user=b.get("is_service_user", False),
            auto_groups=tuple(b.get("auto_groups") or ())))
        return Result(200, m.user_to_api(user))

    def get_user(self, call: Call) -> Result:
        self._own_or_admin(call)
        return Result(200, m.user_to_api(self.store.users.get(acct(call), call.params["userId"])))

    def update_user(self, call: Call) -> Result:
        account = admin_acct(call)
        b = call.body
        cur = self.store.users.get(account, call.params["userId"])
        _guard_instance_admin(call, cur)
        if (b.get("email", cur.email) or "").strip().lower() != (cur.email or "").strip().lower():
            raise BadRequest("a user's e-mail is set when it is created; add a user for "
                             "another address")
        user = self.store.users.update(User(
            id=cur.id, account_id=cur.account_id, email=cur.email,
            name=b.get("name", cur.name), role=b.get("role", cur.role),
            is_service_user=cur.is_service_user,
            auto_groups=tuple(b.get("auto_groups") or ()),
            blocked=b.get("is_blocked", False), pending_approval=b.get("pending_approval", False),
            created_at=cur.created_at))
        return Result(200, m.user_to_api(user))

    def delete_user(self, call: Call) -> Result:
        account = admin_acct(call)
        assert call.identity is not None
        if call.params["userId"] == call.identity.user_id:
            raise BadRequest("a user cannot delete itself")
        _guard_instance_admin(call, self.store.users.get(account, call.params["userId"]))
        self.store.users.delete(account, call.params["userId"])
        return Result(200, {})

    def _own_or_admin(self, call: Call, *, write: bool = False) -> tuple[str, str]:
        """``(account, user id)`` of a call on one user: the caller itself, or
        anyone for an admin (for a ``write``, not the instance admin); 404 for a
        user that does not exist."""
        assert call.identity is not None
        uid = call.params["userId"]
        if uid != call.identity.user_id:
            require_admin(call)
        target = self.store.users.get(acct(call), uid)
        if write:
            _guard_instance_admin(call, target)
        return acct(call), uid

    def list_user_tokens(self, call: Call) -> Result:
        account, uid = self._own_or_admin(call)
        return Result(200, [m.pat_to_api(t)
                            for t in self.store.users.list_tokens(account, uid)])

    def create_user_token(self, call: Call) -> Result:
        account, uid = self._own_or_admin(call, write=True)
        assert call.identity is not None
        name, days = call.body.get("name", ""), call.body.get("expires_in", 0)
        if not name or len(name) > 255:
            raise ValidationError("token name must be 1..255 characters")
        if not 1 <= days <= 365:
            raise ValidationError("expiration has to be between 1 and 365")
        row, plain = self.store.users.create_token(
            account, uid, name, expires_at=datetime.now(UTC) + timedelta(days=days),
            created_by=call.identity.user_id)
        return Result(200, {"plain_token": plain, "personal_access_token": m.pat_to_api(row)})

    def delete_user_token(self, call: Call) -> Result:
        account, uid = self._own_or_admin(call, write=True)
        self.store.users.delete_token(account, uid, call.params["tokenId"])
        return Result(200, {})

    # -- groups ------------------------------------------------------------------

    def _peer_names(self, account: str) -> dict[str, str]:
        return {p.id: p.name for p in self.store.peers.list(account)}

    def _group_result(self, account: str, group: Group) -> Result:
        return Result(200, m.group_to_api(group, self._peer_names(account)))

    def list_groups(self, call: Call) -> Result:
        account = admin_acct(call)
        names = self._peer_names(account)
        return Result(200, [m.group_to_api(g, names) for g in self.store.groups.list(account)])

    def create_group(self, call: Call) -> Result:
        account = admin_acct(call)
        g = self.store.groups.create(Group(account_id=account, name=call.body.get("name", ""),
                                          peers=tuple(call.body.get("peers") or ())))
        return self._group_result(account, g)

    def get_group(self, call: Call) -> Result:
        account = admin_acct(call)
        return self._group_result(account,
                                  self.store.groups.get(account, call.params["groupId"]))

    def update_group(self, call: Call) -> Result:
        account = admin_acct(call)
        cur = self.store.groups.get(account, call.params["groupId"])
        peers = tuple(call.body["peers"]) if "peers" in call.body else cur.peers
        g = self.store.groups.update(Group(id=cur.id, account_id=account, issued=cur.issued,
                                          name=call.body.get("name", ""), peers=peers))
        return self._group_result(account, g)

    def delete_group(self, call: Call) -> Result:
        self.store.groups.delete(admin_acct(call), call.params["groupId"])
        return Result(200, {})


def _guard_instance_admin(call: Call, target: User) -> None:
    """403 when ``target`` is the instance admin and the caller is someone else:
    its tokens and its role reach every account, so no account admin changes
    them (the instance admin itself may)."""
    assert call.identity is not None
    if target.instance_admin and target.id != call.identity.user_id \
            and not call.identity.instance_admin:
        raise PermissionDenied("only the instance admin may change the instance admin")


def user_routes(h: UserHandlers) -> list[Route]:
    """The user, token and group routes."""
    return [
        Route("GET", "/users", h.list_users, "listUsers", "List users", "Users",
              response_schema=arr("User")),
        Route("POST", "/users", h.create_user, "createUser", "Create a user", "Users",
              request_schema="UserCreateRequest", response_schema=ref("User"),
              errors=(400, 403, 409, 413, 422)),
        Route("GET", "/users/{userId}", h.get_user, "getUser", "Get a user", "Users",
              response_schema=ref("User"), errors=NOT_FOUND),
        Route("PUT", "/users/{userId}", h.update_user, "updateUser", "Update a user", "Users",
              request_schema="UserRequest", response_schema=ref("User"),
              errors=(400, 403, 404, 409, 413, 422)),
        Route("DELETE", "/users/{userId}", h.delete_user, "deleteUser", "Delete a user",
              "Users", response_schema=ref("Empty"), errors=(400, 403, 404)),
        Route("GET", "/users/{userId}/tokens", h.list_user_tokens, "listUserTokens",
              "List a user's personal access tokens", "Users",
              response_schema=arr("PersonalAccessToken"), errors=(403, 404)),
        Route("POST", "/users/{userId}/tokens", h.create_user_token, "createUserToken",
              "Create a personal access token (plain token shown once)", "Users",
              request_schema="PersonalAccessTokenRequest",
              response_schema=ref("PersonalAccessTokenGenerated"),
              errors=(400, 403, 404, 413, 422)),
        Route("DELETE", "/users/{userId}/tokens/{tokenId}", h.delete_user_token,
              "deleteUserToken", "Delete a personal access token", "Users",
              response_schema=ref("Empty"), errors=(403, 404)),
        Route("GET", "/groups", h.list_groups, "listGroups", "List groups", "Groups",
              response_schema=arr("Group")),
        Route("POST", "/groups", h.create_group, "createGroup", "Create a group", "Groups",
              request_schema="GroupRequest", response_schema=ref("Group"),
              errors=(400, 403, 409, 413, 422)),
        Route("GET", "/groups/{groupId}", h.get_group, "getGroup", "Get a group", "Groups",
              response_schema=ref("Group"), errors=NOT_FOUND),
        Route("PUT", "/groups/{groupId}", h.update_group, "updateGroup",
              "Update a group (peers kept when omitted)", "Groups", request_schema="GroupRequest",
              response_schema=ref("Group"), errors=(400, 403, 404, 409, 413, 422)),
        Route("DELETE", "/groups/{groupId}", h.delete_group, "deleteGroup", "Delete a group",
              "Groups", response_schema=ref("Empty"), errors=(400, 403, 404)),
    ]
