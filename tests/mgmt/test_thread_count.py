"""The gateway's thread count does not grow with the number of accounts.

N PeerChannelClients (one per account, as the gateway runs them) hold their
Sync streams open against the REAL management peer channel, served from a
separate process (so only the clients' threads are counted here): once every
client has received its network map, the process has exactly as many Python
threads, and the same number of OS threads, with 24 accounts as with 4.
Before the asyncio bridge each stream had a reader thread of its own (and
each channel its own polling thread)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
import threading

from twisted.internet import defer, reactor
from twisted.trial import unittest

from nbgateway.management.model import Account, Peer
from nbgateway.management.store import Store
from nbgateway.mgmt.peerclient import PeerChannelClient
from nbgateway.wireguard.keys import generate_private_key, public_key
from tests.mgmt.test_peerclient import fast_backoff, wait_for

CLUSTER = "eu.proxy.netbird.io"

SERVER = textwrap.dedent("""
    import sys, time
    from nbgateway.management.grpcloop import LoopServer
    from nbgateway.management.peerchannel import add_to_server
    from nbgateway.management.store import Store
    store = Store.open(sys.argv[1], known_clusters=[sys.argv[3]])
    server = LoopServer()
    add_to_server(server, store, sys.argv[2], poll_interval=0.2, coalesce_delay=0.01)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the test closes our stdin
""")


def os_threads() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line")


class ThreadCountTests(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        dsn = f"sqlite:///{tmp}/store.db"
        store = Store.open(dsn, known_clusters=[CLUSTER])
        self.keys: list[bytes] = []
        for i in range(24):
            store.accounts.create(Account(id=f"acct-{i}", domain=f"a{i}.netbird.test"))
            key = generate_private_key()
            store.peers.create(Peer(
                account_id=f"acct-{i}", name="proxy", proxy=True, proxy_cluster=CLUSTER,
                key=base64.b64encode(public_key(key)).decode(), ephemeral=True,
                endpoint="127.0.0.1:51820"))
            self.keys.append(key)
        store.close()
        self.server = subprocess.Popen(
            [sys.executable, "-c", SERVER, dsn, os.path.join(tmp, "wg.key"), CLUSTER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(self._stop_server)
        self.port = int(self.server.stdout.readline())
        self.maps: dict[int, int] = {}

    def _stop_server(self) -> None:
        self.server.stdin.close()
        self.server.kill()
        self.server.wait(10)

    def _client(self, i: int) -> PeerChannelClient:
        def got(_nm: object) -> None:
            self.maps[i] = self.maps.get(i, 0) + 1

        c = PeerChannelClient(reactor, f"http://127.0.0.1:{self.port}", self.keys[i], got,
                              hostname="gw-test", backoff=fast_backoff(), name=f"acct-{i}")
        self.addCleanup(c.stop)
        c.start()
        return c

    @defer.inlineCallbacks
    def test_threads_do_not_grow_with_accounts(self):
        clients = [self._client(i) for i in range(4)]
        yield wait_for(lambda: len(self.maps) == 4, "4 accounts' network maps", 30)
        py_small, os_small = threading.active_count(), os_threads()
        clients += [self._client(i) for i in range(4, 24)]
        yield wait_for(lambda: len(self.maps) == 24, "24 accounts' network maps", 60)
        assert all(c.connected for c in clients)
        assert all(c._stream is not None for c in clients)  # every Sync stream stays open
        py_large, os_large = threading.active_count(), os_threads()
        assert py_large == py_small, (py_small, py_large, threading.enumerate())
        assert os_large == os_small, (os_small, os_large)
