"""Argument parsing conventions of ``nbgateway-admin``.

* A usage error is one line (``nbgateway-admin peers create: the following
  arguments are required: NAME; see 'nbgateway-admin peers create --help'``)
  and exit status 2, never the whole help text.
* Every command has a one-line summary, a description and examples (plain
  text, printed as written).
* ``--json``, ``--url`` and ``--token`` are accepted before or after the
  command.
* Old spellings stay accepted as hidden aliases (not listed in ``--help``).
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from nbgateway.management.cli._client import DEFAULT_TOKEN_FILE, DEFAULT_URL, UsageError


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a one-line :class:`UsageError`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}; see '{self.prog} --help'")


def connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """``--url``/``--token``/``--json``; on commands their default is
    SUPPRESS so a value given before the command is not overwritten."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--url", default=default,
                        help=f"management REST URL (env NB_ADMIN_URL; default {DEFAULT_URL})")
    parser.add_argument("--token", default=default,
                        help="personal access token (env NB_ADMIN_TOKEN; default: the "
                             f"contents of ./{DEFAULT_TOKEN_FILE})")
    parser.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="print JSON (the API's objects) instead of a table")


def common_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    connection_options(parent, suppress=True)
    return parent


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class Commands:
    """Adds documented subcommands to ``parser``; hidden aliases included."""

    def __init__(self, parser: argparse.ArgumentParser, dest: str, common: Any,
                 title: str = "commands", metavar: str = "COMMAND"):
        self.prog = parser.prog
        self.common = common
        self.action = parser.add_subparsers(dest=dest, title=title, metavar=metavar,
                                            parser_class=Parser, required=True)

    def add(self, name: str, summary: str, *, description: str = "",
            example: Sequence[str] = (), aliases: Sequence[str] = (),
            func: Callable[..., Any] | None = None, offline: bool = False,
            leaf: bool = True) -> Parser:
        parser = self.action.add_parser(
            name, help=summary, description=description or textwrap.fill(
                summary[:1].upper() + summary[1:] + ".", 79),
            epilog=examples(*example) if example else None,
            parents=[self.common] if leaf and not offline else [])
        for alias in aliases:  # accepted, not listed (argparse would show "name (alias)")
            self.action._name_parser_map[alias] = parser
        if func is not None:
            parser.set_defaults(func=func, offline=offline)
        return parser

    def group(self, name: str, summary: str, *, description: str = "",
              example: Sequence[str] = (), aliases: Sequence[str] = ()) -> Commands:
        parser = self.add(name, summary, description=description, example=example,
                          aliases=aliases, leaf=False)
        return Commands(parser, "action", self.common, title="actions", metavar="ACTION")
