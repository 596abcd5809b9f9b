"""The ``nbgateway-admin`` parser and entry point.

:func:`build_parser` assembles the commands of the sibling modules;
:func:`main` parses, finds the token (``--token``, ``NB_ADMIN_TOKEN``, the
token file), runs the command and turns every error into one line on stderr
with exit status 2 (usage) or 1 (failure).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from nbgateway.management.cli import _certificates, _completion, _resources, _status
from nbgateway.management.cli._client import (
    DEFAULT_TOKEN_FILE,
    DEFAULT_URL,
    USAGE,
    Client,
    CliError,
    UsageError,
    find_token,
)
from nbgateway.management.cli._parsing import (
    Commands,
    Parser,
    common_parent,
    connection_options,
    examples,
)

DESCRIPTION = f"""\
Administer nbgateway through the management REST API: users, groups, peers,
services, tokens, accounts; check the deployment with 'status'.

Connection: --url (env NB_ADMIN_URL, default {DEFAULT_URL})
and --token (env NB_ADMIN_TOKEN, else the file ./{DEFAULT_TOKEN_FILE}
that the gateway writes on first start). Output is a table, or JSON with
--json. Run any command with --help for its options and examples; 'env'
lists every environment variable."""

EXAMPLES = (
    "nbgateway-admin status",
    "nbgateway-admin quickstart                   # a private demo service in one command",
    "nbgateway-admin groups create admins",
    "nbgateway-admin peers create laptop --group admins",
    "nbgateway-admin peers config laptop > wg0.conf",
    "nbgateway-admin services create --domain app.nbgateway.internal --private \\",
    "    --access-group admins --target http://127.0.0.1:8000",
    "nbgateway-admin logs list --status failed --json",
    "source <(nbgateway-admin completion bash)",
)

#: seconds between token file checks while quickstart waits for the gateway
TOKEN_POLL = 0.5


def cmd_quickstart(client: Client, args: argparse.Namespace, out: TextIO) -> Any:
    from nbgateway.management import quickstart

    return quickstart.run(client, args, out)


def cmd_demo_upstream(_client: Any, args: argparse.Namespace, out: TextIO) -> Any:
    try:
        from nbgateway.management import demo_upstream
    except ImportError:
        raise CliError("demo-upstream is not available in this installation") from None
    return demo_upstream.run(args, out, sys.stderr)


def _add_demo_upstream(cmd: Commands) -> None:
    c = cmd.add("demo-upstream", "run a demo HTTP upstream that answers with the identity "
                "headers it received (exposes no files)", func=cmd_demo_upstream,
                offline=True, example=["nbgateway-admin demo-upstream",
                                       "nbgateway-admin quickstart"])
    try:
        from nbgateway.management import demo_upstream
    except ImportError:
        return
    add_arguments = getattr(demo_upstream, "add_arguments", None)
    if add_arguments is not None:
        add_arguments(c)


def env_reference() -> str:
    """Every environment variable nbgateway reads, from the tables the
    ``--help`` texts and README's configuration reference are built from."""
    from nbgateway.management.tap import reference_rows as management_rows
    from nbgateway.options import ReferenceRow, environment_help, reference_rows

    admin = [ReferenceRow("NB_ADMIN_URL", "--url", DEFAULT_URL, "management REST API URL"),
             ReferenceRow("NB_ADMIN_TOKEN", "--token", "",
                          f"personal access token; default: the contents of "
                          f"./{DEFAULT_TOKEN_FILE}", secret=True),
             ReferenceRow("NO_COLOR", None, "", "set (to anything) to disable colours; "
                          "colours are used only on a terminal anyway")]
    return "\n".join((
        environment_help(admin, "nbgateway-admin:"),
        environment_help([r for r in reference_rows() if not r.hidden],
                         "twistd nbgateway (flags win over the environment):"),
        environment_help(management_rows(), "twistd nbmanagement (and the gateway's embedded "
                         "management):")))


def cmd_env(_client: Any, _args: argparse.Namespace, out: TextIO) -> None:
    out.write(env_reference())


def build_parser() -> Parser:
    parser = Parser(prog="nbgateway-admin", description=DESCRIPTION,
                    epilog=examples(*EXAMPLES))
    connection_options(parser, suppress=False)
    cmd = Commands(parser, "command", common_parent())
    _status.register(cmd)
    _resources.register(cmd)
    _certificates.register(cmd)
    c = cmd.add("quickstart", "a private demo service in one command: a group, a peer in it "
                "and a service on the connected gateway; prints the wg-quick config, a QR "
                "code and the curl to try (idempotent)", func=cmd_quickstart,
                example=["nbgateway-admin quickstart",
                         "nbgateway-admin quickstart --upstream http://127.0.0.1:8000 "
                         "--name phone --no-qr"])
    from nbgateway.management import quickstart

    quickstart.add_arguments(c)
    _add_demo_upstream(cmd)
    _completion.register(cmd)
    cmd.add("env", "list every environment variable nbgateway reads, with defaults",
            func=cmd_env, offline=True, example=["nbgateway-admin env | less"])
    return parser


def _wait_for_token(path: str, wait: float) -> str | None:
    """quickstart right after starting the gateway: the embedded management
    writes its admin token a moment later."""
    deadline = time.monotonic() + wait
    while True:
        token, _ = find_token(None, path=path)
        if token or time.monotonic() >= deadline:
            return token
        time.sleep(TOKEN_POLL)


def _run(argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if args.offline:
        result = args.func(None, args, out)
        return result if isinstance(result, int) else 0
    url = args.url or os.environ.get("NB_ADMIN_URL") or DEFAULT_URL
    token, source = find_token(args.token)
    if not token and args.func is cmd_quickstart:
        path = os.path.join(args.datadir, "admin-token")
        token, source = _wait_for_token(path, args.wait), os.path.abspath(path)
    if not token:
        raise UsageError(f"no admin token: {source} does not exist or is empty; pass --token, "
                         "set NB_ADMIN_TOKEN, or run in the directory where the gateway "
                         "keeps nbgateway-data/")
    result = args.func(Client(url, token, token_source=source), args, out)
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Console entry point; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        return _run(argv, out, err)
    except CliError as exc:
        if exc.message.startswith("nbgateway-admin"):  # a parser error names the command
            err.write(f"{exc.message}\n")
        else:
            err.write(f"nbgateway-admin: error: {exc.message}\n")
        return exc.code
    except KeyboardInterrupt:
        err.write("nbgateway-admin: interrupted\n")
        return 130
    except BrokenPipeError:  # `nbgateway-admin ... | head`
        return 0


__all__ = ["USAGE", "build_parser", "env_reference", "main"]
