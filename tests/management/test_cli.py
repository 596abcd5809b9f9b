"""``nbgateway-admin`` against a live ``twistd nbmanagement`` (SQLite)."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid

import pytest

from nbgateway.management.cli import CliError, parse_target
from nbgateway.management.cli import main as cli_main

from .apiserver import REPO, free_port, running_server

CLUSTER = "eu.proxy.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory) as srv:
        yield srv


def run(server, *argv, token=None):
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["--url", server.url, "--token", token or server.token, *argv], out, err)
    return code, out.getvalue(), err.getvalue()


def ok(server, *argv):
    code, out, err = run(server, *argv)
    assert code == 0, err
    return out


def ok_as(server, token, *argv):
    code, out, err = run(server, *argv, token=token)
    assert code == 0, err
    return out


def cli_service(server, prefix: str) -> dict:
    """Through the CLI: a new zone ``<prefix>-<6 hex>.test`` on ``CLUSTER`` and a service
    at ``app.<zone>`` with one cluster target, 10.0.0.5:8080; the service's JSON."""
    zone = f"{prefix}-{uuid.uuid4().hex[:6]}.test"
    ok(server, "domains", "create", zone, CLUSTER)
    return json.loads(ok(server, "--json", "services", "create", "--domain", f"app.{zone}",
                         "--target", f"type=cluster,id={CLUSTER},host=10.0.0.5,port=8080"))


def test_parse_target():
    assert parse_target("type=cluster,id=c.example,host=10.0.0.5,port=8080,direct") == {
        "target_type": "cluster", "target_id": "c.example", "host": "10.0.0.5", "port": 8080,
        "protocol": "http", "enabled": True, "options": {"direct_upstream": True}}
    assert parse_target("id=p1,protocol=https")["port"] == 443
    for bad in ("port=abc", "colour=red", "type"):
        with pytest.raises(CliError):
            parse_target(bad)


def test_end_to_end_workflow(server, tmp_path):
    tag = uuid.uuid4().hex[:6]
    ok(server, "domains", "create", "apps.test", CLUSTER)
    out = ok(server, "groups", "create", f"admins-{tag}")
    assert f"admins-{tag}" in out
    # a proxy peer (gateway) and a laptop in the group
    gw = json.loads(ok(server, "--json", "peers", "create", f"gw-{tag}", "--endpoint",
                       "127.0.0.1:51820", "--proxy-cluster", CLUSTER))
    assert gw["proxy_embedded"] is True and gw["proxy_cluster"] == CLUSTER
    out = ok(server, "peers", "create", f"laptop-{tag}", "--group", f"admins-{tag}")
    # the generated private key is not printed: only `peers config` hands it out
    assert f"nbgateway-admin peers config laptop-{tag} > wg0.conf" in out
    created = json.loads(ok(server, "--json", "peers", "create", f"spare-{tag}"))
    assert "private_key" not in created
    ok(server, "peers", "delete", f"spare-{tag}")
    peers = json.loads(ok(server, "--json", "peers", "list"))
    laptop = next(p for p in peers if p["name"] == f"laptop-{tag}")
    assert [g["name"] for g in laptop["groups"] if g["name"] != "All"] == [f"admins-{tag}"]
    # services
    out = ok(server, "services", "create", "--name", f"app-{tag}", "--domain",
             f"app-{tag}.apps.test", "--private", "--access-group", f"admins-{tag}",
             "--target", f"type=cluster,id={CLUSTER},host=backend.lan,port=8080,direct")
    assert f"app-{tag}.apps.test" in out
    # the laptop's group may reach the service: its config lists the gateway
    conf = ok(server, "peer", "config", f"laptop-{tag}")
    assert conf.startswith("[Interface]\nPrivateKey = ")
    assert f"Address = {laptop['ip']}/32" in conf
    assert f"[Peer]\nPublicKey = {gw['public_key']}\nEndpoint = 127.0.0.1:51820\n" in conf
    qr = tmp_path / "wg0.png"
    qr.write_bytes(b"old")
    qr.chmod(0o666)  # left readable by others: the QR code holds the private key
    ok(server, "peer", "config", f"laptop-{tag}", "--qr", str(qr))
    assert qr.read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE(qr.stat().st_mode) & 0o077 == 0
    svc = json.loads(ok(server, "--json", "services", "get", f"app-{tag}.apps.test"))
    assert svc["private"] is True and svc["proxy_cluster"] == CLUSTER
    group_id = json.loads(ok(server, "--json", "groups", "list"))
    gid = next(g["id"] for g in group_id if g["name"] == f"admins-{tag}")
    assert svc["access_groups"] == [gid]
    table = ok(server, "services", "list")
    assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "DOMAIN"]
    assert f"app-{tag}.apps.test" in table
    # the group is in use: refused with the API's message
    code, _, err = run(server, "groups", "delete", f"admins-{tag}")
    assert code == 1 and "linked to reverse proxy service" in err and "(HTTP 400)" in err
    ok(server, "services", "delete", f"app-{tag}.apps.test")
    assert f"app-{tag}.apps.test" not in ok(server, "services", "list")
    ok(server, "groups", "delete", f"admins-{tag}")
    ok(server, "peers", "delete", f"laptop-{tag}")


