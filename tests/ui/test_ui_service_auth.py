"""The service form's authentication section: password, PIN, header and SSO set
and cleared through the REST API's own updateService handler (what
``nbgateway-admin services auth`` calls), with a real SQLite store, the real
route table and the real templates, in-process (a service needs a known
proxy cluster, which a standalone test management lacks)."""

from __future__ import annotations

import pytest

from nbgateway.management.api.framework import Identity
from nbgateway.management.api.routes import Handlers, build_routes
from nbgateway.management.api.schemas import COMPONENTS
from nbgateway.management.model import Account
from nbgateway.management.store import Store
from nbgateway.management.ui import pages
from nbgateway.management.ui.bridge import ApiBridge
from nbgateway.management.ui.resource import Ctx, UiResource
from nbgateway.management.ui.sessions import SessionStore

CLUSTER = "eu.proxy.netbird.io"


class _Reactor:
    @staticmethod
    def seconds() -> float:
        return 0.0


@pytest.fixture
def ui(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}", known_clusters=[CLUSTER])
    store.accounts.create(Account(id="acct", domain="netbird.test"))
    handlers = Handlers(store)
    bridge = ApiBridge(build_routes(handlers), COMPONENTS, handlers.authenticate)
    resource = UiResource(bridge, threadpool=None, reactor=_Reactor())
    session = SessionStore(lambda: 0.0).sign_in(None, "unused")
    ident = Identity(account_id="acct", user_id="u", role="admin")

    def submit(service_id: str = "", **form: str | list[str]):
        base = {"name": "app", "domain": f"app.{CLUSTER}", "enabled": "on",
                "target_type": "cluster", "target_id": CLUSTER, "protocol": "http",
                "host": "10.0.0.1", "port": "8080", "mode": "http", "direct_upstream": "on"}
        merged = {k: v if isinstance(v, list) else [v] for k, v in {**base, **form}.items()}
        ctx = Ctx(resource, ident, session, merged, {}, None)
        return pages.service_save(ctx, service_id) if service_id else pages.service_save(ctx)

    def edit_page(service_id: str) -> str:
        return pages.service_edit(Ctx(resource, ident, session, {}, {}, None), service_id).html

    yield store, submit, edit_page
    store.close()


def _auth(store):
    (svc,) = store.services.list("acct")
    return svc, svc.auth


def test_set_and_clear_every_method(ui):
    store, submit, edit_page = ui
    page = submit(auth_password="correct horse", auth_pin="1234", auth_header_name="X-Key",
                  auth_header_value="s3cret", auth_sso="on")
    assert page.redirect == "/ui/services", page.html[page.html.find("alert"):][:300]
    svc, auth = _auth(store)
    assert auth.password_auth.enabled and auth.password_auth.password != "correct horse"
    assert auth.pin_auth.enabled and auth.bearer_auth.enabled
    assert [h.header for h in auth.header_auths] == ["X-Key"]
    html = edit_page(svc.id)
    assert "Now: password, PIN, single sign-on, header X-Key." in html
    assert "correct horse" not in html and "s3cret" not in html and "1234" not in html
    # an edit that leaves the secret fields empty keeps every stored hash
    before = auth
    assert submit(svc.id, auth_sso="on").redirect == "/ui/services"
    _svc, auth = _auth(store)
    assert auth.password_auth == before.password_auth and auth.pin_auth == before.pin_auth
    assert auth.header_auths == before.header_auths
    # clear them one by one; SSO off by unticking
    assert submit(svc.id, auth_clear_password="on", auth_clear_header="X-Key",
                  auth_sso="on").redirect == "/ui/services"
    _svc, auth = _auth(store)
    assert auth.password_auth is None and not auth.header_auths and auth.pin_auth.enabled
    assert submit(svc.id, auth_clear_pin="on").redirect == "/ui/services"
    _svc, auth = _auth(store)
    assert auth.pin_auth is None and not (auth.bearer_auth and auth.bearer_auth.enabled)
    assert "Now: none." in edit_page(svc.id)


def test_api_messages_show_inline_and_secrets_are_not_echoed(ui):
    store, submit, _ = ui
    page = submit(auth_password="pw-typed-here", auth_header_name="Bad Header",
                  auth_header_value="s3cret-typed")
    assert page.status == 422, (page.status, page.html[:300])
    assert "is not a valid http header name" in page.html, page.html[page.html.find("alert"):][:300]
    assert "pw-typed-here" not in page.html and "s3cret-typed" not in page.html
    assert store.services.list("acct") == []


def test_l4_mode_and_listen_port_reach_the_api(ui):
    store, submit, edit_page = ui
    page = submit(mode="tcp", listen_port="5432", protocol="tcp", domain=f"db.{CLUSTER}",
                  port="5432")
    assert page.redirect == "/ui/services", page.html[:800]
    (svc,) = store.services.list("acct")
    assert (svc.mode, svc.listen_port) == ("tcp", 5432)
    html = edit_page(svc.id)
    assert 'value="5432"' in html and "<option selected>tcp</option>" in html
