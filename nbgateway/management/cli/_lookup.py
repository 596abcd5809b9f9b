"""Finding and reporting the REST resources the ``nbgateway-admin`` commands act on.

Owns how a command names an object (its id, or a unique name / domain /
email), the deletion report (a line, or JSON with ``--json``) and the plain
``list`` / ``show`` / ``delete`` commands every resource family builds from
them.  Each command takes ``(client, args, out)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from nbgateway.management.cli._client import Client, CliError, _q
from nbgateway.management.cli._output import emit, write_json

Args = argparse.Namespace
#: a command: ``(client, args, out)``
Command = Callable[[Client, Args, TextIO], None]


def resolve(client: Client, path: str, ref: str, what: str, key: str = "name") -> dict[str, Any]:
    """Find an object by id, else by unique ``key`` (name / domain / email)."""
    items = client.get(path)
    for item in items:
        if item.get("id") == ref:
            return item
    matches = [item for item in items if item.get(key) == ref]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CliError(f"{what} {ref!r} not found (list them with "
                       f"'nbgateway-admin {what}s list')")
    raise CliError(f"{what} {key} {ref!r} is ambiguous; use the id")


def group_ids(client: Client, refs: Sequence[str] | None) -> list[str]:
    """The ids of the groups *refs* names (ids or names)."""
    return [resolve(client, "/groups", r, "group")["id"] for r in refs or ()]


def deleted(args: Args, out: TextIO, what: str, ident: str, label: str | None = None,
            verb: str = "deleted") -> None:
    """Report a deletion: a line, or ``{"deleted": ...}`` with --json."""
    if args.json:
        write_json(out, {verb: what, "id": ident, **({"name": label} if label else {})})
    else:
        out.write(f"{verb} {what} {ident}{f' ({label})' if label else ''}\n")


# --- the plain commands -------------------------------------------------------------


def list_command(path: str, cols: Sequence[str]) -> Command:
    """``list``: every object at *path*, as a table of *cols* (or JSON)."""
    def run(client: Client, args: Args, out: TextIO) -> None:
        emit(args.json, out, client.get(path), cols)
    return run


def show_command(path: str, what: str, cols: Sequence[str], key: str = "name") -> Command:
    """``show REF``: one object, found by :func:`resolve`."""
    def run(client: Client, args: Args, out: TextIO) -> None:
        emit(args.json, out, resolve(client, path, args.ref, what, key=key), cols)
    return run


def delete_command(path: str, what: str, key: str = "name", verb: str = "deleted") -> Command:
    """``delete REF``: find the object by :func:`resolve`, delete it, report it by
    its *key*."""
    def run(client: Client, args: Args, out: TextIO) -> None:
        item = resolve(client, path, args.ref, what, key=key)
        client.delete(f"{path}/{_q(item['id'])}")
        deleted(args, out, what, item["id"], item.get(key), verb=verb)
    return run
