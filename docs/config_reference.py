"""Generate the configuration reference table of README.md from
:func:`nbgateway.options.reference_rows` (built from
:data:`nbgateway.config.SETTINGS`, the single definition of every setting).
The same rows print the environment section of ``twistd nbgateway --help``
and of ``nbgateway-admin env``.

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
    from nbgateway.options import reference_rows

    rows = ["| Flag | Environment | Default | Meaning |", "|---|---|---|---|"]
    for r in reference_rows():
        flag = f"`{r.flag}`" if r.flag else "(env only)"
        if r.hidden:
            flag += " (hidden)"
        default = f"`{r.default}`" if r.default else "empty"
        meaning = r.meaning.replace("|", "\\|")
        if r.secret:
            meaning += " (secret: never logged)"
        rows.append(f"| {flag} | `{r.env}` | {default} | {meaning} |")
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
