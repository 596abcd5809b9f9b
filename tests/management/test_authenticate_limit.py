"""Authenticate's own bound on secret guesses over real gRPC: per (service,
end-user address named in x-nbgw-client-ip): after 10 failures that address
is refused without a verification, even with the right PIN, while another
address (and the same address on another service) still signs in."""

from __future__ import annotations

import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.authlimit import IN_FLIGHT, GuessLimiter
from nbgateway.management.model import AuthConfig, PinAuth
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import Fixture, Harness, make_service, md

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


@pytest.fixture
def pinned(fx: Fixture):
    return [fx.store.services.create(make_service(name, auth=AuthConfig(
        pin_auth=PinAuth(True, "123456")))) for name in ("pinned", "pinned2")]


def pin(h: Harness, fx: Fixture, svc, value: str, ip: str) -> bool:
    metadata = (*md(fx.token), ("x-nbgw-client-ip", ip))
    return h.stub.Authenticate(pb.AuthenticateRequest(
        id=svc.id, account_id=svc.account_id, pin=pb.PinRequest(pin=value)),
        metadata=metadata).success


def test_guessing_address_is_locked_out_others_are_not(harness, fx, pinned) -> None:
    svc, other = pinned
    for guess in range(11):
        assert not pin(harness, fx, svc, f"{guess:06d}", "203.0.113.9")
    # locked: the right PIN from that address is refused (no verification)
    assert not pin(harness, fx, svc, "123456", "203.0.113.9")
    # the legitimate user elsewhere, and the same address on another service
    assert pin(harness, fx, svc, "123456", "198.51.100.7")
    assert pin(harness, fx, other, "123456", "203.0.113.9")


def test_answered_attempts_release_their_reservation(harness, fx, pinned) -> None:
    """Each Authenticate's in-flight reservation is released with its answer:
    more sequential sign-ins from one address than the in-flight bound all
    succeed (a leaked reservation would refuse them from the 75th on)."""
    svc, _ = pinned
    n = 10 + IN_FLIGHT + 6
    assert all(pin(harness, fx, svc, "123456", "203.0.113.20") for _ in range(n))


def test_concurrent_guesses_are_bounded_before_their_answers() -> None:
    """Guesses arriving at once count as in flight against the key: at most
    ``max_failures + IN_FLIGHT`` pass before any answer, then the key is
    refused until answers come; answered failures then lock it."""
    limiter = GuessLimiter(clock=lambda: 1000.0)
    allowed = [limiter.reserve("svc", "203.0.113.9") for _ in range(10 + IN_FLIGHT + 20)]
    assert allowed.count(True) == 10 + IN_FLIGHT and not any(allowed[10 + IN_FLIGHT:])
    assert limiter.reserve("svc", "198.51.100.7")  # another address is not affected
    assert limiter.reserve("other-svc", "203.0.113.9")  # nor another service
    limiter.record("svc", "203.0.113.9", False, reserved=True)
    assert not limiter.reserve("svc", "203.0.113.9")  # 1 failure + 73 in flight: still full
    for _ in range(10 + IN_FLIGHT - 1):
        limiter.record("svc", "203.0.113.9", False, reserved=True)
    assert limiter.locked("svc", "203.0.113.9")  # the failures, answered, lock it
