"""Constants shared by the TCP connection modules: RFC 9293 states, sequence
space helpers, buffer sizes and timer values (see :mod:`tcp_conn` for the
documented choices behind them)."""

from __future__ import annotations

(CLOSED, LISTEN, SYN_SENT, SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT,
 CLOSING, LAST_ACK, TIME_WAIT) = range(11)
STATE_NAMES = ("CLOSED", "LISTEN", "SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1",
               "FIN-WAIT-2", "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT")
_SEND_STATES = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK))
_TEXT_STATES = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))

MASK = 0xFFFFFFFF
HALF = 0x80000000
WRAP = 0x100000000

RCV_BUF = 64 * 1024  # initial receive window (and its floor)
RCV_BUF_MAX = 1024 * 1024
RCV_WSCALE = 5  # 65535 << 5 covers RCV_BUF_MAX
RCV_TUNE_CALM = 8  # loss-free, window-limited RTTs before the receive window grows
DELACK_TIMEOUT = 0.04  # RFC 5681 4.2: well under 500 ms
ACK_EVERY = 8  # in-order segments acknowledged at once even within one reactor turn
MSL = 15.0
TIME_WAIT_TIMEOUT = 2 * MSL
FIN_WAIT_2_TIMEOUT = 60.0
KEEPALIVE_IDLE = 7200.0  # RFC 1122 4.2.3.6
KEEPALIVE_INTERVAL = 75.0
KEEPALIVE_COUNT = 9
SYN_RETRIES = 5
DATA_RETRIES = 12
PERSIST_MAX = 60.0
OOW_ACK_INTERVAL = 0.5  # like Linux tcp_invalid_ratelimit
DEFAULT_MSS_V4 = 536  # RFC 9293 3.7.1
DEFAULT_MSS_V6 = 1220  # RFC 8200 8.3


def _unwrap(wire: int, ref: int) -> int:
    d = (wire - ref) & MASK
    return ref + d - WRAP if d & HALF else ref + d
