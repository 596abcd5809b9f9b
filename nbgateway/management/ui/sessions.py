"""Server-side sessions of the web UI (sans-IO: no reactor, the clock is injected).

Owns the session table and nothing else: opaque random session ids (the cookie
value), the CSRF token bound to each session, the admin token a signed-in
session acts with (kept here, never sent to the browser), idle expiry and a
hard bound on the number of sessions.  Anonymous sessions (a sign-in form that
was shown) and signed-in sessions have separate caps so a flood of sign-in
page views cannot evict people who are signed in; a full signed-in table
evicts a session of the owner (account) that holds the most, so one account
signing in over and over never signs another account's people out.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: idle lifetime of a signed-in session, seconds
SIGNED_IN_TTL = 8 * 3600
#: idle lifetime of an anonymous (sign-in form) session, seconds
ANONYMOUS_TTL = 15 * 60
MAX_SIGNED_IN = 1000
MAX_ANONYMOUS = 1000


@dataclass
class Session:
    sid: str
    csrf: str
    expires: float
    #: the personal access token this session acts with; None before sign-in
    token: str | None = None
    #: a one-shot message shown on the next page (e.g. a token shown once)
    flash: dict[str, str] | None = None
    #: who the signed-in session belongs to (an account id): a full table
    #: evicts from the owner holding the most sessions
    owner: str = ""


class SessionStore:
    """Bounded, expiring session table; every method takes effect at ``clock()``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 max_signed_in: int = MAX_SIGNED_IN, max_anonymous: int = MAX_ANONYMOUS,
                 signed_in_ttl: float = SIGNED_IN_TTL, anonymous_ttl: float = ANONYMOUS_TTL):
        self._clock = clock
        self._signed: OrderedDict[str, Session] = OrderedDict()
        self._anon: OrderedDict[str, Session] = OrderedDict()
        self._caps = (max_signed_in, max_anonymous)
        self._ttls = (signed_in_ttl, anonymous_ttl)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._signed) + len(self._anon)

    def _table(self, signed_in: bool) -> OrderedDict[str, Session]:
        return self._signed if signed_in else self._anon

    def _insert(self, session: Session) -> Session:
        signed_in = session.token is not None
        table = self._table(signed_in)
        cap = self._caps[0] if signed_in else self._caps[1]
        if len(table) >= cap:
            self.sweep()  # expired sessions go before live ones are evicted
        while len(table) >= cap:
            if signed_in:  # the owner holding the most gives up its least recently used
                counts = Counter(s.owner for s in table.values())
                biggest = max(counts, key=counts.__getitem__)
                del table[next(sid for sid, s in table.items() if s.owner == biggest)]
            else:
                table.popitem(last=False)  # least recently used goes first
            self.evicted += 1
        table[session.sid] = session
        return session

    def create_anonymous(self) -> Session:
        now = self._clock()
        return self._insert(Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                                    now + self._ttls[1]))

    def sign_in(self, previous: Session | None, token: str, owner: str = "") -> Session:
        """A fresh session (new id and CSRF token) acting with *token*; *previous*
        is dropped so a session id seen before sign-in is never signed in.
        *owner*: the account the session acts in (see the module docstring)."""
        if previous is not None:
            self.drop(previous.sid)
        now = self._clock()
        return self._insert(Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                                    now + self._ttls[0], token=token, owner=owner))

    def get(self, sid: str | None) -> Session | None:
        """The live session for *sid* (its idle expiry is extended), else None."""
        if not sid or len(sid) > 128:
            return None
        now = self._clock()
        for signed_in in (True, False):
            table = self._table(signed_in)
            session = table.get(sid)
            if session is None:
                continue
            if session.expires <= now:
                del table[sid]
                return None
            session.expires = now + self._ttls[0 if signed_in else 1]
            table.move_to_end(sid)
            return session
        return None

    def drop(self, sid: str) -> None:
        self._signed.pop(sid, None)
        self._anon.pop(sid, None)

    def sweep(self) -> int:
        """Forget expired sessions; returns how many went."""
        now = self._clock()
        gone = 0
        for table in (self._signed, self._anon):
            for sid in [s for s, v in table.items() if v.expires <= now]:
                del table[sid]
                gone += 1
        return gone

    @staticmethod
    def csrf_ok(session: Session | None, presented: str | None) -> bool:
        """Constant-time comparison of the form's CSRF token with the session's."""
        if session is None or not presented:
            return False
        return hmac.compare_digest(session.csrf.encode(), presented.encode("utf-8", "replace"))
