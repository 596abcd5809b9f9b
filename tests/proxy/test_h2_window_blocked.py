"""HTTP/2 send loop with a closed flow-control window (found reviewing
39d801d; the loop's ``if not frame: break`` is older, and Twisted's own
``H2Connection`` spins the same way): a stream with response bytes queued
and no window left stays unblocked, so every reactor turn the loop runs,
pops and puts back the same bytes, calls ``resetTimeout()`` and reschedules
itself with ``callLater(0)``.  The reactor never sleeps (a 100 % CPU busy
loop) and the idle timeout never fires, for as long as a client keeps a
window closed (read 64 kB of a response and send no WINDOW_UPDATE).

Expected: with no window the loop waits (no delayed call left) until a
WINDOW_UPDATE; then the rest of the body and END_STREAM go out."""

from __future__ import annotations

import h2.events
from hyperframe.frame import DataFrame

from tests.proxy.test_review12_h2_send_loop import _connection, _data, _frames, _open


def test_a_closed_window_does_not_spin_the_reactor() -> None:
    conn, transport, clock, client, held = _connection(window=100)
    (r1,) = _open(conn, client, held, 1)
    clock.advance(0)
    client.receive_data(transport.value())
    transport.clear()
    runs = []
    loop = conn._sendPrioritisedData
    conn._sendPrioritisedData = lambda *a: (runs.append(1), loop(*a))  # type: ignore[method-assign]
    resets = []
    reset = conn.resetTimeout
    conn.resetTimeout = lambda: (resets.append(1), reset())  # type: ignore[method-assign]
    r1.write(b"a" * 150)
    r1.finish()
    turns = sum(clock.turn() for _ in range(200))
    assert _data(transport, 1) == [(100, False)]
    assert turns <= 3 and len(runs) <= 3, f"{len(runs)} loop runs in 200 idle turns"
    assert len(resets) <= 1
    # the window opens: the rest goes out, ending the stream
    client.receive_data(transport.value())
    transport.clear()
    client.increment_flow_control_window(50, stream_id=1)
    conn.dataReceived(client.data_to_send())
    for _ in range(3):
        clock.turn()
    assert _data(transport, 1) == [(50, True)]
    events = client.receive_data(transport.value())
    assert [e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)] == [1]
    assert not conn.streams


def test_a_closed_connection_window_does_not_spin_either() -> None:
    conn, transport, clock, client, held = _connection()
    reqs = _open(conn, client, held, 1, 3)
    clock.advance(0)
    client.receive_data(transport.value())
    transport.clear()
    for req in reqs:  # 2 x 40,000 bytes: past the connection's 65,535
        req.write(b"a" * 40_000)
        req.finish()
    turns = sum(clock.turn() for _ in range(200))
    sent = sum(n for sid in (1, 3) for n, _ in _data(transport, sid))
    assert sent == 65_535
    assert turns <= 10, f"{turns} loop runs in 200 idle turns"
    client.receive_data(transport.value())
    transport.clear()
    client.increment_flow_control_window(80_000 - 65_535)
    conn.dataReceived(client.data_to_send())
    for _ in range(5):
        clock.turn()
    frames = [f for f in _frames(transport.value()) if isinstance(f, DataFrame)]
    assert sum(len(f.data) for f in frames) == 80_000 - 65_535
    assert sorted(f.stream_id for f in frames if "END_STREAM" in f.flags) == [1, 3]
    assert not conn.streams


def test_a_larger_initial_window_setting_reopens_a_closed_window() -> None:
    conn, transport, clock, client, held = _connection(window=100)
    (r1,) = _open(conn, client, held, 1)
    clock.advance(0)
    client.receive_data(transport.value())
    transport.clear()
    r1.write(b"a" * 150)
    r1.finish()
    for _ in range(5):
        clock.turn()
    assert _data(transport, 1) == [(100, False)]
    client.receive_data(transport.value())
    transport.clear()
    import h2.settings

    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65_535})
    conn.dataReceived(client.data_to_send())
    for _ in range(3):
        clock.turn()
    assert _data(transport, 1) == [(50, True)]
    assert not conn.streams
