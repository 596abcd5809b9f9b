"""CertificateStore: directory layout, precedence, wildcard scope, local CA
fallback, reload on change (task.Clock) and bad input."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task

from nbgateway.tls.certstore import (
    CertificateStore,
    LocalCA,
    is_ip_literal,
    normalize_name,
    valid_hostname,
)

from ._certs import write_pair


def fingerprint(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def issued_by(ck, ca: LocalCA) -> bool:
    ca.cert.public_key().verify(ck.cert.signature, ck.cert.tbs_certificate_bytes,
                                ec.ECDSA(ck.cert.signature_hash_algorithm))
    return ck.cert.issuer == ca.cert.subject


def make(tmp_path, **kw) -> tuple[CertificateStore, LocalCA]:
    external = LocalCA(str(tmp_path / "external"), "external test CA")
    store = CertificateStore(str(tmp_path / "certs"), str(tmp_path / "wild"),
                             str(tmp_path / "data"), **kw)
    return store, external


def test_exact_and_wildcard_and_precedence(tmp_path):
    store, ext = make(tmp_path)
    write_pair(ext, str(tmp_path / "certs"), "svc", "svc.example")
    write_pair(ext, str(tmp_path / "wild"), "anything", "*.example.com")
    write_pair(ext, str(tmp_path / "certs"), "exact", "app.example.com")
    store.reload()
    assert store.certificate_for("svc.example").names == ("svc.example",)
    assert store.certificate_for("SVC.Example.").names == ("svc.example",)
    assert store.certificate_for("x.example.com").names == ("*.example.com",)
    assert store.certificate_for("app.example.com").names == ("app.example.com",)
    # a wildcard covers exactly one label
    assert store.static_for("a.b.example.com") is None
    assert store.static_for("example.com") is None
    assert store.covers("x.example.com") and not store.covers("nope.example")


def test_fallback_issued_by_persisted_local_ca(tmp_path):
    store, _ = make(tmp_path)
    ck = store.certificate_for("unknown.example")
    assert ck.source == "local-ca" and ck.names == ("unknown.example",)
    assert issued_by(ck, store.ca)
    assert store.certificate_for("unknown.example") is ck  # cached
    again = CertificateStore(None, None, str(tmp_path / "data"))
    assert fingerprint(again.ca.cert) == fingerprint(store.ca.cert)
    assert issued_by(again.certificate_for("other.example"), store.ca)
    assert oct(os.stat(tmp_path / "data" / "ca.key").st_mode & 0o777) == "0o600"


def test_fallback_cache_is_bounded_and_bad_names_get_default(tmp_path):
    store, _ = make(tmp_path, fallback_cache_size=2, default_name="gw.example")
    for n in ("a.example", "b.example", "c.example"):
        store.certificate_for(n)
    assert list(store._fallback) == ["b.example", "c.example"]
    for bad in (None, "", "bad name", "x" * 300, "-lead.example", "a..b"):
        assert store.certificate_for(bad).names == ("gw.example",)
    assert store.certificate_for("10.1.2.3").names == ("10.1.2.3",)


def test_reload_on_change_with_clock(tmp_path):
    clock = task.Clock()
    store, ext = make(tmp_path, clock=clock, poll_interval=5)
    store.start()
    assert store.static_for("late.example") is None
    write_pair(ext, str(tmp_path / "certs"), "late", "late.example")
    clock.advance(5)
    assert store.static_for("late.example") is not None
    reloads = store.reloads
    clock.advance(5)
    assert store.reloads == reloads  # unchanged directories are not re-read
    os.remove(tmp_path / "certs" / "late.crt")
    clock.advance(5)
    assert store.static_for("late.example") is None
    store.stop()
    assert clock.getDelayedCalls() == []


def test_broken_pairs_are_skipped(tmp_path):
    store, ext = make(tmp_path)
    certs = tmp_path / "certs"
    write_pair(ext, str(certs), "good", "good.example")
    write_pair(ext, str(certs), "a", "a.example")
    write_pair(ext, str(certs), "b", "b.example")
    os.replace(certs / "b.key", certs / "a.key")  # a.crt now has the wrong key
    (certs / "garbage.crt").write_bytes(b"not a certificate")
    (certs / "garbage.key").write_bytes(b"not a key")
    (certs / "lonely.crt").write_bytes((certs / "good.crt").read_bytes())
    store.reload()
    assert store.static_for("good.example") is not None
    assert store.static_for("a.example") is None
    assert store.certificate_for("a.example").source == "local-ca"


def test_missing_directories_are_fine(tmp_path):
    store = CertificateStore(str(tmp_path / "nope"), None, str(tmp_path / "data"))
    store.reload()
    assert store.certificate_for("x.example").source == "local-ca"
    assert normalize_name(b"A.B.") == "a.b"


def test_fallback_renewed_near_expiry(tmp_path, monkeypatch):
    import datetime

    from nbgateway.tls import certstore

    store, _ = make(tmp_path)
    first = store.certificate_for("renew.example")
    later = certstore._now() + datetime.timedelta(days=340)
    monkeypatch.setattr(certstore, "_now", lambda: later)
    second = store.certificate_for("renew.example")
    assert second is not first
    assert second.cert.not_valid_after_utc > first.cert.not_valid_after_utc


def test_unserved_names_share_the_default_certificate(tmp_path):
    store, _ = make(tmp_path, default_name="gw.example",
                    serves=lambda name: name.endswith(".served.example"))
    assert store.certificate_for("app.served.example").names == ("app.served.example",)
    for junk in ("random1.example", "random2.example"):
        assert store.certificate_for(junk).names == ("gw.example",)
    assert set(store._fallback) == {"app.served.example", "gw.example"}


_FUZZ_STORE: dict = {}


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.none(), st.binary(max_size=300), st.text(max_size=300)))
def test_any_server_name_gets_a_certificate(tmp_path_factory, name):
    store = _FUZZ_STORE.get("s")
    if store is None:
        store = _FUZZ_STORE["s"] = CertificateStore(
            None, None, str(tmp_path_factory.mktemp("fuzz")), fallback_cache_size=16)
    ck = store.certificate_for(name)
    assert ck.names and len(store._fallback) <= 16


def test_fallback_leaves_are_short_lived_and_reissued_at_two_thirds(tmp_path, monkeypatch):
    import datetime

    from nbgateway.tls import certstore

    store, _ = make(tmp_path)
    first = store.certificate_for("short.example")
    lifetime = first.cert.not_valid_after_utc - first.cert.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=7, hours=1)
    start = first.cert.not_valid_before_utc
    monkeypatch.setattr(certstore, "_now", lambda: start + lifetime * 0.6)
    assert store.certificate_for("short.example") is first
    monkeypatch.setattr(certstore, "_now", lambda: start + lifetime * 0.7)
    second = store.certificate_for("short.example")
    assert second is not first and second.cert.not_valid_after_utc > first.cert.not_valid_after_utc


def test_default_certificate_of_a_listener_follows_renewal(tmp_path, monkeypatch):
    from OpenSSL import SSL

    from nbgateway.tls import certstore
    from nbgateway.tls.contexts import SNIServerCreator

    store, _ = make(tmp_path, default_name="gw.example")
    creator = SNIServerCreator(store, "gw.example")
    first = creator.serverConnectionForTLS(None).get_context()
    assert creator.serverConnectionForTLS(None).get_context() is first
    ck = store.certificate_for("gw.example")
    later = ck.cert.not_valid_before_utc + (ck.cert.not_valid_after_utc
                                            - ck.cert.not_valid_before_utc) * 0.9
    monkeypatch.setattr(certstore, "_now", lambda: later)
    assert isinstance(first, SSL.Context)
    assert creator.serverConnectionForTLS(None).get_context() is not first


def test_ip_literals_and_hostnames():
    for ip in ("192.0.2.7", "::1", "2001:db8::1", "::ffff:192.0.2.7", "fe80::1%eth0"):
        assert is_ip_literal(ip) and valid_hostname(ip), ip
    for name in ("", "app.example", "192.0.2", "192.0.2.256", "[::1]", "1.2.3.4.example",
                 "localhost"):
        assert not is_ip_literal(name), name
    assert valid_hostname("app.example") and not valid_hostname("bad_-.")
    assert not valid_hostname("a" * 254) and not valid_hostname("")
