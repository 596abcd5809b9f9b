"""``nbgateway-admin`` help, usage errors, completion, ``env`` and the pure
parts of ``status`` (no server needed; the live parts are in
test_cli_status.py and test_cli.py)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from nbgateway.config import SETTINGS
from nbgateway.management.cli import UsageError, build_parser, main, parse_target
from nbgateway.management.cli._completion import bash_script, command_tree
from nbgateway.management.cli._output import Painter, Progress, use_colour
from nbgateway.management.cli._status import assess, endpoint_hint, render
from nbgateway.management.tap import SETTINGS as MANAGEMENT_SETTINGS
from nbgateway.management.tap import env_name

from .apiserver import REPO

COMMANDS = sorted(command_tree(build_parser()))
RST = re.compile(r"``|::\s*$|:(?:mod|class|func|meth|data):`", re.M)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_every_command_is_listed():
    assert {"status", "users", "groups", "peers", "services", "tokens", "logs", "clusters",
            "domains", "accounts", "quickstart", "demo-upstream", "completion", "env",
            "users list", "peers config", "services show", "accounts create",
            "groups add-peer", "tokens delete"} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: p or "(top)")
def test_help_is_plain_text_with_summary_and_examples(path):
    argv = [*path.split(), "--help"]
    code, out, err = run(*argv)
    assert code == 0 and err == ""
    assert out.startswith("usage: nbgateway-admin")
    assert not RST.search(out), out  # no reStructuredText markup
    assert max(len(line) for line in out.splitlines()) <= 88, out  # fits a terminal
    examples = out.partition("\nexamples:\n  ")[2]
    assert "nbgateway-admin" in examples, out
    # a description beyond the usage line
    assert len(out.split("\n\n")) >= 3


def test_every_subcommand_has_a_summary_in_its_parents_help():
    for path in COMMANDS:
        words = path.split()
        if not words:
            continue
        parent = run(*words[:-1], "--help")[1]
        line = next((ln for ln in parent.splitlines() if ln.strip().startswith(words[-1] + " ")
                     or ln.strip() == words[-1]), None)
        assert line is not None, (path, parent)
        # summary on the same line or the next one
        idx = parent.splitlines().index(line)
        text = line.strip()[len(words[-1]):].strip() or parent.splitlines()[idx + 1].strip()
        assert len(text) >= 8, (path, text)


def test_hidden_aliases_still_work_but_are_not_listed():
    top = run("--help")[1]
    assert "access-logs" not in top and "proxy-tokens" not in top
    services = run("services", "--help")[1]
    assert " get " not in services and "show" in services
    code, out, _ = run("services", "get", "--help")  # the old spelling parses
    assert code == 0 and "nbgateway-admin services show" in out


@pytest.mark.parametrize("argv, needle", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["peers"], "the following arguments are required: ACTION"),
    (["peers", "create"], "the following arguments are required: NAME"),
    (["services", "create", "--domain", "a.b", "--target", "colour=red"],
     "--target: bad field 'colour=red'"),
    (["services", "create", "--domain", "a.b", "--target", "type=cluster,port=80"],
     "a cluster target needs host="),
    (["services", "create", "--domain", "a.b"], "at least one --target is required"),
    (["logs", "--page", "x"], "argument --page: invalid int value: 'x'"),
    (["completion", "fish"], "invalid choice: 'fish'"),
    (["status", "--tls-addr", "nowhere"], "--tls-addr must be HOST:PORT"),
])
def test_usage_errors_are_one_line_with_status_2(argv, needle, tmp_path, monkeypatch):
    monkeypatch.setenv("NB_ADMIN_TOKEN", "t")
    monkeypatch.setenv("NB_ADMIN_URL", "http://127.0.0.1:9")  # discard: never reached
    code, out, err = run(*argv)
    assert code == 2, err
    assert err.count("\n") == 1 and needle in err, err
    assert "usage:" not in err and out == ""


def test_usage_error_names_the_command_and_the_help_to_read():
    _, _, err = run("peers", "create")
    assert err.startswith("nbgateway-admin peers create: error: ")
    assert err.rstrip().endswith("see 'nbgateway-admin peers create --help'")


def test_console_script_usage_error_exit_status(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "nbgateway.management.cli", "peers", "frob"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "invalid choice: 'frob'" in res.stderr


def test_parse_target_forms():
    assert parse_target("http://10.0.0.5:8080/app") == {
        "target_type": "cluster", "protocol": "http", "host": "10.0.0.5", "port": 8080,
        "enabled": True, "options": {"direct_upstream": True}, "path": "/app"}
    # no id: a cluster target, dialled directly; the id is filled from the domain later
    t = parse_target("host=10.0.0.5,port=8080")
    assert t["target_type"] == "cluster" and "target_id" not in t
    assert t["options"] == {"direct_upstream": True}
    assert parse_target("id=p1,protocol=https")["target_type"] == "peer"
    with pytest.raises(UsageError):
        parse_target("ftp://x")


def test_completion_bash_completes_commands_actions_and_options(tmp_path):
    bash = shutil.which("bash")
    assert bash
    script = tmp_path / "c.bash"
    code, out, _ = run("completion", "bash")
    assert code == 0
    script.write_text(out)

    def complete(*words: str) -> set[str]:
        line = " ".join(f"'{w}'" for w in ["nbgateway-admin", *words])
        prog = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
                "_nbgateway_admin; printf '%s\\n' \"${COMPREPLY[@]}\"")
        res = subprocess.run([bash, "-c", prog], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        return set(res.stdout.split())

    assert {"peers", "services", "status", "accounts"} <= complete("")
    assert complete("pe") == {"peers"}
    assert {"list", "create", "show", "delete", "config"} <= complete("peers", "")
    assert complete("peers", "c") == {"create", "config"}
    assert "--qr" in complete("peers", "config", "laptop", "--")
    # a value after --url is skipped, not taken for a command
    assert {"list", "create", "show"} <= complete("--url", "http://x", "accounts", "")
    assert "get" not in complete("services", "")  # hidden alias


def test_completion_zsh_uses_bashcompinit():
    code, out, _ = run("completion", "zsh")
    assert code == 0 and "bashcompinit" in out and "complete -o default -F" in out
    assert bash_script(build_parser()) in out


def test_env_lists_every_environment_variable():
    code, out, _ = run("env")
    assert code == 0
    for s in SETTINGS:
        if not s.hidden:
            assert s.env in out, s.env
    for flag, _, _ in MANAGEMENT_SETTINGS:
        assert env_name(flag) in out
    assert "NB_ADMIN_URL" in out and "NB_ADMIN_TOKEN" in out and "NO_COLOR" in out


def test_colour_only_on_a_terminal_and_never_with_no_color():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_colour(Tty(), {}) is True
    assert use_colour(Tty(), {"NO_COLOR": "1"}) is False
    assert use_colour(io.StringIO(), {}) is False
    assert Painter(False)("x", "red") == "x"
    assert Painter(True)("x", "red") == "\033[31mx\033[0m"
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = Progress(stream, total=2)
        p.step("created peer a")
        p.step("created peer b")
    assert tty.getvalue() == "[1/2] created peer a\n[2/2] created peer b\n"
    assert pipe.getvalue() == ""


# --- status, the pure part -------------------------------------------------------------

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _data(**over):
    data = {"management": {"url": "http://m", "reachable": True},
            "clusters": [{"address": "gw.test", "online": True, "connected_proxies": 1}],
            "proxies": [{"id": "p1", "cluster_address": "gw.test", "status": "connected",
                         "online": True, "capabilities": {"private": True},
                         "inbound_listeners": [{"tunnel_ip": "100.64.0.2", "https_port": 443,
                                                "http_port": 80}]}],
            "services": [{"domain": "a.gw.test", "enabled": True, "mode": "http",
                          "meta": {"status": "active"}}],
            "peers": [{"name": "proxy-1", "proxy_cluster": "gw.test",
                       "endpoint": "8.8.8.8:51820"}],
            "certificates": {"a.gw.test": {"subject": "a.gw.test", "issuer": "CA",
                                           "names": ["a.gw.test"], "matches": True,
                                           "not_after": "2027-01-30T00:00:00+00:00"}}}
    data.update(over)
    return data


def test_assess_healthy():
    report = assess(_data(), NOW)
    assert report["healthy"] and report["problems"] == [] and report["hints"] == []
    out = io.StringIO()
    render(report, out, Painter(False))
    text = out.getvalue()
    assert "a.gw.test  ACTIVE" in text and "valid until 2027-01-30" in text
    assert "100.64.0.2 https 443" in text and text.rstrip().endswith("status: OK")


def test_assess_problems_and_hints():
    data = _data(
        clusters=[{"address": "gw.test", "online": False}],
        proxies=[{"id": "p1", "cluster_address": "gw.test", "status": "disconnected",
                  "online": False, "capabilities": {}, "inbound_listeners": []}],
        services=[{"domain": "t.gw.test", "enabled": True, "mode": "tcp",
                   "meta": {"status": "error", "status_message": "TCP not supported"}},
                  {"domain": "a.gw.test", "enabled": True, "meta": {"status": "active"}}],
        peers=[{"name": "proxy-1", "proxy_cluster": "gw.test", "endpoint": "127.0.0.1:51820"}],
        certificates={"a.gw.test": {"subject": "x", "issuer": "CA", "names": ["x"],
                                    "matches": False,
                                    "not_after": "2026-12-10T00:00:00+00:00"}})
    report = assess(data, NOW)
    assert not report["healthy"]
    problems = "\n".join(report["problems"])
    assert "no gateway is connected" in problems
    assert "gateway p1 (gw.test) is disconnected" in problems
    assert "service t.gw.test is ERROR: TCP not supported" in problems
    assert "does not name it (names: x)" in problems
    hints = "\n".join(report["hints"])
    assert "127.0.0.1:51820 is loopback" in hints and "--wg-endpoint" in hints
    assert "expires in 4 days" in hints


def test_assess_management_down():
    report = assess({"management": {"url": "http://m", "reachable": False,
                                    "error": "cannot reach management"}})
    assert not report["healthy"]
    out = io.StringIO()
    render(report, out, Painter(False))
    assert "UNREACHABLE" in out.getvalue() and "status: DOWN" in out.getvalue()


@pytest.mark.parametrize("endpoint, kind", [
    ("127.0.0.1:51820", "loopback"), ("[::1]:51820", "loopback"), ("localhost:1", "loopback"),
    ("0.0.0.0:51820", "unspecified"), ("192.168.1.2:51820", "private"),
    ("203.0.113.7:51820", "private"),  # TEST-NET is reserved: not public either
    ("8.8.8.8:51820", ""), ("vpn.example.com:51820", "")])
def test_endpoint_hint(endpoint, kind):
    assert endpoint_hint(endpoint) == kind


def test_quickstart_waiting_shows_progress_on_a_terminal_only(monkeypatch):
    from nbgateway.management import quickstart
    from nbgateway.management.cli import UnreachableError

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(quickstart, "QUICKSTART_POLL", 0.01)
    for stream, shown in ((Tty(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        answers = iter([None, UnreachableError("cannot reach"), "ready"])

        def attempt(answers=answers):
            value = next(answers)
            if isinstance(value, Exception):
                raise value
            return value

        deadline = quickstart.time.monotonic() + 30
        assert quickstart._retrying(deadline, "a connected gateway", attempt) == "ready"
        text = stream.getvalue()
        if shown:
            assert text.startswith("waiting for a connected gateway (up to ")
            assert text.count("\n") == 1  # once per wait, not per attempt
        else:
            assert text == ""
