"""h2load (Debian package nghttp2-client) as bench/gateway.py's HTTP/2 client (``--h2``).

Browsers speak HTTP/2 on TLS listeners; h2load is a C load generator that
does the same (ALPN ``h2`` only here: a path that does not negotiate h2 fails
the run instead of quietly measuring HTTP/1.1).  This module holds the parts
that do not need a testbed, so they are tested alone
(tests/bench/test_gateway_h2load.py):

* :func:`parse_h2load` -- the summary h2load prints (requests, failures,
  status classes, the negotiated TLS version and application protocol);
* :func:`log_latency` -- p50/p99 of the request times in h2load's
  ``--log-file`` (its summary has min/max/mean/sd only);
* :func:`h2_headers` -- a browser's HTTP/1.1 head lines as HTTP/2 fields
  (lowercase names, connection-specific fields left out, RFC 9113 8.2);
* :class:`H2Load` -- one run in a namespace, parsed into the same keys as
  bench/gateway.py's wrk results (``requests``, ``rps``, ``p50_us``, ...);
* :data:`PROXY_H2` -- the nginx baseline's HTTP/2 server block.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Iterable

#: streams in flight per connection (h2load -m) in the throughput runs
STREAMS = 10

#: HTTP/1.1 fields that are connection-specific (never sent in HTTP/2) or
#: carried by a pseudo-header (Host -> :authority)
_H1_ONLY = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                      "upgrade", "host"})

#: nginx terminating TLS with HTTP/2 on its own port (nginx 1.22: ``listen ...
#: http2``), as reverse proxy to the same ``up`` (keepalive upstream) with the
#: same one stamped header as the HTTPS baseline of PROXY_HTTP; TLS 1.2 and 1.3
#: offered (nginx 1.22's default is 1.2 at most) and the server's cipher order
#: (OpenSSL's default, as the gateway's OP_CIPHER_SERVER_PREFERENCE) so that
#: h2load negotiates the version and cipher it negotiates with the gateway
PROXY_H2 = textwrap.dedent('''
      server {{
        listen 100.64.0.2:8443 ssl http2;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers on;
        ssl_certificate {dir}/proxy.crt;
        ssl_certificate_key {dir}/proxy.key;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{
          proxy_pass http://up;
          proxy_http_version 1.1;
          proxy_set_header Connection "";
          proxy_set_header X-NetBird-User "alice";
        }}
      }}
''')
#: the nginx baseline's HTTP/2 URL (seen from the load generator's namespace)
NGINX_H2_URL = "https://100.64.0.2:8443/"

_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000}


def h2_headers(lines: Iterable[str]) -> list[str]:
    """``Name: value`` head lines as h2load ``-H`` arguments: names lowercased,
    fields HTTP/2 does not carry left out."""
    out = []
    for line in lines:
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or name in _H1_ONLY:
            continue
        out.append(f"{name}: {value.strip()}")
    return out


def _count(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    if m is None:
        raise ValueError(f"h2load output has no {pattern!r}")
    return int(m.group(1))


def parse_h2load(text: str) -> dict:
    """The summary h2load prints, as a result dict.

    ``requests`` counts the succeeded ones (a response received), ``errors``
    sums failed, errored and timed-out requests and non-2xx responses; the
    streams still in flight when a ``-D`` run stops (``started`` - ``done``)
    are neither.  Raises ValueError when a line is missing."""
    m = re.search(r"^finished in ([\d.]+)(us|ms|s),", text, re.M)
    if m is None:
        raise ValueError("h2load output has no 'finished in' line")
    duration_us = float(m.group(1)) * _UNITS_US[m.group(2)]
    req = re.search(r"^requests: .*$", text, re.M)
    if req is None:
        raise ValueError("h2load output has no 'requests:' line")
    line = req.group(0)
    r: dict = {k: _count(rf"(\d+) {k}\b", line)
               for k in ("total", "started", "done", "succeeded", "failed", "errored",
                         "timeout")}
    st = re.search(r"^status codes: .*$", text, re.M)
    if st is None:
        raise ValueError("h2load output has no 'status codes:' line")
    r["non2xx"] = sum(_count(rf"(\d+) {k}xx", st.group(0)) for k in "345")
    proto = re.search(r"^Application protocol: (\S+)", text, re.M)
    tls = re.search(r"^TLS Protocol: (\S+)", text, re.M)
    cipher = re.search(r"^Cipher: (\S+)", text, re.M)
    r["protocol"] = proto.group(1) if proto else None
    r["tls"] = " ".join(x.group(1) for x in (tls, cipher) if x) or None
    r["requests"] = r["succeeded"]
    r["duration_us"] = round(duration_us)
    r["rps"] = r["requests"] / (duration_us / 1e6) if duration_us else 0.0
    r["errors"] = r["failed"] + r["errored"] + r["timeout"] + r["non2xx"]
    return r


def percentile(sorted_xs: list[int], q: float) -> int:
    """Nearest-rank percentile ``q`` (0 < q <= 1) of an ascending list (0 if empty)."""
    if not sorted_xs:
        return 0
    return sorted_xs[max(0, math.ceil(q * len(sorted_xs)) - 1)]


def log_latency(text: str) -> dict:
    """p50/p99 request time (us) of the responses in an h2load ``--log-file``
    (tab-separated: start time, status, microseconds until the end of the
    response; status -1 for a failed stream, left out) and their count."""
    times = []
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and int(cols[1]) >= 0:
            times.append(int(cols[2]))
    times.sort()
    return {"p50_us": percentile(times, 0.50), "p99_us": percentile(times, 0.99),
            "logged": len(times)}


class H2Load:
    """One h2load run (one thread, ALPN h2 only) in a namespace, parsed.

    ``headers`` are the extra head lines every request carries (--browser's,
    converted by :func:`h2_headers`); fails with RuntimeError when h2load
    fails or the connection did not negotiate h2."""

    def __init__(self, tmpdir: str, seconds: float, headers: Iterable[str] = ()) -> None:
        self.tmpdir = tmpdir
        self.seconds = seconds
        self.headers = h2_headers(headers)
        self.runs = 0

    def argv(self, url: str, conns: int, streams: int, log: str) -> list[str]:
        args = ["h2load", "--npn-list=h2", "-t1", f"-c{conns}", f"-m{streams}",
                f"-D{max(1, round(self.seconds * 1000))}ms", f"--log-file={log}"]
        for h in self.headers:
            args += ["-H", h]
        return [*args, url]

    def __call__(self, ns, url: str, conns: int, streams: int) -> dict:
        self.runs += 1
        log = os.path.join(self.tmpdir, f"h2load-{self.runs}.tsv")
        res = ns.run(self.argv(url, conns, streams, log), check=False,
                     timeout=self.seconds + 60)
        if res.returncode != 0:
            raise RuntimeError(f"h2load failed: {(res.stdout + res.stderr)[-2000:]}")
        try:
            r = parse_h2load(res.stdout)
        except ValueError as e:
            raise RuntimeError(f"h2load: {e}: {res.stdout[-2000:]}") from e
        if r["protocol"] != "h2":
            raise RuntimeError(f"h2load to {url} negotiated {r['protocol']!r}, not h2")
        with open(log) as f:
            r.update(log_latency(f.read()))
        os.unlink(log)
        r["streams"] = streams
        return r
