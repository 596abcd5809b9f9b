"""Registration of an account runtime with the management: CreateProxyPeer,
its retries and the peer-login probe after a lost answer.

Lifecycle of the registration (the rest of the runtime in
:mod:`nbgateway.accounts._runtime`)::

    new --add_service--> registering --CreateProxyPeer ok--> connecting
        --first network map--> ready --last service removed--> stopped
    registering --transient failure--> retrying --back-off--> registering
    registering --permanent failure--> failed (the next mapping retries)
    registering --token refused after a lost answer--> connecting (probe: peer
        login) --first network map--> ready / --login refused--> failed

``CreateProxyPeer`` failures that say nothing about the request (UNAVAILABLE,
DEADLINE_EXCEEDED, CANCELLED, RESOURCE_EXHAUSTED, ABORTED, a lost
connection) are retried by the runtime itself after a jittered exponential
back-off (``retry_initial`` doubling to ``retry_max``; one attempt in flight
at most, the timer cancelled by :meth:`AccountRuntime.stop`); meanwhile every
service of the account is reported ERROR "proxy peer registration failed,
retrying in N s: ...".  Each attempt uses the newest one-time token a mapping
brought, and one WireGuard key per runtime.  The token is consumed by the
management before it registers the key, so an attempt whose answer was lost
(a deadline, a dropped connection) may have spent it: when the retry with
that token is refused as an invalid token (the management cannot tell "spent
by us" from "never valid"), the runtime logs in with its key anyway
(``connecting``, services reported ERROR "checking with a peer login"): a
network map proves the lost attempt registered the key (-> ``ready``); a
login refused as unknown (PERMISSION_DENIED) tears the tunnel down and goes
``failed``, waiting for the next mapping's fresh token (tried at once if one
came meanwhile).  As the key is kept, a later registration finds the peer a
lost attempt created instead of adding a second one.  Other failures
(authentication failed, a refused token, ``success=false``) are permanent:
``failed`` until the next mapping, as before.

Key squatting: WireGuard keys are unique across a management, and a proxy
peer's public key is no secret, so another tenant may register this
account's key first as its own peer.  CreateProxyPeer then refuses the key
(ALREADY_EXISTS, or ``success=false`` saying the key is taken): retrying
with the same key would never succeed.  On that refusal the runtime rotates
the account's key (``key_factory(fresh=True)``: a new private key, persisted
where the old one was), counts it (``stats.key_rotations``), logs a warning
with the account id and registers again after the usual back-off, with the
same token (our management checks the key before it spends the token; one
that spent it answers "invalid token" and the next mapping's fresh token
is used).  At most :data:`MAX_KEY_ROTATIONS` rotations in a row (reset when
a registration succeeds); then ``failed`` until the next mapping.

:class:`Registration` is a slot-less base of
:class:`~nbgateway.accounts.AccountRuntime`: its methods read and write the
runtime's slots (``_token``, ``_registering``, ``_retry_call``, ...).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt.reconnect import Backoff
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import key_to_base64, public_key

log = Logger(namespace="nbgateway.accounts")

ERROR = pb.PROXY_STATUS_ERROR

#: CreateProxyPeer back-off: first delay, cap (seconds) and jitter (a delay is
#: the doubled delay, capped, times a factor drawn from [1 - JITTER, 1 + JITTER],
#: capped again: runtimes at the cap still retry spread over [0.8, 1] x cap)
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0
RETRY_JITTER = 0.2

#: key rotations in a row after "key already registered" refusals before the
#: runtime gives up until the next mapping (a squatter would have to learn
#: every new key: more in a row means something else is wrong)
MAX_KEY_ROTATIONS = 3

#: failures that say nothing about the request: retried after a back-off.  The
#: management client raises nbgateway.errors.ManagementError subclasses whose
#: ``code`` is the gRPC status name (read here by name: accounts does not
#: import the errors module, tests/test_layering.py)
_TRANSIENT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED",
                              "RESOURCE_EXHAUSTED", "ABORTED"})
_TRANSIENT_TYPES = (DeferredTimeoutError, neterror.ConnectionLost, neterror.ConnectionDone,
                    neterror.ConnectError)


def _code(failure: Any) -> str:
    code = getattr(failure.value, "code", "")
    return code if isinstance(code, str) else ""


def _transient(failure: Any) -> bool:
    return _code(failure) in _TRANSIENT_CODES or failure.check(*_TRANSIENT_TYPES) is not None


def _may_have_reached(failure: Any) -> bool:
    """Could the management have consumed the token of a transiently failed
    attempt? Everything but a rate-limit refusal (refused before the token
    is looked at) or a client that never sent the call."""
    if _code(failure) == "RESOURCE_EXHAUSTED":
        return False
    return "management client not running" not in failure.getErrorMessage()


def _token_refused(failure: Any) -> bool:
    return _code(failure) == "UNAUTHENTICATED" and "invalid token" in failure.getErrorMessage()


#: how a ``success=false`` answer says the key is another peer's (our
#: management answers ALREADY_EXISTS; others put it in the error message)
_KEY_TAKEN_TEXTS = ("already exists", "already registered", "belongs to another peer")


def _key_taken(failure: Any) -> bool:
    """Did the management refuse the WireGuard key as held by another peer?"""
    if _code(failure) == "ALREADY_EXISTS":
        return True
    if _code(failure) or "proxy peer authentication failed" not in failure.getErrorMessage():
        return False  # only a success=false answer (ManagementRejectedError) carries no code
    text = failure.getErrorMessage().lower()
    return "key" in text and any(t in text for t in _KEY_TAKEN_TEXTS)


class Registration:
    """CreateProxyPeer attempts, their back-off and the probe (see the module
    docstring); the runtime's slots hold the state."""

    __slots__ = ()

    def _register(self) -> Deferred:
        """One CreateProxyPeer attempt with the newest token (never two in flight)."""
        assert self._token is not None
        self.state = "registering"
        self._retry_call = None
        if self.private_key is None:  # one key per runtime, kept across attempts
            self.private_key = self.key_factory()
        pub = key_to_base64(public_key(self.private_key))
        service_id, token = self._token
        d = maybeDeferred(
            self.mgmt.create_proxy_peer, service_id, self.account_id, token, pub,
            self.settings.cluster, self.settings.wg_endpoint,
        )
        d.addCallbacks(self._registered, self._register_failed,
                       errbackArgs=(service_id, token))
        # only while in flight: a fired attempt is not kept (nor its result)
        self._registering = None if d.called else d
        return d

    def _registered(self, _result: Any) -> None:
        self._registering = None
        if self.state != "registering":
            return
        self.state = "connecting"
        self.retries = 0
        self.key_rotations = 0
        if not self._probing:
            self._maybe_spent = None
        assert self.private_key is not None
        self.device = WireGuardDevice(self.private_key, self.reactor,
                                      index_registry=self.mux.registry)
        self.mux.add(self.device)
        self.peer_channel = self.peer_channel_factory(
            self.account_id, self.private_key, self.apply_network)
        self.peer_channel.start()

    def _register_failed(self, failure: Any, service_id: str, token: str) -> Deferred | None:
        self._registering = None
        if self.state != "registering":
            return None  # stopped meanwhile: nothing to retry or report
        message = failure.getErrorMessage()
        if _transient(failure):
            if _may_have_reached(failure):
                self._maybe_spent = token
            delay = self._next_delay()
            self.state = "retrying"
            self._retry_error = (f"proxy peer registration failed, retrying in "
                                 f"{max(1, round(delay))} s: {message}")
            log.warn("account {account}: CreateProxyPeer failed ({err}); "
                     "retry {n} in {delay:.1f} s", account=self.account_id, err=message,
                     n=self.retries, delay=delay)
            self._retry_call = self.reactor.callLater(delay, self._retry)
            return self._report_all(ERROR, error=self._retry_error, listener=False)
        if self._token is not None and self._token[1] != token:
            # a mapping brought a fresh token while this attempt was in flight
            log.info("account {account}: CreateProxyPeer failed ({err}); trying the fresh token",
                     account=self.account_id, err=message)
            return self._register()
        if self._maybe_spent == token and _token_refused(failure):
            return self._probe(message)
        if _key_taken(failure) and self.key_rotations < MAX_KEY_ROTATIONS:
            rotated = self._rotate_key(message)
            if rotated is not None:
                return rotated
        self.state = "failed"
        self.retries = 0
        self.key_rotations = 0  # the next mapping may rotate again (each waits a back-off)
        log.warn("account {account}: CreateProxyPeer failed: {err}", account=self.account_id,
                 err=message)
        if "proxy peer authentication failed" not in message:
            message = f"proxy peer authentication failed: {message}"
        self._maybe_spent = None
        # every service: none has a tunnel (and none may keep a "retrying" text)
        return self._report_all(ERROR, error=message, listener=False,
                                sids=list(self.services) or [service_id])

    def _rotate_key(self, message: str) -> Deferred | None:
        """The key was refused as another peer's (squatted): a new key,
        persisted, and a new registration after the back-off (no tight loop).
        None when no new key could be made (e.g. not written): ``failed``."""
        try:
            key = self.key_factory(fresh=True)
        except Exception as exc:  # any failure (e.g. the key file): keep the key, fail
            log.failure("account {account}: could not rotate the tunnel key: {err}",
                        account=self.account_id, err=exc)
            return None
        self.key_rotations += 1
        self.private_key = key
        self._maybe_spent = None  # no attempt registered the refused key
        stats = self.settings.stats
        if stats is not None:
            stats.key_rotations += 1
        delay = self._next_delay()
        self.state = "retrying"
        self._retry_error = (f"proxy peer registration: the tunnel key is registered by another "
                             f"peer; rotated the key, retrying in {max(1, round(delay))} s: "
                             f"{message}")
        log.warn("account {account}: CreateProxyPeer refused the tunnel key as another peer's "
                 "({err}); rotated the key ({n} of {max}), retry in {delay:.1f} s",
                 account=self.account_id, err=message, n=self.key_rotations,
                 max=MAX_KEY_ROTATIONS, delay=delay)
        self._retry_call = self.reactor.callLater(delay, self._retry)
        return self._report_all(ERROR, error=self._retry_error, listener=False)

    def _probe(self, message: str) -> Deferred:
        """The token was refused after an attempt whose answer was lost: that
        attempt may have registered our key (the management consumes the
        token first).  Log in with the key: a first network map proves the
        registration (-> ready); a login refused as unknown
        (:meth:`_peer_channel_error`) means there was none (-> failed, waiting
        for the next mapping's fresh token)."""
        self._probing = True
        self._probe_error = message
        log.warn("account {account}: CreateProxyPeer token refused after a lost answer "
                 "({err}); checking with a peer login", account=self.account_id, err=message)
        self._registered(None)
        if self.peer_channel is not None:  # PeerChannelClient reads it per error
            self.peer_channel.on_error = self._peer_channel_error
        error = ("proxy peer registration: the one-time token was refused after an earlier "
                 "attempt with it got no answer; checking with a peer login whether that "
                 f"attempt registered the peer: {message}")
        return self._report_all(ERROR, error=error, listener=False)

    def _peer_channel_error(self, failure: Any) -> None:
        """While probing: a login refused as unknown (PERMISSION_DENIED, as
        upstream answers a key without a setup key, NOT_FOUND or
        UNAUTHENTICATED) ends the probe; other errors leave the channel to
        its own reconnect back-off."""
        if not self._probing or self.state != "connecting":
            return
        if _code(failure) not in ("PERMISSION_DENIED", "NOT_FOUND", "UNAUTHENTICATED"):
            return
        if self._retry_call is None:  # not from inside the channel's own errback
            self._retry_call = self.reactor.callLater(0, self._probe_failed,
                                                      failure.getErrorMessage())

    def _probe_failed(self, login_error: str) -> Deferred | None:
        self._retry_call = None
        if not self._probing or self.state != "connecting":
            return None
        self._probing = False
        channel, self.peer_channel = self.peer_channel, None
        if channel is not None:
            maybeDeferred(channel.stop).addErrback(
                lambda f: log.debug("peer channel stop failed: {err}", err=f.getErrorMessage()))
        if self.device is not None:
            self.mux.remove(self.device)
            self.device = None
        spent = self._maybe_spent
        self._maybe_spent = None
        if self._token is not None and self._token[1] != spent:
            return self._register()  # a mapping brought a fresh token meanwhile
        self.state = "failed"
        self.retries = 0
        log.warn("account {account}: the lost CreateProxyPeer did not register the peer "
                 "({err}); waiting for a fresh token", account=self.account_id, err=login_error)
        error = ("proxy peer registration: the one-time token was spent by an attempt whose "
                 "answer was lost, and the peer is not registered (login: "
                 f"{login_error}); waiting for a fresh token with the next mapping update: "
                 f"{self._probe_error}")
        return self._report_all(ERROR, error=error, listener=False)

    def _next_delay(self) -> float:
        backoff = self._backoff
        if backoff is None:
            initial, cap, rand = self._backoff_args
            backoff = self._backoff = Backoff(initial=initial, multiplier=2.0, max_interval=cap,
                                              randomization=RETRY_JITTER, random=rand,
                                              max_delay=cap)
        if not self.retries:  # the first failure of a series starts from retry_initial
            backoff.reset()
        self.retries += 1
        return backoff.next_delay()

    def _retry(self) -> None:
        self._retry_call = None
        if self.state == "retrying":
            self._register()
