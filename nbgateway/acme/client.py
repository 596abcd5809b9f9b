"""The blocking ACME conversation (``acme`` + ``josepy``), meant to run on a
worker thread, never on the reactor thread.

:class:`AcmeAccount` owns the account: an EC P-256 key created once as
``<data dir>/acme/account.key`` (mode 0600) and the account URL in
``account.json`` next to it, so a restart signs in with the stored account
instead of registering a new one.  :meth:`AcmeAccount.issue` orders one
certificate for one domain: it publishes each challenge answer through the
given callbacks (which hop to the reactor thread), tells the server to
validate, waits for the order, and returns the PEM chain and a fresh key.

Errors are :class:`AcmeError` with ``retry_after`` (epoch seconds) when the
server sent a Retry-After with its error (``rateLimited`` without one: an
hour).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nbgateway.atomicfile import write_atomic

TLS_ALPN_01 = "tls-alpn-01"
HTTP_01 = "http-01"
CHALLENGE_TYPES = (TLS_ALPN_01, HTTP_01)
USER_AGENT = "nbgateway-acme"
ORDER_TIMEOUT = 90.0
#: orders tried again at once when the server rejects a nonce (RFC 8555 6.5)
BAD_NONCE_RETRIES = 3


class AcmeError(Exception):
    """An order failed; ``retry_after`` is when the server allows the next."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Issued:
    fullchain_pem: bytes
    key_pem: bytes
    #: when the server's renewal information (ARI) suggests renewing (epoch s)
    renew_at: float | None = None


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The (empty) response posted to a tls-alpn-01 challenge URL (RFC 8737);
    ``acme`` no longer ships the tls-alpn-01 classes, and their wire form is
    that of http-01."""

    typ = TLS_ALPN_01


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """The tls-alpn-01 challenge (answered with a certificate, see
    :func:`nbgateway.acme.challenges.tls_alpn_certificate`)."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **unused: Any) -> None:
        return None


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably, mode 0600 (less the
    umask; :func:`nbgateway.atomicfile.write_atomic`)."""
    write_atomic(path, data, 0o600)


#: how long to wait after ``rateLimited`` when the server gives no Retry-After
RATE_LIMITED_DEFAULT = 3600.0


class _Network(client.ClientNetwork):
    """``ClientNetwork`` remembering the Retry-After of the last error
    response (``acme`` raises the problem document without the response)."""

    retry_after_header: str | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = super()._send_request(method, url, *args, **kwargs)
        if response.status_code >= 400:
            self.retry_after_header = response.headers.get("Retry-After")
        return response


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After (delay seconds or an HTTP date) as epoch seconds."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return now + float(value)
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _retry_after(exc: BaseException, header: str | None) -> float | None:
    now = datetime.datetime.now(datetime.UTC).timestamp()
    when = parse_retry_after(header, now)
    if when is None and isinstance(exc, messages.Error) and exc.code == "rateLimited":
        when = now + RATE_LIMITED_DEFAULT
    return when


class AcmeAccount:
    """See the module docstring.  Every method blocks: worker threads only."""

    def __init__(self, directory_url: str, state_dir: str, *, email: str = "",
                 eab_kid: str = "", eab_hmac_key: str = "", ca_bundle: str = "",
                 challenge_type: str = TLS_ALPN_01, timeout: int = 30) -> None:
        if challenge_type not in CHALLENGE_TYPES:
            raise ValueError(f"unknown challenge type {challenge_type!r}")
        self.directory_url = directory_url
        self.state_dir = state_dir
        self.email = email
        self.eab_kid = eab_kid
        self.eab_hmac_key = eab_hmac_key
        self.verify: bool | str = ca_bundle or True
        self.challenge_type = challenge_type
        self.timeout = timeout
        self.key_path = os.path.join(state_dir, "account.key")
        self.account_path = os.path.join(state_dir, "account.json")
        self.jwk = self._load_or_create_key()
        self._client: client.ClientV2 | None = None
        self._net: _Network | None = None
        self.registrations = 0  # new accounts registered by this process

    # -- the account -------------------------------------------------------------
    def _load_or_create_key(self) -> jose.JWKEC:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        if not os.path.exists(self.key_path):
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(self.key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        with open(self.key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        return jose.JWKEC(key=key)

    def thumbprint(self) -> str:
        return jose.b64encode(self.jwk.thumbprint()).decode("ascii")

    def key_authorization(self, token: str) -> str:
        return f"{token}.{self.thumbprint()}"

    def _stored_account(self) -> messages.RegistrationResource | None:
        try:
            with open(self.account_path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        if data.get("directory") != self.directory_url or not data.get("uri"):
            return None
        return messages.RegistrationResource(uri=data["uri"], body=messages.Registration())

    def client(self) -> client.ClientV2:
        if self._client is not None:
            return self._client
        net = self._net = _Network(self.jwk, alg=jose.ES256, verify_ssl=self.verify,
                                   user_agent=USER_AGENT, timeout=self.timeout)
        directory = client.ClientV2.get_directory(self.directory_url, net)
        acme_client = client.ClientV2(directory, net)
        regr = self._stored_account()
        if regr is None:
            regr = self._register(acme_client, directory)
        net.account = regr
        self._client = acme_client
        return acme_client

    def _register(self, acme_client: client.ClientV2,
                  directory: messages.Directory) -> messages.RegistrationResource:
        eab = None
        if self.eab_kid:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self.jwk.public_key(), kid=self.eab_kid,
                hmac_key=self.eab_hmac_key, directory=directory)
        reg = messages.NewRegistration.from_data(
            email=self.email or None, terms_of_service_agreed=True,
            external_account_binding=eab)
        try:
            regr = acme_client.new_account(reg)
        except errors.ConflictError as exc:  # the key already has an account
            regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        self.registrations += 1
        write_private(self.account_path, json.dumps(
            {"directory": self.directory_url, "uri": regr.uri}).encode())
        return regr

    # -- orders ------------------------------------------------------------------
    def issue(self, domain: str, publish: Callable[[str, str, str], Any],
              unpublish: Callable[[str, str, str], Any]) -> Issued:
        """Order a certificate for ``domain``.  ``publish(type, domain_or_token,
        key_authorization)`` must make the answer servable before it returns."""
        for _attempt in range(BAD_NONCE_RETRIES):
            if self._net is not None:
                self._net.retry_after_header = None
            try:
                return self._issue(domain, publish, unpublish)
            except messages.Error as exc:
                if exc.code != "badNonce":
                    self._failed(exc)
                # RFC 8555 6.5: a rejected nonce is retried with a fresh one,
                # not a reason to back off for minutes
                self._client = None
            except AcmeError:
                self._client = None
                raise
            except Exception as exc:  # acme's errors, requests' exceptions and the like
                self._failed(exc)
        self._failed(AcmeError(f"the server rejected the nonce {BAD_NONCE_RETRIES} times "
                               "in a row"))

    def _failed(self, exc: BaseException) -> NoReturn:
        """Raise the AcmeError for a failed order: a fresh directory and nonces
        next time, the server's Retry-After kept, a forgotten account dropped."""
        self._client = None
        if isinstance(exc, AcmeError):
            raise exc
        header = self._net.retry_after_header if self._net is not None else None
        if isinstance(exc, messages.Error) and exc.code == "accountDoesNotExist":
            # the server forgot the stored account: register anew next time
            with contextlib.suppress(OSError):
                os.unlink(self.account_path)
        raise AcmeError(f"{type(exc).__name__}: {exc}", _retry_after(exc, header)) from exc

    def _issue(self, domain: str, publish: Callable[[str, str, str], Any],
               unpublish: Callable[[str, str, str], Any]) -> Issued:
        acme_client = self.client()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        csr = crypto_util.make_csr(key_pem, [domain])
        order = acme_client.new_order(csr)
        published: list[tuple[str, str, str]] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # reused authorization
                challb = next((c for c in authz.body.challenges
                               if c.chall.typ == self.challenge_type), None)
                if challb is None:
                    raise AcmeError(f"the server offers no {self.challenge_type} challenge "
                                    f"for {domain}")
                token = challb.chall.encode("token")
                response = challb.chall.response(self.jwk)
                keyauth = response.key_authorization
                handle = (self.challenge_type, domain if self.challenge_type == TLS_ALPN_01
                          else token, keyauth)
                publish(*handle)
                published.append(handle)
                acme_client.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
            order = acme_client.poll_and_finalize(order, deadline)
        finally:
            for handle in published:
                with contextlib.suppress(Exception):  # best effort; the responder is bounded
                    unpublish(*handle)
        if not order.fullchain_pem:
            raise AcmeError(f"the order for {domain} returned no certificate")
        chain = order.fullchain_pem.encode("ascii")
        return Issued(chain, key_pem, self._ari_renewal(acme_client, chain))

    @staticmethod
    def _ari_renewal(acme_client: client.ClientV2, chain: bytes) -> float | None:
        """The renewal time the server's ARI window suggests, if it offers
        one (optional: any failure means the two-thirds rule)."""
        try:
            when, _next_check = acme_client.renewal_time(chain)
        except Exception:  # ARI is advisory
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp()
