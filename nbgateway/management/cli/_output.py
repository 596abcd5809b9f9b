"""Output of ``nbgateway-admin``: plain tables, JSON, colours and progress.

Colours and progress lines only go to a terminal: never when the stream is
not a TTY, never when ``NO_COLOR`` is set (https://no-color.org), and
progress never on stdout (it goes to stderr so pipes stay clean).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, TextIO

_CODES = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2"}


def use_colour(stream: TextIO, environ: Any = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty()) and env.get("TERM") != "dumb"
    except ValueError:  # closed stream
        return False


class Painter:
    """``paint("ok", "green")``: ANSI colour when enabled, the plain text otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: str, colour: str) -> str:
        if not self.enabled or colour not in _CODES:
            return text
        return f"\033[{_CODES[colour]}m{text}\033[0m"


class Progress:
    """``[2/5] created peer b`` lines on a terminal's stderr; silent otherwise."""

    def __init__(self, stream: TextIO, total: int = 0, environ: Any = None):
        isatty = getattr(stream, "isatty", None)
        try:
            self.enabled = bool(isatty and isatty())
        except ValueError:
            self.enabled = False
        self.stream = stream
        self.total = total
        self.done = 0

    def step(self, text: str) -> None:
        self.done += 1
        if self.enabled:
            count = f"[{self.done}/{self.total}] " if self.total else ""
            self.stream.write(f"{count}{text}\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return value.get("name") or value.get("id") or json.dumps(value)
    return str(value).replace("\n", " ")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
              .rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def write_json(out: TextIO, data: Any) -> None:
    out.write(json.dumps(data, indent=2) + "\n")


def emit(json_out: bool, out: TextIO, data: Any, columns: Sequence[str]) -> None:
    if json_out:
        write_json(out, data)
    else:
        table(data if isinstance(data, list) else [data], columns, out)
