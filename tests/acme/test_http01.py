"""http-01 answers on the --acme-addr listener: only pending tokens."""

from __future__ import annotations

from twisted.web.test.requesthelper import DummyRequest

from nbgateway.acme.challenges import ChallengeResponder, HTTP01Resource


def _get(resource: HTTP01Resource, path: bytes, method: bytes = b"GET"):
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.path = path
    request.method = method
    body = resource.render(request)
    return request.responseCode or 200, body


def test_pending_token_answered_with_key_authorization():
    responder = ChallengeResponder()
    responder.add_http01("tok", "tok.thumb")
    resource = HTTP01Resource(responder)
    assert _get(resource, b"/.well-known/acme-challenge/tok") == (200, b"tok.thumb")
    responder.remove_http01("tok")
    assert _get(resource, b"/.well-known/acme-challenge/tok")[0] == 404


def test_unknown_token_other_paths_and_methods_are_404():
    responder = ChallengeResponder()
    responder.add_http01("tok", "tok.thumb")
    resource = HTTP01Resource(responder)
    assert _get(resource, b"/.well-known/acme-challenge/other")[0] == 404
    assert _get(resource, b"/")[0] == 404
    assert _get(resource, b"/tok")[0] == 404
    assert _get(resource, b"/.well-known/acme-challenge/tok", b"POST")[0] == 404
    assert responder.refused["http-01"] == 1