def test_private_service_without_group_fails_cleanly(server):
    code, _, err = run(server, "services", "create", "--name", "x", "--domain", "x.apps.test",
                       "--private", "--target", f"type=cluster,id={CLUSTER},host=h,port=1,direct")
    assert code == 1
    assert "private services require at least one access group (HTTP 422)" in err


def test_tokens_users_logs_clusters(server):
    tag = uuid.uuid4().hex[:6]
    out = ok(server, "tokens", "create", f"t-{tag}")
    plain = out.split("token (shown once): ")[1].strip()
    assert plain.startswith("nbx_") and len(plain) == 40
    assert f"t-{tag}" in ok(server, "tokens", "list")
    assert "revoked token" in ok(server, "tokens", "revoke", f"t-{tag}")
    listed = json.loads(ok(server, "--json", "proxy-tokens", "list"))
    assert next(t for t in listed if t["name"] == f"t-{tag}")["revoked"] is True

    ok(server, "groups", "create", f"ops-{tag}")
    out = ok(server, "users", "create", "--email", f"{tag}@example.com", "--name", "Eve",
             "--auto-group", f"ops-{tag}")
    assert f"{tag}@example.com" in out
    out = ok(server, "users", "token", f"{tag}@example.com", "--name", "ci", "--days", "7")
    pat = out.split("token (shown once): ")[1].strip()
    assert pat.startswith("nbp_")
    assert f"{tag}@example.com" in ok_as(server, pat, "users", "list")
    assert "blocked" in ok(server, "users", "block", f"{tag}@example.com")
    assert "active" in ok(server, "users", "unblock", f"{tag}@example.com")
    ok(server, "users", "delete", f"{tag}@example.com")
    assert f"{tag}@example.com" not in ok(server, "users", "list")

    logs = json.loads(ok(server, "--json", "logs", "--page-size", "5", "--status", "failed"))
    assert logs["page_size"] == 5 and "total_records" in logs
    assert ok(server, "access-logs").splitlines()[0].startswith("TIMESTAMP")
    assert ok(server, "clusters").splitlines()[0].startswith("ADDRESS")
    code, _, err = run(server, "logs", "--page", "0")
    assert code == 1 and "(HTTP 422)" in err


def test_auth_and_connection_errors(server):
    code, _, err = run(server, "groups", "list", token="nbp_bogus")
    assert code == 1 and "(HTTP 401)" in err
    out, errs = io.StringIO(), io.StringIO()
    code = cli_main(["--url", f"http://127.0.0.1:{free_port()}", "--token", "x", "groups",
                     "list"], out, errs)
    assert code == 1 and "cannot reach management at" in errs.getvalue()
    assert errs.getvalue().count("\n") == 1
    code, _, err = run(server, "peers", "config", "no-such-peer")
    assert code == 1 and "not found" in err


