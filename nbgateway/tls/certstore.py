"""Certificates for the gateway's TLS listeners (``ICertificateSource``).

Sources, in order of precedence for a server name (matched case-insensitively,
trailing dot ignored):

1. ``--cert-dir``: every ``<stem>.crt`` + ``<stem>.key`` PEM pair (the
   ``.crt`` may carry the chain after the leaf).  The names a pair serves are
   read from the certificate's subjectAltName DNS entries (the subject CN when
   it has none); the file stem does not matter.  Exact names win over wildcard
   names (``*.example.com`` covers exactly one label).
2. ``--wildcard-cert-dir``: the same layout, meant for ``*.<domain>``
   certificates.
3. Fallback: a certificate for the requested name issued on the fly by the
   gateway's local CA (:class:`LocalCA`, persisted as ``ca.crt``/``ca.key`` in
   the data directory so users and tests can trust one CA), or, with an
   ``owner`` lookup (the gateway: the account serving a name), by that
   account's own local CA (``account-cas/<hash of the account id>/`` in the
   data directory): one account's names are never in another account's CA
   (its name constraints are shown to everyone who trusts it, and with
   every leaf), the CA an account's peers trust signs only that account's
   names, and one account's name set cannot fill another's.  An account's
   CA is made (or loaded) only when one of its names needs a local-CA leaf
   or is reported as served by one; until then the names mapped for it are
   kept as a pending set, so an account whose names all have ACME or file
   certificates costs no CA.  At most ``ACCOUNT_CA_CACHE_SIZE`` account CAs
   stay loaded (least recently used evicted, names mapped meanwhile pending
   again, reloaded from the directory when needed): an idle account holds no
   CA in memory.  :meth:`CertificateStore.forget_account` (the
   account left the gateway) drops its CA from memory and keeps its
   directory, so a re-added account keeps the CA its peers trust.  The
   gateway's own CA then serves the default name alone: one from before
   per-account CAs, which lists every name it ever permitted, is narrowed
   to the default name when loaded.  Issued
   certificates live 7 days and are reissued once two thirds of that have
   passed; they are cached in memory (bounded, least recently used evicted).
   Names that are not valid host names -- and, when a ``serves`` predicate
   is given, names the gateway does not serve -- get the certificate of
   ``default_name``.  Leaves are issued on demand only: at the first TLS
   handshake for the name (the SNI callback).  :meth:`CertificateStore.describe`
   (status reports) never issues one; it reports the leaf that exists, or the
   local CA as issuer with no ``not_after`` ("issued on demand") while none
   does, and :attr:`CertificateStore.on_issued` tells the gateway when a leaf
   was issued so it can report the real expiry.

Reload: :meth:`CertificateStore.poll` compares (name, mtime, size) of both
directories and reloads on any change; :meth:`CertificateStore.start` re-arms
one poll deadline on the injected clock, and :meth:`reload` can be called
directly (SIGHUP).  A pair that fails to load (bad PEM, key not matching) is
logged and skipped; the previous index stays in force until a reload
succeeds in reading the directory.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.logger import Logger
from zope.interface import implementer

from nbgateway.routes.hosts import domain_key
from nbgateway.tls import ICertificateSource
from nbgateway.tls.ca import NameNotPermittedError, PrivateCA

log = Logger()

DEFAULT_POLL_INTERVAL = 5.0
FALLBACK_CACHE_SIZE = 1024
#: account CAs kept loaded (least recently used evicted; reloaded from the
#: data directory when a leaf, a report or a new name needs one again): a
#: loaded CA is ~5 KiB (key, certificate), needed only every few days per name
ACCOUNT_CA_CACHE_SIZE = 16
#: fallback leaves are short-lived and reissued once two thirds of their
#: lifetime have passed (clients trust the CA, never a leaf)
LEAF_LIFETIME_DAYS = 7
RENEW_FRACTION = 2.0 / 3.0
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize_name(name: str | bytes | None) -> str:
    if name is None:
        return ""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return domain_key(name)


def is_ip_literal(name: str) -> bool:
    """``name`` is an IPv4 or IPv6 address (no SNI, no ACME order for it)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def valid_hostname(name: str) -> bool:
    if not name or len(name) > 253:
        return False
    return is_ip_literal(name) or all(_LABEL.match(label) for label in name.split("."))


