"""Several WireGuard devices (one per account) behind one UDP port.

Every account has its own tunnel identity (static key) but all of them share the
gateway's single advertised UDP endpoint.  :class:`DeviceMux` sits between the
UDP adapter and the devices:

- transport data, handshake responses and cookie replies carry the receiver
  index, which the shared :class:`~nbgateway.wireguard.device.IndexRegistry`
  maps to exactly one device (indices are unique across devices);
- handshake initiations carry no index, so the mux finds the device whose
  public key the initiator's MAC1 was computed for (one keyed BLAKE2s per
  device, from a copy of a hasher already keyed with the device's MAC1 key;
  the cost of an initiation grows with the number of accounts: 0.6-1 ms of
  CPU for a full scan of 1,000, ~0.3 ms on average for a first contact,
  which is most of what answering it with a cookie costs).  The device an
  initiation from a source address was last routed to is tried first (a
  bounded hint, :data:`ADDR_HINTS_MAX` addresses, oldest forgotten first), so
  a peer's retries and rekeys from its endpoint cost one hash; a wrong hint
  costs one hash more than the scan.  The hint is only an ordering: MAC1 is
  still what decides (and anyone can compute MAC1, so nothing is trusted).

Given a clock, the mux keeps handshake initiations (the expensive messages:
four X25519 operations each) off the data path, like wireguard-go's separate
handshake queue: a socket read's transport data is handled at once, its
initiations go to a bounded FIFO (:data:`HANDSHAKE_QUEUE_MAX`; a full queue
drops and counts ``mux_drop_handshake_queue_full``, the initiator retries per
the protocol) that is drained at most :attr:`DeviceMux.handshake_budget`
initiations and :attr:`DeviceMux.handshake_time_budget` seconds of work (the
clock's ``seconds()``; at least one initiation) per reactor turn
(``callLater(0)`` between turns), so a wave of initiations that each need the
DH work (a few ms apiece with the MAC1 routing at 1,000 accounts) leaves the
turns in between to transport data.  While the data path is busy
(:attr:`DeviceMux.busy_datagrams` transport datagrams or more routed since the
previous drain turn, and for :attr:`DeviceMux.busy_hold` seconds after, so a
TCP flow stalled by a loss is not starved while it recovers) the turns are
smaller (:attr:`DeviceMux.busy_time_budget`) and spaced: after a turn that
took ``t`` seconds the next one waits ``t * (1 - share) / share``
(:attr:`DeviceMux.busy_share`, at most :attr:`DeviceMux.busy_max_delay`), so
handshakes take at most about that share of the reactor while an established
peer moves data, and all of it when none
does.  The queue
depth is the global "under load" signal of whitepaper 5.3: at
:attr:`DeviceMux.under_load_depth` or more queued initiations (and for
UNDER_LOAD_AFTER_TIME after), every device answers initiations without a
valid MAC2 with a cookie reply instead of doing the DH work.  Without a clock
initiations are handled inline, in arrival order.

Unroutable datagrams are counted in :attr:`DeviceMux.counters` and dropped;
the UDP adapter's socket errors land there too (:attr:`DeviceMux.events`).
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter, deque

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from nbgateway.interfaces import IDatagramLink
from nbgateway.wireguard.constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_MIN_SIZE,
    UNDER_LOAD_AFTER_TIME,
)
from nbgateway.wireguard.device import IndexRegistry, WireGuardDevice
from nbgateway.wireguard.messages import INITIATION_MAC1_OFFSET

_HEAD = struct.Struct("<II")
_INITIATION_HEAD = struct.pack("<I", MESSAGE_INITIATION)

#: queued handshake initiations at most (wireguard-go's QueueHandshakeSize)
HANDSHAKE_QUEUE_MAX = 1024
#: queue depth from which the devices are under load (wireguard-go: size / 8)
HANDSHAKE_UNDER_LOAD_DEPTH = HANDSHAKE_QUEUE_MAX // 8
#: queued initiations from one source IP at most: the queue is every account's,
#: so one address must not fill it (its excess is dropped and counted)
HANDSHAKE_QUEUE_PER_SOURCE = HANDSHAKE_QUEUE_MAX // 16
#: initiations processed per reactor turn at most (~0.3 ms of CPU each for the
#: DH work, ~0.03-0.05 ms for a cookie reply, plus the MAC1 routing: ~0.3-1 us
#: per account device tried; bench/handshake_burst.py)
HANDSHAKE_BUDGET = 8
#: source addresses whose last routed device is remembered (~200 B each)
ADDR_HINTS_MAX = 16384
#: seconds of initiation work per reactor turn: the drain stops after the
#: initiation that reaches it (so at least one is handled per turn)
HANDSHAKE_TIME_BUDGET = 0.002
#: transport datagrams routed since the previous drain turn from which the data
#: path counts as busy (a bulk transfer brings tens per read)
BUSY_DATAGRAMS = 8
#: the per-turn time budget while the data path is busy (smaller slices: the
#: socket is read between them, so its buffer does not overflow)
BUSY_HANDSHAKE_TIME_BUDGET = 0.0005
#: while the data path is busy, the share of wall time the drain may take: after a
#: turn that took ``t`` seconds the next one waits ``t * (1 - share) / share``
#: (at most :data:`BUSY_MAX_DELAY`), leaving the reads in between to the data
BUSY_HANDSHAKE_SHARE = 0.25
#: the longest wait between two drain turns while the data path is busy
BUSY_MAX_DELAY = 0.010
#: seconds the data path still counts as busy after the last drain turn that
#: saw it busy: a TCP flow that stalled (a loss, its retransmission timeout:
#: 0.2 s and up) brings few datagrams meanwhile, and handshakes at full speed
#: would keep it stalled until the queue is empty
BUSY_HOLD = 1.0


class DeviceMux:
    """Routes datagrams from one UDP socket to the device they belong to."""

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        queue_max: int = HANDSHAKE_QUEUE_MAX,
        under_load_depth: int = HANDSHAKE_UNDER_LOAD_DEPTH,
        handshake_budget: int = HANDSHAKE_BUDGET,
        handshake_time_budget: float = HANDSHAKE_TIME_BUDGET,
        busy_datagrams: int = BUSY_DATAGRAMS,
        busy_time_budget: float = BUSY_HANDSHAKE_TIME_BUDGET,
        busy_share: float = BUSY_HANDSHAKE_SHARE,
        busy_max_delay: float = BUSY_MAX_DELAY,
        busy_hold: float = BUSY_HOLD,
    ) -> None:
        self.registry = IndexRegistry()
        self.devices: list[WireGuardDevice] = []
        self.counters: Counter[str] = Counter()
        self._link: IDatagramLink | None = None
        #: None: initiations are handled inline (no queue)
        self.clock = clock
        self.queue_max = queue_max
        self.under_load_depth = under_load_depth
        self.handshake_budget = max(1, handshake_budget)
        self.handshake_time_budget = handshake_time_budget
        self.busy_datagrams = busy_datagrams
        self.busy_time_budget = busy_time_budget
        if not 0.0 < busy_share <= 1.0:
            raise ValueError("busy_share must be in (0, 1]")
        self.busy_share = busy_share
        self.busy_max_delay = busy_max_delay
        self.busy_hold = busy_hold
        # transport datagrams routed since the last drain turn (the busy signal)
        self._data_since_drain = 0
        self._busy_until = float("-inf")
        self._queue: deque[tuple[bytes, tuple[str, int]]] = deque()
        #: queued initiations per source IP (at most ``per_source_max`` each)
        self._queued_by_ip: Counter[str] = Counter()
        self.per_source_max = max(1, queue_max // 16)
        self._drain_call: IDelayedCall | None = None
        self._under_load_until = float("-inf")
        # (BLAKE2s keyed with a device's MAC1 key, the device), in ``devices`` order
        self._mac1_hashers: list[tuple[object, WireGuardDevice]] = []
        # source address -> (hasher, device) an initiation from it was last routed to
        self._addr_hints: dict[tuple[str, int], tuple[object, WireGuardDevice]] = {}

    @property
    def handshake_queue_depth(self) -> int:
        return len(self._queue)

    def under_load(self, now: float) -> bool:
        """The global under-load signal the devices consult (whitepaper 5.3):
        the handshake queue holds ``under_load_depth`` initiations or more, or
        did within the last UNDER_LOAD_AFTER_TIME."""
        if len(self._queue) >= self.under_load_depth:
            self._under_load_until = now + UNDER_LOAD_AFTER_TIME
            return True
        return now < self._under_load_until

    # The UDP adapter sets ``link`` on whatever it feeds; pass it to every device.
    @property
    def link(self) -> IDatagramLink | None:
        return self._link

    @link.setter
    def link(self, value: IDatagramLink | None) -> None:
        self._link = value
        for device in self.devices:
            device.link = value

    @property
    def events(self) -> Counter[str]:
        """Where the UDP adapter counts socket errors (``udp_send_error``,
        ``udp_refused``): the mux's own :attr:`counters`, as a device's
        ``events`` are its own."""
        return self.counters

    @property
    def counters_total(self) -> Counter[str]:
        total = Counter(self.counters)
        for device in self.devices:
            total.update(device.counters)
        return total

    def add(self, device: WireGuardDevice) -> WireGuardDevice:
        """Attach a device built with ``index_registry=mux.registry``."""
        if device.index_registry is not self.registry:
            raise ValueError("device must be created with index_registry=mux.registry")
        if any(d.public_key == device.public_key for d in self.devices):
            raise ValueError("a device with this public key is already attached")
        self.devices.append(device)
        self._mac1_hashers.append(
            (hashlib.blake2s(key=device.identity_mac1_key, digest_size=16), device))
        device.link = self._link
        if self.clock is not None:
            device.load_probe = self.under_load
        return device

    def remove(self, device: WireGuardDevice) -> None:
        if device in self.devices:
            self.devices.remove(device)
            self._mac1_hashers = [e for e in self._mac1_hashers if e[1] is not device]
            self._addr_hints = {a: e for a, e in self._addr_hints.items()
                                if e[1] is not device}
            device.close()  # releases its indices from the shared registry
            device.link = None
            device.load_probe = None

    def close(self) -> None:
        """Cancel the pending drain and forget the queued initiations."""
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        self._queue.clear()
        self._queued_by_ip.clear()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagramsReceived([(data, addr)])

    def datagramsReceived(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        """A socket read's worth of datagrams: each run bound for one device is
        handed over in one ``datagramsReceived`` call, in arrival order; with a
        clock, initiations are queued and drained after the read's other
        datagrams, within the per-turn budget."""
        run: list[tuple[bytes, tuple[str, int]]] = []
        run_device: WireGuardDevice | None = None
        queue = self._queue if self.clock is not None else None
        queued = False
        routed = 0
        for item in batch:
            data = item[0]
            if (queue is not None and len(data) == MESSAGE_INITIATION_SIZE
                    and data[:4] == _INITIATION_HEAD):
                ip = item[1][0] if item[1] else ""
                if len(queue) >= self.queue_max:
                    self.counters["mux_drop_handshake_queue_full"] += 1
                elif self._queued_by_ip[ip] >= self.per_source_max:
                    self.counters["mux_drop_handshake_source_share"] += 1
                else:
                    self._queued_by_ip[ip] += 1
                    queue.append(item)
                    queued = True
                continue
            device = self._owner(data, item[1])
            if device is None:
                continue
            routed += 1
            if device is not run_device:
                if run:
                    run_device.datagramsReceived(run)
                    run = []
                run_device = device
            run.append(item)
        if run:
            run_device.datagramsReceived(run)
        self._data_since_drain += routed
        if queued and self._drain_call is None:
            self._drain()

    def _drain(self) -> None:
        """Hand queued initiations to their devices until ``handshake_budget`` of
        them or the turn's time budget (at least one); schedule the rest.

        While the data path is busy (``busy_datagrams`` or more transport
        datagrams routed since the previous drain turn, or since one within
        ``busy_hold`` seconds that saw that) the turn's time budget is
        ``busy_time_budget`` and the next turn waits so that the drain takes
        at most ``busy_share`` of the wall time (at most ``busy_max_delay``);
        otherwise the budget is ``handshake_time_budget`` and the next turn is
        the next reactor iteration."""
        self._drain_call = None
        queue = self._queue
        clock = self.clock
        seconds = clock.seconds if clock is not None else None
        start = seconds() if seconds is not None else 0.0
        if self._data_since_drain >= self.busy_datagrams:
            self._busy_until = start + self.busy_hold
            busy = True
        else:
            busy = start < self._busy_until
        self._data_since_drain = 0
        budget = (min(self.handshake_time_budget, self.busy_time_budget) if busy
                  else self.handshake_time_budget)
        deadline = start + budget
        for _ in range(min(self.handshake_budget, len(queue))):
            data, addr = queue.popleft()
            ip = addr[0] if addr else ""
            left = self._queued_by_ip[ip] - 1
            if left > 0:
                self._queued_by_ip[ip] = left
            else:
                del self._queued_by_ip[ip]
            device = self._owner(data, addr)
            if device is not None:
                device.datagramsReceived(((data, addr),))
            self.counters["handshake_queue_processed"] += 1
            if seconds is not None and seconds() >= deadline:
                if queue:
                    self.counters["handshake_queue_time_budget_spent"] += 1
                break
        if queue and clock is not None:
            delay = 0.0
            if busy:
                spent = seconds() - start
                delay = min(self.busy_max_delay,
                            spent * (1.0 - self.busy_share) / self.busy_share)
                self.counters["handshake_queue_busy_turns"] += 1
            self._drain_call = clock.callLater(delay, self._drain)

    def _owner(self, data: bytes, addr: tuple[str, int] | None = None
               ) -> WireGuardDevice | None:
        """The device a datagram belongs to, or None (counted)."""
        n = len(data)
        if n < 8:
            self.counters["mux_drop_malformed"] += 1
            return None
        mtype, receiver = _HEAD.unpack_from(data)
        if mtype == MESSAGE_TRANSPORT and n >= MESSAGE_TRANSPORT_MIN_SIZE:
            device = self.registry.owners.get(receiver)
        elif mtype == MESSAGE_INITIATION and n == MESSAGE_INITIATION_SIZE:
            device = self._by_mac1(data, addr)
        elif (mtype == MESSAGE_RESPONSE and n == MESSAGE_RESPONSE_SIZE) or (
            mtype == MESSAGE_COOKIE_REPLY and n == MESSAGE_COOKIE_REPLY_SIZE
        ):
            # response: sender at 4, receiver at 8; cookie reply: receiver at 4
            index = _HEAD.unpack_from(data, 4)[1] if mtype == MESSAGE_RESPONSE else receiver
            device = self.registry.owners.get(index)
        else:
            self.counters["mux_drop_malformed"] += 1
            return None
        if device is None:
            self.counters["mux_drop_unroutable"] += 1
        return device

    def _by_mac1(self, data: bytes, addr: tuple[str, int] | None = None
                 ) -> WireGuardDevice | None:
        body = data[:INITIATION_MAC1_OFFSET]
        mac1 = data[INITIATION_MAC1_OFFSET : INITIATION_MAC1_OFFSET + 16]
        # a plain compare: MAC1 is keyed by a public key, anyone can compute it
        # (the device checks it again in constant time)
        hints = self._addr_hints
        hint = hints.get(addr) if addr is not None else None
        if hint is not None:
            h = hint[0].copy()
            h.update(body)
            if h.digest() == mac1:
                self.counters["mux_mac1_hint_hit"] += 1
                return hint[1]
        for entry in self._mac1_hashers:
            if entry is hint:
                continue
            h = entry[0].copy()
            h.update(body)
            if h.digest() == mac1:
                if addr is not None:
                    hints.pop(addr, None)  # re-inserted last: the newest
                    if len(hints) >= ADDR_HINTS_MAX:
                        del hints[next(iter(hints))]
                    hints[addr] = entry
                return entry[1]
        return None
