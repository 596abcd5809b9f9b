"""JSON-lines / text observers, level filtering and mapping redaction."""

from __future__ import annotations

import io
import json

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.observe.logging import (
    JSONLinesObserver,
    LevelFilter,
    log_level,
    make_observer,
)
from nbgateway.routes.redaction import REDACTED, LazyRedacted


def secret_mapping() -> pb.ProxyMapping:
    return pb.ProxyMapping(
        type=pb.UPDATE_TYPE_CREATED,
        id="svc-1",
        account_id="acc-1",
        domain="app.example.com",
        auth_token="super-secret-token",
        auth=pb.Authentication(
            session_key="public-session-key",
            pin=True,
            header_auths=[pb.HeaderAuth(header="X-Api-Key", hashed_value="$argon2id$secret"),
                          pb.HeaderAuth(header="X-Empty", hashed_value="")],
        ),
        path=[pb.PathMapping(path="/", target="http://10.0.0.5:8080",
                             options=pb.PathTargetOptions(
                                 custom_headers={"Authorization": "Bearer upstream-secret",
                                                 "X-Empty": ""}))],
        private=True,
    )


def capture(fmt: str, level: str = "info"):
    out = io.StringIO()
    pub = LogPublisher(make_observer(fmt, level, out))
    return Logger(namespace="nbgateway.test", observer=pub), out


def test_debug_json_log_of_a_mapping_redacts_acceptance_66():
    log, out = capture("json", "debug")
    log.debug("applying mapping {mapping}", mapping=LazyRedacted(secret_mapping()))
    log.info("raw object logged by mistake {m}", m=secret_mapping())
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert json.loads(line)["msg"]
        assert "super-secret-token" not in line and "upstream-secret" not in line
        assert "$argon2id$secret" not in line
    first = json.loads(lines[0])
    assert first["level"] == "debug" and first["namespace"] == "nbgateway.test"
    assert first["mapping"]["auth_token"] == REDACTED
    assert first["mapping"]["auth"]["session_key"] == "public-session-key"
    assert "X-Api-Key" in lines[0] and "Authorization" in lines[0]
    assert json.loads(lines[1])["m"]["auth_token"] == REDACTED


def test_mapping_not_rendered_when_filtered_out():
    rendered = []

    class Spy(LazyRedacted):
        def __str__(self):
            rendered.append(1)
            return super().__str__()

    log, out = capture("json", "info")
    log.debug("mapping {mapping}", mapping=Spy(secret_mapping()))
    assert out.getvalue() == "" and rendered == []


def test_json_lines_fields_and_no_record_separator():
    log, out = capture("json")
    log.info("peer {peer} connected from {addr}", peer="abc", addr=("192.0.2.1", 51820),
             count=3, raw=b"\x00bytes", groups={"g1"})
    line = out.getvalue()
    assert line.endswith("\n") and not line.startswith("\x1e") and line.count("\n") == 1
    record = json.loads(line)
    assert record["msg"] == "peer abc connected from ('192.0.2.1', 51820)"
    assert record["level"] == "info" and record["time"].endswith("Z")
    assert record["peer"] == "abc" and record["count"] == 3
    assert record["addr"] == ["192.0.2.1", 51820] and record["groups"] == ["g1"]
    assert record["raw"] == "\x00bytes"
    assert not any(k.startswith("log_") for k in record)


def test_json_failure_and_unserializable_values():
    log, out = capture("json")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("it broke", Failure())
    circular: list = []
    circular.append(circular)
    log.warn("odd {thing}", thing=object(), loop=circular)
    first, second = (json.loads(x) for x in out.getvalue().splitlines())
    assert first["level"] == "critical" and "ZeroDivisionError" in first["error"]
    assert second["level"] == "warn" and second["msg"].startswith("odd <object")


def test_text_observer_redacts_raw_mapping():
    log, out = capture("text", "debug")
    log.debug("mapping {m}", m=secret_mapping())
    text = out.getvalue()
    assert REDACTED in text and "super-secret-token" not in text
    assert "upstream-secret" not in text and "public-session-key" in text


def test_level_filter():
    log, out = capture("text", "warn")
    log.info("quiet")
    log.warn("loud")
    log.error("louder")
    text = out.getvalue()
    assert "quiet" not in text and "loud" in text and "louder" in text
    f = LevelFilter("error")
    assert f({"log_level": LogLevel.warn}).name == "no"
    f.set("debug")
    assert f({"log_level": LogLevel.debug}).name == "maybe"


@pytest.mark.parametrize(("name", "level"), [
    ("panic", LogLevel.critical), ("fatal", LogLevel.critical), ("error", LogLevel.error),
    ("warn", LogLevel.warn), ("warning", LogLevel.warn), ("info", LogLevel.info),
    ("debug", LogLevel.debug), ("TRACE", LogLevel.debug)])
def test_upstream_level_names(name, level):
    assert log_level(name) is level


def test_unknown_level_and_format():
    with pytest.raises(ValueError):
        log_level("loud")
    with pytest.raises(ValueError):
        make_observer("xml")


def test_config_levels_all_known():
    from nbgateway.config import LOG_LEVELS

    for name in LOG_LEVELS:
        log_level(name)


def test_observer_writes_one_line_per_event():
    out = io.StringIO()
    obs = JSONLinesObserver(out)
    obs({"log_level": LogLevel.info, "log_format": "a\nb", "log_time": 0.5,
         "log_namespace": "x"})
    assert out.getvalue().count("\n") == 1
    assert json.loads(out.getvalue())["time"] == "1970-01-01T00:00:00.500Z"


def test_twistd_logger_factories_follow_process_level(capsys):
    from nbgateway.observe import logging as obslog

    previous = obslog.PROCESS_LEVEL.level
    try:
        obslog.PROCESS_LEVEL.set("warn")
        pub = LogPublisher(obslog.jsonObserverFactory())
        log = Logger(namespace="t", observer=pub)
        log.info("hidden")
        log.warn("shown {m}", m=secret_mapping())
        text_pub = LogPublisher(obslog.textObserverFactory())
        Logger(namespace="t", observer=text_pub).error("text {m}", m=secret_mapping())
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 2
        record = json.loads(out[0])
        assert record["level"] == "warn" and record["m"]["auth_token"] == REDACTED
        assert "super-secret-token" not in out[1] and REDACTED in out[1]
    finally:
        obslog.PROCESS_LEVEL.set(previous)
