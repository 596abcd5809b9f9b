"""SNIServerCreator's default certificate is looked up once, not per
connection, while the store has not changed: again after a reload (a new
default certificate is picked up at the next connection) and when the
certificate's renewal is due; sources without a reload count are asked per
connection as before."""

from __future__ import annotations

import datetime

from cryptography.hazmat.primitives import serialization

from nbgateway.tls import certstore
from nbgateway.tls.certstore import CertificateStore, LocalCA
from nbgateway.tls.contexts import DEFAULT_RECHECK, SNIServerCreator

from ._certs import write_pair

NAME = "gw.example"


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def presented(creator: SNIServerCreator) -> bytes:
    """The certificate a connection without SNI presents."""
    return der(creator.serverConnectionForTLS(None).get_certificate().to_cryptography())


class Counting:
    """A source wrapper counting the default certificate's lookups."""

    def __init__(self, store: CertificateStore) -> None:
        self.store = store
        self.lookups = 0

    @property
    def reloads(self) -> int:
        return self.store.reloads

    def certificate_for(self, name):
        self.lookups += 1
        return self.store.certificate_for(name)


def make(tmp_path) -> tuple[CertificateStore, LocalCA, Counting, SNIServerCreator]:
    store = CertificateStore(str(tmp_path / "certs"), None, str(tmp_path / "data"),
                             default_name=NAME)
    external = LocalCA(str(tmp_path / "external"), "external test CA")
    source = Counting(store)
    return store, external, source, SNIServerCreator(source, NAME)


def test_one_lookup_for_many_connections(tmp_path):
    store, _, source, creator = make(tmp_path)
    first = presented(creator)
    for _ in range(50):
        assert presented(creator) == first
    assert source.lookups == 1
    assert first == der(store.certificate_for(NAME).cert)


def test_a_reload_with_a_new_default_certificate_is_picked_up(tmp_path):
    store, external, source, creator = make(tmp_path)
    local_leaf = presented(creator)  # the local CA's leaf: no file yet
    write_pair(external, str(tmp_path / "certs"), "gw", NAME)
    assert presented(creator) == local_leaf  # not reloaded: the store has not changed
    store.reload()
    now = presented(creator)
    assert now != local_leaf
    assert now == der(store.static_for(NAME).cert)
    assert source.lookups == 2
    # a reload that keeps the file: looked up again (the store re-read it)
    store.reload()
    assert presented(creator) == now
    assert source.lookups == 3
    assert presented(creator) == now and source.lookups == 3


def test_a_replaced_file_is_picked_up_after_the_reload(tmp_path):
    store, external, source, creator = make(tmp_path)
    write_pair(external, str(tmp_path / "certs"), "gw", NAME)
    store.reload()
    before = presented(creator)
    write_pair(external, str(tmp_path / "certs"), "gw", NAME)  # renewed in place
    assert presented(creator) == before  # until the store reloads
    store.reload()  # (the poll timer does this when the directory changes)
    after = presented(creator)
    assert after != before and after == der(store.static_for(NAME).cert)
    assert source.lookups == 2


def test_local_ca_default_renewed_when_due(tmp_path, monkeypatch):
    store, _, source, creator = make(tmp_path)
    first = presented(creator)
    ck = store.certificate_for(NAME)
    lifetime = ck.cert.not_valid_after_utc - ck.cert.not_valid_before_utc
    start = ck.cert.not_valid_before_utc
    monkeypatch.setattr(certstore, "_now", lambda: start + lifetime * 0.6)
    assert presented(creator) == first and source.lookups == 1  # not due yet
    monkeypatch.setattr(certstore, "_now", lambda: start + lifetime * 0.7)
    renewed = presented(creator)
    assert renewed != first and source.lookups == 2
    assert renewed == der(store.certificate_for(NAME).cert)


def test_static_default_past_renewal_asked_again_once_a_minute(tmp_path, monkeypatch):
    store, external, source, creator = make(tmp_path)
    write_pair(external, str(tmp_path / "certs"), "gw", NAME)
    store.reload()
    static = store.static_for(NAME)
    later = static.cert.not_valid_before_utc + (static.cert.not_valid_after_utc
                                                - static.cert.not_valid_before_utc) * 0.9
    clock = [later]
    monkeypatch.setattr(certstore, "_now", lambda: clock[0])
    assert presented(creator) == der(static.cert)
    assert source.lookups == 1
    clock[0] = later + datetime.timedelta(seconds=DEFAULT_RECHECK - 1)
    presented(creator)
    assert source.lookups == 1
    clock[0] = later + datetime.timedelta(seconds=DEFAULT_RECHECK)
    assert presented(creator) == der(static.cert)
    assert source.lookups == 2


def test_a_source_without_reload_count_is_asked_per_connection(tmp_path):
    store, _, _, _ = make(tmp_path)

    class Plain:
        lookups = 0

        def certificate_for(self, name):
            self.lookups += 1
            return store.certificate_for(name)

    source = Plain()
    creator = SNIServerCreator(source, NAME)
    ctx = creator.serverConnectionForTLS(None).get_context()
    for _ in range(5):
        assert creator.serverConnectionForTLS(None).get_context() is ctx
    assert source.lookups == 6


def test_listeners_share_the_store_each_caches(tmp_path):
    store, external, _, creator = make(tmp_path)
    tunnel = creator.for_listener("acct")
    assert presented(creator) == presented(tunnel)
    write_pair(external, str(tmp_path / "certs"), "gw", NAME)
    store.reload()
    new = der(store.static_for(NAME).cert)
    assert presented(creator) == new and presented(tunnel) == new
