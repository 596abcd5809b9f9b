"""The real management over gRPC, for the account runtime's end-to-end tests.

``tests/test_accounts_retry.py`` and ``tests/test_accounts_key_squat.py``
each end with a test against the real ProxyService and ManagementService
(peer channel) on one loopback gRPC server, with a private service of
``acct-1`` and a shared proxy token.  :func:`start` brings that up; the
test builds its own registry around :attr:`RealManagement.client` and
:meth:`RealManagement.channel`, and calls :meth:`RealManagement.stop` after
stopping that registry.  The leading underscore keeps pytest from
collecting this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred

from nbgateway.management.grpcloop import LoopServer
from nbgateway.management.model import Group, Service
from nbgateway.management.peerchannel import add_to_server
from nbgateway.management.proxyservice import ProxyServiceServicer
from nbgateway.management.store import Store
from nbgateway.mgmt.client import GrpcManagementClient
from nbgateway.mgmt.netmap import convert
from nbgateway.mgmt.peerclient import PeerChannelClient
from nbgateway.store.mappings import MappingStore
from tests.management.test_peerchannel import CLUSTER as PC_CLUSTER
from tests.management.test_peerchannel import WAIT, private_service


@dataclasses.dataclass
class RealManagement:
    store: Store
    url: str
    #: the gateway's real management client (proxy ``gw-1``, private)
    client: GrpcManagementClient
    #: ``acct-1``'s private service (group ``grp-admins``)
    service: Service
    _proxy_servicer: ProxyServiceServicer
    _peer_service: Any
    _server: LoopServer

    def channel(self, account_id: str, key: bytes,
                on_network: Callable[[Any], None]) -> PeerChannelClient:
        """The runtime's peer channel to this management."""
        return PeerChannelClient(reactor, self.url, key, lambda nm: on_network(convert(nm)),
                                 hostname=f"nbgateway-{account_id}", version="test",
                                 allow_insecure=True)

    def start_client(self, registry: Any) -> None:
        """The client's mappings feed *registry*; the client starts."""
        mappings = MappingStore()
        mappings.add_observer(registry)
        self.client.subscribe_mappings(mappings)
        self.client.startService()

    async def stop(self) -> None:
        await maybeDeferred(self.client.stopService)
        self._peer_service.close()
        self._proxy_servicer.stop()
        self._server.stop(grace=None).wait(WAIT)


def start(store: Store, keys_dir: str) -> RealManagement:
    """The management's gRPC server on a loopback port, ``acct-1``'s private
    service and a shared proxy token; the client is built, not started."""
    proxy_servicer = ProxyServiceServicer(store)
    server = LoopServer(handlers=[proxy_servicer.generic_handler()])
    peer_service = add_to_server(server, store, keys_dir)
    port = server.add_insecure_port("127.0.0.1:0")
    proxy_servicer.start()
    server.start()
    group = store.groups.create(Group(id="grp-admins", account_id="acct-1", name="admins"))
    service = store.services.create(private_service([group.id]))
    _, bearer = store.proxies.create_token("shared", account_id=None)
    url = f"http://127.0.0.1:{port}"
    client = GrpcManagementClient(reactor, url, bearer, address=PC_CLUSTER, proxy_id="gw-1",
                                  private=True)
    return RealManagement(store, url, client, service, proxy_servicer, peer_service, server)
