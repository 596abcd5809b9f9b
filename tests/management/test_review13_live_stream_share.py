"""Review 13 (finding, low): one account's dashboard sessions take every
live-view stream of the management (sans-IO, the real hub).

The dashboard's live view (``/ui/live/events``) admits at most 64 event
streams management-wide and 3 per session; nothing bounds an account.  A
tenant signing in 22 times (sign-in is not rate limited) and opening three
streams per session holds all 64: every other account's dashboard gets 503
``too many live streams; polling`` and falls back to polling, for as long as
the tenant keeps them open (a stream lives 5 minutes; EventSource reconnects).

Expected: an account holds at most a share of the streams (the proposed
fix: ``LiveHub.max_per_account``, 16 by default).
"""

from __future__ import annotations

from nbgateway.management.ui.live import MAX_PER_SESSION, MAX_STREAMS, LiveHub


def test_one_account_cannot_take_every_live_stream() -> None:
    hub = LiveHub(lambda: 0.0)
    taken = 0
    for session in range(MAX_STREAMS // MAX_PER_SESSION + 1):
        for _ in range(MAX_PER_SESSION):
            taken += hub.open(f"evil-{session}", "acct-evil") is not None
    assert hub.open("victim-session", "acct-victim") is not None  # today: None
    assert taken < MAX_STREAMS
