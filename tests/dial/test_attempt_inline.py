"""``LeanAgent.send_head`` makes its :class:`~nbgateway.dial.http11._Attempt`
without the ``__init__`` call: the same attributes, set in the same order
(the instance layout CPython shares between instances), with the same
values as ``_Attempt(...)`` for bodiless, buffered and streamed bodies, a
sink or a Deferred, replayable methods or not."""

from __future__ import annotations

from nbgateway.dial.http11 import _Attempt
from nbgateway.proxy.exchange import _BytesProducer
from tests.proxy.test_upstream_client import Base

HEAD = b"GET / HTTP/1.1\r\nHost: 10.0.0.5:8080\r\n\r\n"
KEY = (b"http", b"10.0.0.5", 8080)


class _Streamed:
    length = 10

    def startProducing(self, consumer):  # pragma: no cover - never sent here
        raise AssertionError


class _Sink:
    def upstream_response(self, response):  # pragma: no cover
        pass

    def upstream_failed(self, reason):
        pass


class AttemptInlineTests(Base):
    def test_send_heads_attempt_is_the_constructors(self):
        self.patch(_Attempt, "_dial", lambda self: None)  # made, not sent
        for method in (b"GET", b"POST", b"DELETE"):
            for body in (None, _BytesProducer(b"abc"), _Streamed()):
                for sink in (_Sink(), None):
                    made = self.agent.send_head(method, KEY, HEAD, body, sink)
                    replayable = body is None or isinstance(getattr(body, "body", None), bytes)
                    want = _Attempt(self.agent, KEY, method, HEAD, body, replayable, sink)
                    got = vars(made)
                    names = list(vars(want))
                    self.assertEqual(list(got)[:len(names)], names)
                    for name in names:
                        if name == "result":  # a Deferred each
                            self.assertEqual(type(got[name]), type(vars(want)[name]))
                        else:
                            self.assertIs(got[name], vars(want)[name], name)
                    self.assertEqual(made.replayable, want.replayable)
