"""The service form's "HTTP/2 to the target" checkbox: sets the target's
``upstream_protocol`` to ``h2`` through the REST API, shows it checked on
the edit page, and an edit that keeps it checked keeps it (the form rebuilds
the target's options on save)."""

from __future__ import annotations

from tests.ui.test_ui_service_auth import CLUSTER, ui  # noqa: F401 - the fixture


def test_checkbox_sets_keeps_and_clears_h2(ui):  # noqa: F811
    store, submit, edit_page = ui
    page = submit(upstream_h2="on", port="50051")
    assert page.redirect == "/ui/services", page.html[:800]
    (svc,) = store.services.list("acct")
    assert svc.targets[0].options.upstream_protocol == "h2"
    html = edit_page(svc.id)
    assert 'id="upstream_h2" name="upstream_h2" checked' in html
    # saved again with the box still checked (as the edit page shows it)
    page = submit(svc.id, upstream_h2="on", port="50051", name="renamed")
    assert page.redirect == "/ui/services", page.html[:800]
    (svc,) = store.services.list("acct")
    assert (svc.name, svc.targets[0].options.upstream_protocol) == ("renamed", "h2")
    # unchecked: back to HTTP/1.1
    submit(svc.id, port="50051")
    (svc,) = store.services.list("acct")
    assert svc.targets[0].options.upstream_protocol == ""


def test_l4_service_without_the_box_is_unaffected(ui):  # noqa: F811
    store, submit, _edit_page = ui
    page = submit(mode="tcp", listen_port="5432", protocol="tcp", domain=f"db.{CLUSTER}",
                  port="5432")
    assert page.redirect == "/ui/services", page.html[:800]
    (svc,) = store.services.list("acct")
    assert svc.targets[0].options.upstream_protocol == ""
