"""``nbgateway-admin``: administer a management service through its REST API.

The console entry point is :func:`main` (``nbgateway-admin =
nbgateway.management.cli:main``).  The package is split by concern:

* ``_client``: the REST client (standard library ``urllib``), the token
  lookup and the error types (one line each; exit 2 for usage, 1 otherwise);
* ``_parsing``: argparse conventions (one-line usage errors, examples in
  every command's help, ``--json``/``--url``/``--token`` anywhere, hidden
  aliases for old spellings);
* ``_output``: tables, JSON, colours and progress (terminal only, NO_COLOR);
* ``_resources``: the resource commands in help order, one module a family:
  ``_members`` (users, groups, peers), ``_services`` (with ``_targets``, the
  ``--target`` spec, and ``_clientca``), ``_gateways`` (proxy tokens, logs,
  clusters, domains), ``_accounts``; ``_lookup`` finds the object a command
  names and builds the plain list/show/delete commands;
* ``_certificates``: ``ca``, the private CA peers trust and certificate status;
* ``_status``: ``status``, the deployment check;
* ``_completion``: bash/zsh completion scripts generated from the parser;
* ``_main``: the parser, ``env`` and :func:`main`.

``quickstart`` and ``demo-upstream`` delegate to
:mod:`nbgateway.management.quickstart` and
:mod:`nbgateway.management.demo_upstream`.
"""

from nbgateway.management.cli._client import (
    DEFAULT_DATADIR,
    DEFAULT_TOKEN_FILE,
    DEFAULT_URL,
    TIMEOUT,
    Client,
    CliError,
    UnreachableError,
    UsageError,
    _q,
)
from nbgateway.management.cli._main import build_parser, env_reference, main
from nbgateway.management.cli._output import table
from nbgateway.management.cli._resources import parse_target, resolve

__all__ = [
    "DEFAULT_DATADIR",
    "DEFAULT_TOKEN_FILE",
    "DEFAULT_URL",
    "TIMEOUT",
    "CliError",
    "Client",
    "UnreachableError",
    "UsageError",
    "_q",
    "build_parser",
    "env_reference",
    "main",
    "parse_target",
    "resolve",
    "table",
]
