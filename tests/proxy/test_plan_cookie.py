"""The route plan's last Cookie value (``RoutePlan.cookie``): a request
whose one Cookie line is the last request's value sends that value's
filtered form (the session cookie taken out) without filtering it again;
any other value, or several Cookie lines, is filtered and sent as the
general filter makes it, request after request, whatever came before."""

from __future__ import annotations

import random

from nbgateway.proxy.headers import _without_session_cookie
from tests.proxy.test_lean_path import Path

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
COOKIES = [
    [b"a=1; nb_session=s1"], [b"a=1; nb_session=s2"], [b"nb_session=s1"], [b"b=2"],
    [b"a=1", b"nb_session=x; c=3"], [b" a=1 ;; nb_session = y ; d=4"], [b"a=1; nb_session=s1"],
]


def _cookie_line(sent: bytes) -> bytes | None:
    lines = [line for line in sent.split(b"\r\n") if line.lower().startswith(b"cookie:")]
    assert len(lines) <= 1, sent
    return lines[0][len(b"Cookie: "):] if lines else None


def test_every_request_sends_its_own_filtered_cookie():
    rng = random.Random(2020)
    path = Path()
    proxy = path.channel.factory.resource.proxy
    hits = 0
    for n in range(300):
        values = rng.choice(COOKIES) if n % 4 else COOKIES[0]
        head = b"GET /p?n=%d HTTP/1.1\r\nHost: app.example\r\nUser-Agent: t\r\n" % n
        head += b"".join(b"Cookie: " + v + b"\r\n" for v in values) + b"\r\n"
        plans = list(proxy._plans.values())
        hits += bool(plans) and len(values) == 1 and plans[0].cookie[0] == values[0]
        sent, answer = path.exchange(head, OK)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer
        assert _cookie_line(sent) == _without_session_cookie(values), (values, sent)
    assert hits > 50, hits  # the last value was taken often