@dataclass
class CertifiedKey:
    """A leaf certificate, its chain and private key, plus the names it serves."""

    cert: x509.Certificate
    key: Any
    chain: list[x509.Certificate] = field(default_factory=list)
    names: tuple[str, ...] = ()
    source: str = ""
    #: the account whose local CA issued it ("" for the gateway's own, files)
    account: str = ""
    context: Any = None  # cached OpenSSL.SSL.Context (see nbgateway.tls.contexts)

    def cert_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in [self.cert, *self.chain])


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [normalize_name(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [normalize_name(a.value) for a in
                 cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(n for n in names if n)


def load_pair(crt_path: str, key_path: str) -> CertifiedKey:
    with open(crt_path, "rb") as f:
        certs = x509.load_pem_x509_certificates(f.read())
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    leaf = certs[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (leaf.public_key().public_bytes(serialization.Encoding.DER, pub)
            != key.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise ValueError("private key does not match the certificate")
    return CertifiedKey(leaf, key, certs[1:], certificate_names(leaf), source=crt_path)


def _dir_signature(path: str | None) -> tuple:
    if not path:
        return ()
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return ("missing",)
    sig = []
    for e in entries:
        if e.name.endswith((".crt", ".key")):
            try:
                st = e.stat()
            except OSError:
                continue
            sig.append((e.name, st.st_mtime_ns, st.st_size))
    return tuple(sig)


def _scan(path: str | None) -> list[CertifiedKey]:
    if not path or not os.path.isdir(path):
        return []
    out = []
    for name in sorted(os.listdir(path)):
        if not name.endswith(".crt"):
            continue
        stem = name[: -len(".crt")]
        key_path = os.path.join(path, stem + ".key")
        if not os.path.exists(key_path):
            log.warn("certificate {crt} has no matching .key; skipped", crt=name)
            continue
        try:
            out.append(load_pair(os.path.join(path, name), key_path))
        except (OSError, ValueError, TypeError) as exc:
            log.warn("cannot load certificate {crt}: {error}", crt=name, error=str(exc))
    return out


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _due(cert: x509.Certificate) -> bool:
    """True once two thirds of ``cert``'s lifetime have passed."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return _now() >= start + (end - start) * RENEW_FRACTION


class LocalCA(PrivateCA):
    """The gateway's own CA for fallback certificates (:class:`PrivateCA`,
    persisted in ``data_dir`` as ``ca.crt`` / ``ca.key``), handing out
    :class:`CertifiedKey` leaves."""

    def issue(self, name: str, days: float = LEAF_LIFETIME_DAYS) -> CertifiedKey:
        cert, key = self.sign_leaf(name, days, _now())
        return CertifiedKey(cert, key, [self.cert], (name,), source="local-ca")


@implementer(ICertificateSource)
class CertificateStore:
    """See the module docstring."""

    def __init__(self, cert_dir: str | None, wildcard_dir: str | None, data_dir: str, *,
                 clock: Any = None, poll_interval: float = DEFAULT_POLL_INTERVAL,
                 default_name: str = "localhost",
                 fallback_cache_size: int = FALLBACK_CACHE_SIZE,
                 serves: Any = None, owner: Any = None,
                 account_ca_cache_size: int = ACCOUNT_CA_CACHE_SIZE) -> None:
        self.cert_dir = cert_dir
        self.wildcard_dir = wildcard_dir
        self.data_dir = data_dir
        self.clock = clock
        self.poll_interval = poll_interval
        self.default_name = normalize_name(default_name) or "localhost"
        self.fallback_cache_size = fallback_cache_size
        # optional predicate "does the gateway serve this name?": unknown
        # names then share the default certificate instead of each costing
        # a key generation (random SNI from scanners)
        self.serves = serves
        #: optional lookup "which account serves this name?" (None or "": the
        #: gateway's own): each account's names get that account's own CA
        self.owner = owner
        self._ca: LocalCA | None = None
        #: loaded account CAs, least recently used first (see the module docstring)
        self._account_cas: OrderedDict[str, LocalCA] = OrderedDict()
        self.account_ca_cache_size = max(1, account_ca_cache_size)
        #: names mapped for an account whose CA is not made yet (its first
        #: constraints when it is; see the module docstring)
        self._pending: dict[str, set[str]] = {}
        self._exact: dict[str, CertifiedKey] = {}
        self._wild: dict[str, CertifiedKey] = {}  # "example.com" -> cert for *.example.com
        self._fallback: OrderedDict[str, CertifiedKey] = OrderedDict()
        self._signature: tuple = ()
        self._call: Any = None
        self.reloads = 0
        self.listeners: list[Any] = []  # callables notified after a reload
        #: called with the name after a local-CA leaf was issued for it (first
        #: handshake, or a renewal): the gateway re-reports the service's status
        self.on_issued: Any = None

    @property
    def ca(self) -> LocalCA:
        """The local CA.  With a ``serves`` predicate (the gateway) it is
        name-constrained to ``default_name`` (the cluster domain) plus every name
        served (see nbgateway.tls.ca and :meth:`permit`); without one the store
        cannot tell its names and the CA is unconstrained (tests, embeddings)."""
        if self._ca is None:
            self._ca = LocalCA(self.data_dir, permitted=(
                None if self.serves is None else [self.default_name]))
            if self.owner is not None:
                # accounts' names have CAs of their own: one from before them
                # lists every name it ever permitted (shown with the default
                # certificate), keep the default name ("localhost": an
                # address as the default name)
                self._ca.restrict([self.default_name, "localhost"])
        return self._ca

    def _account_of(self, name: str) -> str:
        """The account serving ``name`` ("" without an ``owner`` lookup, for
        the default name and for names no account serves)."""
        if self.owner is None or name == self.default_name:
            return ""
        return self.owner(name) or ""

    def account_ca(self, account: str, names: list[str]) -> LocalCA:
        """The local CA of ``account`` (the gateway's own for ""): the loaded
        one, else loaded from its directory or made there, either way with
        ``names`` and the account's pending names permitted (a CA made now
        needs at least one: a CA is always constrained); the least recently
        used loaded CA beyond ``account_ca_cache_size`` is evicted."""
        if not account:
            return self.ca
        cas = self._account_cas
        ca = cas.get(account)
        if ca is not None:
            cas.move_to_end(account)
            return ca
        wanted = self._pending.pop(account, set())
        wanted.update(n for n in names if n)
        directory = self._account_dir(account)
        if not wanted and not os.path.exists(os.path.join(directory, "ca.crt")):
            # a CA without a permitted name would permit every DNS name
            raise ValueError("an account's first CA needs a name")
        ca = cas[account] = LocalCA(directory, common_name=(
            f"nbgateway local CA {os.path.basename(directory)[:12]}"), permitted=sorted(wanted))
        while len(cas) > self.account_ca_cache_size:
            cas.popitem(last=False)
        return ca

    def _account_dir(self, account: str) -> str:
        tag = hashlib.sha256(account.encode("utf-8", "replace")).hexdigest()[:32]
        return os.path.join(self.data_dir, "account-cas", tag)

    def made_ca(self, account: str) -> LocalCA | None:
        """The CA of ``account`` if it has one (loaded, or in its directory:
        loaded now), the gateway's own for ""; None, making nothing, for an
        account none of whose names has needed one."""
        if not account:
            return self.ca
        if account in self._account_cas or os.path.exists(
                os.path.join(self._account_dir(account), "ca.crt")):
            return self.account_ca(account, [])
        return None

    def forget_account(self, account: str) -> bool:
        """``account`` left the gateway (its last mapping was removed): drop its
        CA object, pending names and cached leaves from memory; True if there
        was any.  Its directory stays (see the module docstring)."""
        if not account:
            return False
        found = self._account_cas.pop(account, None) is not None
        found = self._pending.pop(account, None) is not None or found
        stale = [name for name, ck in self._fallback.items() if ck.account == account]
        for name in stale:
            del self._fallback[name]
        return found or bool(stale)

    def ca_for(self, server_name: str | bytes | None) -> LocalCA:
        """The local CA that signs ``server_name``'s fallback leaf."""
        name = normalize_name(server_name)
        return self.account_ca(self._account_of(name), [name])

    # -- loading -----------------------------------------------------------
    def reload(self) -> None:
        """Re-read both directories now (also the SIGHUP hook)."""
        self._signature = (_dir_signature(self.cert_dir), _dir_signature(self.wildcard_dir))
        exact: dict[str, CertifiedKey] = {}
        wild: dict[str, CertifiedKey] = {}
        # wildcard dir first, so the cert dir's entries take precedence
        now = _now()
        for ck in _scan(self.wildcard_dir) + _scan(self.cert_dir):
            if ck.cert.not_valid_after_utc < now:
                log.warn("certificate {source} for {names} has expired", source=ck.source,
                         names=",".join(ck.names))
            for name in ck.names:
                if name.startswith("*."):
                    wild[name[2:]] = ck
                else:
                    exact[name] = ck
        self._exact, self._wild = exact, wild
        self.reloads += 1
        log.info("certificates loaded: {exact} names, {wild} wildcards",
                 exact=len(exact), wild=len(wild))
        for listener in list(self.listeners):
            listener()

    def poll(self) -> bool:
        """Reload if either directory changed; True if it reloaded."""
        sig = (_dir_signature(self.cert_dir), _dir_signature(self.wildcard_dir))
        if sig == self._signature:
            return False
        self.reload()
        return True

    def start(self) -> None:
        if self.reloads == 0:
            self.reload()
        if self.clock is not None and self._call is None:
            self._call = self.clock.callLater(self.poll_interval, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self) -> None:
        self._call = None
        try:
            self.poll()
        except Exception:  # a broken directory must not stop polling
            log.failure("certificate reload failed")
        if self.clock is not None:
            self._call = self.clock.callLater(self.poll_interval, self._tick)

    # -- lookup ------------------------------------------------------------
    def static_for(self, server_name: str | bytes | None) -> CertifiedKey | None:
        """The configured (non-fallback) certificate for a name, if any."""
        name = normalize_name(server_name)
        if self.reloads == 0:
            self.reload()
        ck = self._exact.get(name)
        if ck is not None:
            return ck
        if "." in name:
            return self._wild.get(name.split(".", 1)[1])
        return None

    def covers(self, server_name: str) -> bool:
        """True when a static or wildcard certificate serves the name
        (what "certificate ready" means for a mapping)."""
        return self.static_for(server_name) is not None

    def _fallback_name(self, server_name: str | bytes | None) -> str:
        """The name a local-CA leaf is issued under for a handshake's SNI: the
        name itself when valid and served, else the default name."""
        name = normalize_name(server_name)
        if not valid_hostname(name) or (self.serves is not None and not self.serves(name)):
            return self.default_name
        return name

    def certificate_for(self, server_name: str | bytes | None) -> CertifiedKey:
        ck = self.static_for(server_name)
        if ck is not None:
            return ck
        name = self._fallback_name(server_name)
        account = self._account_of(name)
        ck = self._fallback.get(name)
        if ck is not None and (_due(ck.cert) or ck.account != account):
            # two thirds of its lifetime gone, or the name moved to another
            # account (whose peers trust another CA): issue a fresh one
            ck = None
        if ck is None:
            ck = self._issue(name, account)
            self._fallback[name] = ck
            while len(self._fallback) > self.fallback_cache_size:
                self._fallback.popitem(last=False)
            if self.on_issued is not None:
                try:
                    self.on_issued(name)
                except Exception:  # a report hook must never fail a handshake
                    log.failure("on_issued hook failed for {name}", name=name)
        else:
            self._fallback.move_to_end(name)
        return ck

    def issued_for(self, server_name: str | bytes | None) -> CertifiedKey | None:
        """The certificate a handshake for the name would get *without issuing
        one*: static/wildcard, or a cached local-CA leaf still fresh; None
        while the local CA has not issued it yet (or it is due for renewal)."""
        ck = self.static_for(server_name)
        if ck is not None:
            return ck
        name = self._fallback_name(server_name)
        ck = self._fallback.get(name)
        if ck is None or _due(ck.cert) or ck.account != self._account_of(name):
            return None
        return ck

    def describe(self, server_name: str) -> dict[str, Any]:
        """What the store serves for a name, for status reports: issuer
        (RFC 4514), not_after, source ("acme", "file" or "local-ca") and the
        local CA's certificate PEM (``ca_certificate_pem``).  Issues nothing:
        a name whose local-CA leaf does not exist yet is described as the
        local CA's, ``not_after`` None and ``on_demand`` True (the leaf is
        issued at the first handshake; ``on_issued`` fires then)."""
        ck = self.issued_for(server_name)
        if ck is None:  # its local CA signs it at the first handshake
            ca = self.ca_for(server_name)
            return {"issuer": ca.cert.subject.rfc4514_string(), "not_after": None,
                    "source": "local-ca", "on_demand": True,
                    "ca_certificate_pem": ca.cert_pem()}
        if ck.source == "local-ca":
            source = "local-ca"
        elif os.path.basename(ck.source).startswith("acme_"):
            source = "acme"
        else:
            source = "file"
        info: dict[str, Any] = {"issuer": ck.cert.issuer.rfc4514_string(),
                                "not_after": ck.cert.not_valid_after_utc, "source": source}
        # an ACME or file certificate makes no CA: the account's CA is
        # reported only once something of the account needed it
        ca = self.made_ca(self._account_of(normalize_name(server_name)))
        if ca is not None:
            info["ca_certificate_pem"] = ca.cert_pem()
        return info

    def _issue(self, name: str, account: str = "") -> CertifiedKey:
        """A fallback leaf from the local CA of ``account`` (the gateway's own
        for "").  A served name (any valid name when there is no ``serves``
        predicate) widens that CA's name constraints; a name the CA refuses (an
        address, a full constraint set) gets the default name's certificate."""
        ca = self.account_ca(account, [name])
        ca.permit([name])
        try:
            ck = ca.issue(name)
            ck.account = account
            return ck
        except NameNotPermittedError:
            if name != self.default_name:
                # marked as the account's: cached for the name, not re-issued
                # (and re-reported) at every handshake
                return replace(self.certificate_for(self.default_name), account=account)
            self.ca.permit(["localhost"])  # an address as --domain: serve "localhost"
            return self.ca.issue("localhost")

    def permit(self, names: list[str], account: str | None = None) -> bool:
        """Widen the local CA's name constraints to ``names`` ahead of the first
        handshake (a mapping of ``account`` arrived): that account's CA with an
        ``owner`` lookup (kept as pending names while the account has no CA
        yet), else the one CA; True if a CA certificate was re-issued."""
        wanted = [normalize_name(n) for n in names if normalize_name(n)]
        if not wanted:
            return False
        if self.owner is None or not account:
            return self.ca.permit(wanted)
        ca = self._account_cas.get(account)
        if ca is None:  # made (or loaded) with these when a leaf or a report needs it
            self._pending.setdefault(account, set()).update(wanted)
            return False
        return ca.permit(wanted)
