"""Review 18 (sec18): a proxy token revoked while its check is in flight must
not be cached as valid.

``ProxyServiceServicer._verify_caller`` reads the token from the store and then
puts it in its 10-second cache (``TOKEN_CACHE_SECONDS``).  A revocation clears
that cache from the store's change listener (``on_token_change``), but a
check that read the token just before the revocation committed stores it
*after* the clear: for the next ten seconds every unary RPC with the revoked
token is accepted (ValidateTunnelPeer, SendAccessLog, SendStatusUpdate,
CreateProxyPeer, Authenticate...) on a token an admin has just revoked, e.g.
a tenant's BYOP gateway token that leaked.  The PAT cache
(``store.users.authenticate_token``) guards the same race with a generation
number; this cache has none.

Deterministic: the store read is wrapped so that the revocation commits
between the read and the caching, as a concurrent REST call would.
"""

from __future__ import annotations

import grpc
import pytest

from nbgateway.management.grpcloop import RpcAbortError
from nbgateway.management.model import Account
from nbgateway.management.proxyservice import ProxyServiceServicer


def test_a_token_revoked_during_its_check_is_not_cached_as_valid(store) -> None:
    store.accounts.create(Account(id="acct-byop", domain="byop.test"))
    row, plain = store.proxies.create_token("byop", account_id="acct-byop")
    servicer = ProxyServiceServicer(store)
    servicer.start()
    try:
        md = (("authorization", f"Bearer {plain}"),)
        real_verify = store.proxies.verify_token
        revoked = []

        def verify_token(text, **kw):
            token = real_verify(text, **kw)
            if not revoked:  # the admin revokes it right now (REST, another thread)
                store.proxies.revoke_token("acct-byop", row.id)
                revoked.append(True)
            return token

        store.proxies.verify_token = verify_token
        # the call in flight during the revocation may still pass (it read first) ...
        servicer._check_caller(md, "192.0.2.1")
        # ... but the revoked token must not be accepted afterwards
        with pytest.raises(RpcAbortError) as info:
            servicer._check_caller(md, "192.0.2.1")
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        servicer.stop()
