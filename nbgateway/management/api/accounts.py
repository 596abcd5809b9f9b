"""``/api/accounts`` (nbgateway extension): the tenants of one management service.

An instance admin lists, creates and deletes accounts (creating one also makes
its first admin and hands out that admin's token once); everyone else sees
only its own account, and other accounts do not exist for it (404).
"""

from __future__ import annotations

from typing import Any

from nbgateway.management.errors import BadRequest, NotFound, ValidationError

from . import mapping as m
from .calls import NOT_FOUND, acct, arr, ref, require_instance_admin
from .framework import Call, Result, Route


class AccountHandlers:
    """Handlers of the account routes (a mixin of :class:`.routes.Handlers`)."""

    store: Any

    def list_accounts(self, call: Call) -> Result:
        assert call.identity is not None
        if call.identity.instance_admin:
            found = self.store.accounts.list()
        else:
            found = [self.store.accounts.get(acct(call))]
        return Result(200, [m.account_to_api(a) for a in found])

    def create_account(self, call: Call) -> Result:
        require_instance_admin(call)
        name = call.body.get("name", "").strip()
        if not name:
            raise ValidationError("account name is required")
        email = call.body.get("admin_email", "").strip()
        boot = self.store.accounts.create_with_admin(name, admin_email=email)
        assert boot.admin_token is not None
        return Result(201, {**m.account_to_api(boot.account),
                            "admin_user_id": boot.admin_user.id, "token": boot.admin_token})

    def get_account(self, call: Call) -> Result:
        assert call.identity is not None
        aid = call.params["accountId"]
        if aid != call.identity.account_id and not call.identity.instance_admin:
            raise NotFound("account not found")  # other accounts do not exist for you
        return Result(200, m.account_to_api(self.store.accounts.get(aid)))

    def delete_account(self, call: Call) -> Result:
        require_instance_admin(call)
        if call.params["accountId"] == acct(call):
            raise BadRequest("an instance admin cannot delete its own account")
        self.store.accounts.delete(call.params["accountId"])
        return Result(200, {})


def account_routes(h: AccountHandlers) -> list[Route]:
    return [
        Route("GET", "/accounts", h.list_accounts, "listAccounts",
              "List accounts (every account for an instance admin, else the caller's own)",
              "Accounts", response_schema=arr("Account")),
        Route("POST", "/accounts", h.create_account, "createAccount",
              "Create an account and its first admin (instance admins only; the admin's "
              "personal access token is shown once)", "Accounts",
              request_schema="AccountRequest", response_schema=ref("AccountCreated"),
              response_status=201, errors=(400, 403, 413, 422)),
        Route("GET", "/accounts/{accountId}", h.get_account, "getAccount", "Get an account",
              "Accounts", response_schema=ref("Account"), errors=NOT_FOUND),
        Route("DELETE", "/accounts/{accountId}", h.delete_account, "deleteAccount",
              "Delete an account and everything in it (instance admins only)", "Accounts",
              response_schema=ref("Empty"), errors=(400, 403, 404)),
    ]
