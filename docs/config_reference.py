"""Generate the configuration reference table of README.md from
:data:`nbgateway.config.SETTINGS` (the single definition of every setting).

    .venv/bin/python docs/config_reference.py            # print the table
    .venv/bin/python docs/config_reference.py --write    # replace it in README.md

tests/test_packaging.py fails when README.md is out of date.
"""

from __future__ import annotations

import os
import sys

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def table() -> str:
    from nbgateway.config import SETTINGS

    rows = ["| Flag | Environment | Default | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        flag = f"`--{s.flag}`" if s.flag else "(env only)"
        if s.hidden:
            flag += " (hidden)"
        default = f"`{s.default}`" if s.default else "empty"
        meaning = s.help.replace("|", "\\|")
        if s.secret:
            meaning += " (secret: never logged)"
        rows.append(f"| {flag} | `{s.env}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def replace(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"{START} not found in README.md")
    return f"{head}{START}\n{table()}{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        with open(README) as f:
            text = f.read()
        with open(README, "w") as f:
            f.write(replace(text))
    else:
        sys.stdout.write(table())
