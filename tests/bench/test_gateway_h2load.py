"""bench/gateway.py --h2: h2load's summary and per-request log parsed
(bench/_h2load.py), the browser head as HTTP/2 fields, the argv, and the
HTTP/2 rows' ratios and report lines."""

from __future__ import annotations

import pytest

import bench.gateway as gw
from bench import _h2load as h2

#: as h2load 1.52 prints it for a -D run (the streams in flight at the end:
#: started - done)
SUMMARY = """\
starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 2s...
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 2.00s, 5000.00 req/s, 3.11MB/s
requests: 10000 total, 10160 started, 10000 done, 9990 succeeded, 4 failed, 3 errored, 2 timeout
status codes: 9990 2xx, 1 3xx, 2 4xx, 3 5xx
traffic: 4.11MB (4311556) total, 2.74MB (2874240) headers (space savings 51.02%), 350.86KB
                     min         max         mean         sd        +/- sd
time for request:       20us     16.53ms       557us      1.23ms    96.20%
"""


def test_summary_counts_errors_and_succeeded():
    r = h2.parse_h2load(SUMMARY)
    assert r["requests"] == 9990 and r["started"] == 10160 and r["done"] == 10000
    assert (r["failed"], r["errored"], r["timeout"], r["non2xx"]) == (4, 3, 2, 6)
    # in-flight streams at the end are not errors; failures and non-2xx are
    assert r["errors"] == 4 + 3 + 2 + 6
    assert r["duration_us"] == 2_000_000 and r["rps"] == pytest.approx(4995.0)
    assert r["protocol"] == "h2" and r["tls"] == "TLSv1.3 TLS_AES_128_GCM_SHA256"


def test_clean_run_has_zero_errors_and_ms_duration():
    text = (SUMMARY.replace("2.00s,", "850.50ms,")
            .replace("4 failed, 3 errored, 2 timeout", "0 failed, 0 errored, 0 timeout")
            .replace("1 3xx, 2 4xx, 3 5xx", "0 3xx, 0 4xx, 0 5xx"))
    r = h2.parse_h2load(text)
    assert r["errors"] == 0 and r["duration_us"] == 850_500
    assert r["rps"] == pytest.approx(9990 / 0.8505)


def test_no_protocol_negotiated_is_none():
    r = h2.parse_h2load(SUMMARY.replace("Application protocol: h2\n", ""))
    assert r["protocol"] is None


@pytest.mark.parametrize("line", ["finished in", "requests:", "status codes:"])
def test_a_missing_summary_line_fails(line):
    text = "\n".join(x for x in SUMMARY.splitlines() if not x.startswith(line))
    with pytest.raises(ValueError):
        h2.parse_h2load(text)


def test_log_latency_percentiles_leave_failed_streams_out():
    rows = [f"1796680252305799\t200\t{us}" for us in range(1, 101)]
    rows.append("1796680252305800\t-1\t999999")  # a failed stream
    r = h2.log_latency("\n".join(rows) + "\n")
    assert r == {"p50_us": 50, "p99_us": 99, "logged": 100}


def test_log_latency_empty():
    assert h2.log_latency("") == {"p50_us": 0, "p99_us": 0, "logged": 0}


def test_percentile_nearest_rank():
    assert h2.percentile([7], 0.5) == 7 and h2.percentile([7], 0.99) == 7
    assert h2.percentile([1, 2, 3, 4], 0.5) == 2 and h2.percentile([1, 2, 3, 4], 0.99) == 4


def test_browser_head_as_http2_fields():
    fields = h2.h2_headers([*gw.BROWSER_HEADERS, "Connection: keep-alive", "Host: x.example",
                            "Upgrade: h2c", "no colon"])
    assert len(fields) == len(gw.BROWSER_HEADERS)
    assert all(f.split(":", 1)[0] == f.split(":", 1)[0].lower() for f in fields)
    assert "upgrade-insecure-requests: 1" in fields
    assert "sec-fetch-mode: navigate" in fields
    assert not any(f.startswith(("connection:", "host:", "upgrade:")) for f in fields)


