"""ChangeLog (resume by revision): numbering, what a revision resumes to, and the bounds."""

from __future__ import annotations

from nbgateway.management.changelog import ChangeLog


def test_revisions_count_up_from_the_base_and_since_returns_what_came_after() -> None:
    log: ChangeLog[str] = ChangeLog(base=1000)
    assert log.revision == 1000 and log.since(1000) == []  # nothing yet: empty resume
    assert log.append(["a"]) == 1001
    assert log.append(["b", "c"]) == 1002
    assert log.since(1000) == [(1001, ["a"]), (1002, ["b", "c"])]
    assert log.since(1001) == [(1002, ["b", "c"])]
    assert log.since(1002) == []


def test_foreign_revisions_cannot_resume() -> None:
    log: ChangeLog[str] = ChangeLog(base=1000)
    log.append(["a"])
    assert log.since(999) is None  # an earlier process (below this one's base)
    assert log.since(5000) is None  # a later one (beyond this log's revision)
    assert log.since(0) is None


def test_trimmed_revisions_cannot_resume_by_count_and_by_items() -> None:
    log: ChangeLog[str] = ChangeLog(size=2, base=0)
    for name in "abc":
        log.append([name])
    assert len(log) == 2
    assert log.since(0) is None  # revision 1 was dropped: changes after 0 are incomplete
    assert log.since(1) == [(2, ["b"]), (3, ["c"])]

    log = ChangeLog(items=3, base=0)
    log.append(["a", "b"])
    log.append(["c", "d"])  # 4 items > 3: the first broadcast goes
    assert log.since(0) is None and log.since(1) == [(2, ["c", "d"])]
    log.append(["e", "f", "g", "h"])  # alone above the bound: nothing is kept
    assert len(log) == 0 and log.since(2) is None and log.since(3) == []


def test_the_default_base_is_the_start_time_in_microseconds() -> None:
    import time

    before = time.time_ns() // 1000
    log: ChangeLog[str] = ChangeLog()
    assert before <= log.base <= time.time_ns() // 1000
    assert log.revision == log.base
