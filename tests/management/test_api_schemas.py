"""Decode-level type checking of request bodies (what Go's json.Decode refuses)."""

from __future__ import annotations

import pytest

from nbgateway.management.api.schemas import COMPONENTS, TypeMismatchError, check_types


def svc(**over):
    body = {"name": "a", "domain": "a.example", "enabled": True,
            "targets": [{"target_id": "p", "target_type": "peer", "protocol": "http",
                         "port": 80, "enabled": True, "options": {"direct_upstream": True}}]}
    body.update(over)
    return body


def check(body, name="ServiceRequest"):
    return check_types(body, COMPONENTS[name])


def test_valid_body_passes_unchanged():
    assert check(svc()) == svc()


def test_null_properties_are_dropped_like_go_absent():
    assert "private" not in check(svc(private=None))


@pytest.mark.parametrize("body,where", [
    (svc(name=5), "name: expected string"),
    (svc(enabled="yes"), "enabled: expected boolean"),
    (svc(private=1), "private: expected boolean"),
    (svc(targets={}), "targets: expected array"),
    (svc(targets=[None]), "targets[0]: must not be null"),
    (svc(listen_port=1.5), "listen_port: expected integer"),
    (svc(listen_port=True), "listen_port: expected integer"),
    (svc(listen_port=70000), "listen_port: 70000 is out of range 0..65535"),
    (svc(access_groups=["a", 3]), "access_groups[1]: expected string"),
    (svc(name="a\x00b"), "name: string contains a NUL character"),
    (svc(name="\ud800"), "name: string is not valid UTF-8"),
    (svc(auth={"bearer_auth": {"enabled": "true"}}), "auth.bearer_auth.enabled"),
    ([], "body: expected object"),
])
def test_wrong_types_rejected_with_path(body, where):
    with pytest.raises(TypeMismatchError) as exc:
        check(body)
    assert where in str(exc.value)


def test_target_port_and_options_checked():
    body = svc()
    body["targets"][0]["port"] = -1
    with pytest.raises(TypeMismatchError, match=r"targets\[0\].port"):
        check(body)
    body = svc()
    body["targets"][0]["options"] = {"custom_headers": {"X-A": 1}}
    with pytest.raises(TypeMismatchError, match=r"custom_headers\.X-A"):
        check(body)


def test_huge_integers_rejected():
    with pytest.raises(TypeMismatchError, match="out of range"):
        check({"name": "t", "expires_in": 10**30}, "ProxyTokenRequest")


def test_unknown_fields_ignored():
    assert check(svc(extra={"x": [1, None]}))["extra"] == {"x": [1, None]}