def test_argv_h2_only_duration_and_headers():
    tool = h2.H2Load("/tmp", 2.5, ["Sec-Fetch-Mode: navigate"])
    argv = tool.argv("https://app.example/", 16, 10, "/tmp/x.tsv")
    assert argv[0] == "h2load" and argv[-1] == "https://app.example/"
    assert "--npn-list=h2" in argv and "-c16" in argv and "-m10" in argv
    assert "-D2500ms" in argv and "--log-file=/tmp/x.tsv" in argv
    assert argv[argv.index("-H") + 1] == "sec-fetch-mode: navigate"


def _row(rps: float, p50_us: int, cpu: float) -> dict:
    return {"rps": rps, "p50_us": p50_us, "p99_us": 2 * p50_us, "errors": 0,
            "requests": int(rps), "cpu_ms_per_req": cpu, "sys_ms_per_req": cpu / 2,
            "tls": "TLSv1.3 TLS_AES_128_GCM_SHA256"}


def _out(h2_rows: bool) -> dict:
    rnd = {f"{p}_{c}": _row(1000.0, 500, 0.1)
           for p in ("upstream", "nginx", "gateway", "nginx_tls", "gateway_tls")
           for c in ("c16", "c1")}
    rnd["nginx_tls_hs"] = rnd["gateway_tls_hs"] = _row(100.0, 5000, 1.0)
    if h2_rows:
        rnd["nginx_h2_c16"] = _row(4000.0, 900, 0.05)
        rnd["gateway_h2_c16"] = _row(1000.0, 3000, 0.2)
        rnd["nginx_h2_c1"] = _row(500.0, 400, 0.1)
        rnd["gateway_h2_c1"] = _row(250.0, 1400, 0.1)
    log = [{"wrk_completed": 10, "upstream_requests": 10, "access_log_entries": 10, "ok": True}]
    if h2_rows:
        log.append({**log[0], "client": "h2load"})
    return {"rounds": [rnd], "access_log": log}


def test_h2_ratios():
    r = gw.summarize(_out(True), 16)["ratios"]
    assert r["HTTP/2 gateway/nginx req/s"] == pytest.approx(0.25)
    assert r["HTTP/2 gateway added p50 at 1 connection (ms)"] == pytest.approx(1.0)
    assert r["HTTP/2 CPU per request gateway/nginx worker"] == pytest.approx(4.0)
    assert r["gateway req/s HTTP/2 / HTTPS (HTTP/1.1)"] == pytest.approx(1.0)


def test_without_h2_no_h2_ratios_or_lines(capsys):
    assert not any("HTTP/2" in k for k in gw.summarize(_out(False), 16)["ratios"])
    assert gw.report(_out(False), 2, 16)
    text = capsys.readouterr().out
    assert "HTTP/2" not in text and "h2load" not in text and "16x10" not in text


def test_report_h2_rows(capsys):
    assert gw.report(_out(True), 2, 16)
    lines = capsys.readouterr().out.splitlines()
    assert any(x.startswith("HTTP/2 rows (--h2): h2load -t1, ALPN h2, 16 connections x 10")
               and "gateway TLSv1.3" in x and "nginx TLSv1.3" in x for x in lines)
    row = next(x for x in lines if gw.LABELS["gateway_h2"] in x and "16x10" in x)
    assert row[2 + 42:].split()[:2] == ["16x10", "1000"]
    assert any("h2load completed 10: ok" in x for x in lines)
    assert any("wrk completed 10: ok" in x for x in lines)
    assert lines[-1].endswith("yes")


def test_report_h2_errors_fail_the_run(capsys):
    out = _out(True)
    out["rounds"][0]["gateway_h2_c16"]["errors"] = 1
    assert not gw.report(out, 2, 16)
    assert capsys.readouterr().out.splitlines()[-1].endswith("NO")