def test_console_entry_reads_env_and_default_token_file(server, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, NB_ADMIN_URL=server.url)
    env.pop("NB_ADMIN_TOKEN", None)
    cmd = [sys.executable, "-m", "nbgateway.management.cli", "groups", "list"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no admin token" in res.stderr
    assert str(tmp_path / "nbgateway-data" / "admin-token") in res.stderr
    (tmp_path / "nbgateway-data").mkdir()
    shutil.copy(os.path.join(server.datadir, "admin-token"), tmp_path / "nbgateway-data")
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ID")
    res = subprocess.run(cmd, cwd=tmp_path, env=dict(env, NB_ADMIN_TOKEN=server.token),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "All" in res.stdout


def test_accounts_create_list_show_delete(server):
    tag = uuid.uuid4().hex[:6]
    out = ok(server, "accounts", "create", f"acme-{tag}", "--admin-email", f"ops@{tag}.test")
    assert f"acme-{tag}" in out and "ADMIN_USER_ID" in out.splitlines()[0]
    token = out.split("first admin's token (shown once): ")[1].split()[0]
    assert token.startswith("nbp_")
    # the new admin works in the new account, and sees only that account
    assert ok_as(server, token, "groups", "list").startswith("ID")
    own = json.loads(ok_as(server, token, "--json", "accounts", "list"))
    assert [a["name"] for a in own] == [f"acme-{tag}"]
    code, _, err = run(server, "accounts", "create", "other", token=token)
    assert code == 1 and "(HTTP 403)" in err and err.count("\n") == 1
    # the instance admin sees it among all accounts
    listed = json.loads(ok(server, "--json", "accounts", "list"))
    account = next(a for a in listed if a["name"] == f"acme-{tag}")
    shown = json.loads(ok(server, "accounts", "show", f"acme-{tag}", "--json"))
    assert shown["id"] == account["id"]
    created = json.loads(ok(server, "--json", "accounts", "create", f"json-{tag}"))
    assert created["token"].startswith("nbp_") and created["admin_user_id"]
    gone = json.loads(ok(server, "accounts", "delete", f"json-{tag}", "--json"))
    assert gone == {"deleted": "account", "id": created["id"], "name": f"json-{tag}"}
    assert "deleted account" in ok(server, "accounts", "delete", f"acme-{tag}")
    names = [a["name"] for a in json.loads(ok(server, "--json", "accounts", "list"))]
    assert f"acme-{tag}" not in names and f"json-{tag}" not in names


def test_services_create_defaults_the_cluster_from_the_domain(server):
    tag = uuid.uuid4().hex[:6]
    ok(server, "domains", "create", f"d{tag}.test", CLUSTER)
    out = ok(server, "--json", "services", "create", "--domain", f"app.d{tag}.test",
             "--target", "http://10.0.0.5:8080/api")
    svc = json.loads(out)
    assert svc["name"] == "app"
    [target] = svc["targets"]
    assert (target["target_type"], target["target_id"], target["host"], target["port"],
            target["path"]) == ("cluster", CLUSTER, "10.0.0.5", 8080, "/api")
    assert target["options"]["direct_upstream"] is True
    code, _, err = run(server, "services", "create", "--domain", "x.nowhere.test",
                       "--target", "http://10.0.0.5")
    assert code == 2 and "no gateway cluster serves 'x.nowhere.test'" in err
    assert json.loads(ok(server, "--json", "services", "delete", f"app.d{tag}.test")) == {
        "deleted": "service", "id": svc["id"], "name": f"app.d{tag}.test"}
    ok(server, "domains", "delete", f"d{tag}.test")


def test_bulk_create_and_status_errors(server):
    tag = uuid.uuid4().hex[:6]
    groups = json.loads(ok(server, "--json", "groups", "create", f"a-{tag}", f"b-{tag}"))
    assert [g["name"] for g in groups] == [f"a-{tag}", f"b-{tag}"]
    peers = json.loads(ok(server, "--json", "peers", "create", f"p1-{tag}", f"p2-{tag}",
                          f"p3-{tag}", "--group", f"a-{tag}"))
    assert [p["name"] for p in peers] == [f"p1-{tag}", f"p2-{tag}", f"p3-{tag}"]
    assert all("private_key" not in p for p in peers)
    for p in peers:
        ok(server, "peers", "delete", p["id"])
    for g in groups:
        ok(server, "groups", "delete", g["id"])
    # status with a rejected token: one line naming the token's source, not "unreachable"
    code, out, err = run(server, "status", "--no-tls-check", token="nbp_bogus")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "management rejected the token from --token" in err
