"""bench/gateway.py --strace: the ``strace -c`` table parser (the per-request
syscall counts it prints come from this)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from bench.gateway import parse_strace_summary

#: as strace 6.x writes it: an errors column that is blank for most rows,
#: and the total row
TABLE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 61.20    0.412345          15     26381           recvfrom
 30.02    0.202277           7     13937           sendto
  4.11    0.027690          12      2150           epoll_wait
  2.90    0.019540          11      1540       301 futex
  0.10    0.000700           0      1135           ioctl
------ ----------- ----------- --------- --------- ----------------
100.00    0.673808          16     45143       301 total
"""


def test_rows_with_and_without_errors_column_total_left_out():
    assert parse_strace_summary(TABLE) == {
        "recvfrom": 26381, "sendto": 13937, "epoll_wait": 2150, "futex": 1540, "ioctl": 1135}


def test_nothing_but_headers_is_empty():
    assert parse_strace_summary(TABLE.splitlines(True)[0] + TABLE.splitlines(True)[1]) == {}


@pytest.mark.skipif(shutil.which("strace") is None,
                    reason="strace is not installed (.ci/run installs it)")
def test_a_real_strace_table(tmp_path):
    out = tmp_path / "st.txt"
    subprocess.run(["strace", "-c", "-o", str(out), sys.executable, "-c",
                    "import os; [os.getpid() for _ in range(3)]; os.write(1, b'')"],
                   check=True, capture_output=True)
    calls = parse_strace_summary(out.read_text())
    assert calls.get("write", 0) >= 1 and all(n > 0 for n in calls.values())
    assert "total" not in calls
