"""``twistd nbgateway`` command-line options, generated from the configuration
table in :mod:`nbgateway.config`.

Each flag's help line names its ``NB_PROXY_*`` variable and default; a setting
marked ``hidden`` (``--private``, as upstream) is accepted but left out of
``--help``.  :meth:`Options.postOptions` overlays the environment, validates,
and leaves the result in ``options.config``; any invalid value becomes a
one-line :class:`~twisted.python.usage.UsageError` naming the flag; under
twistd it is printed as one line with exit status 2 (:mod:`nbgateway.startup`).
``--help`` ends with an environment variable section built by
:func:`environment_help` from :func:`reference_rows`, the rows README's
configuration reference is generated from (``docs/config_reference.py``).
Building the service from the config is the composition root's job
(``nbgateway.tap``).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from twisted.python import usage

from nbgateway.config import SETTINGS, Config, ConfigError, load
from nbgateway.startup import OneLineUsage


def _help(setting) -> str:
    default = setting.default if setting.default else "empty"
    return f"{setting.help} [env {setting.env}; default: {default}]"


class ReferenceRow(NamedTuple):
    """One environment variable of the configuration reference."""

    env: str
    flag: str | None  # "--addr"; None for environment-only settings
    default: str  # "" when empty
    meaning: str
    hidden: bool = False
    secret: bool = False


def reference_rows(settings: Iterable = SETTINGS) -> list[ReferenceRow]:
    """The configuration reference: README's table and ``--help``'s
    environment section are both printed from these rows."""
    return [ReferenceRow(s.env, f"--{s.flag}" if s.flag else None, s.default or "", s.help,
                         s.hidden, s.secret) for s in settings]


def environment_help(rows: Iterable[ReferenceRow], title: str, width: int = 79) -> str:
    """A plain-text ``--help`` section: each variable, its flag and default,
    then its meaning indented."""
    lines = [title]
    for r in rows:
        flag = "environment only" if r.flag is None else f"same as {r.flag}"
        default = f"default {r.default}" if r.default else "default empty"
        lines.append(f"  {r.env} ({flag}; {default})")
        meaning = r.meaning + (" (secret: never logged)" if r.secret else "")
        lines.extend(textwrap.wrap(meaning, width - 6, initial_indent="      ",
                                   subsequent_indent="      "))
    return "\n".join(lines) + "\n"


_FLAGS = [s for s in SETTINGS if s.flag]
_HIDDEN = frozenset(s.flag for s in _FLAGS if s.hidden)
_ENV_ONLY = [s for s in SETTINGS if not s.flag]


class Options(OneLineUsage, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the nbgateway proxy. Without --mgmt the management service runs in-process. "
        "Every flag can also be set with the NB_PROXY_* environment variable shown next to "
        "it; flags win over the environment, the environment over defaults. The list below "
        "also has the environment-only settings (" + ", ".join(s.env for s in _ENV_ONLY) + ")."
    )
    optFlags = [[s.flag, None, _help(s)] for s in _FLAGS if s.is_bool]
    optParameters = [[s.flag, None, None, _help(s)] for s in _FLAGS if not s.is_bool]

    config: Config

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ

    def getUsage(self, width: int | None = None) -> str:
        """The usual usage text without hidden flags (they still parse)."""
        full = self.longOpt
        self.longOpt = [o for o in full if o.rstrip("=") not in _HIDDEN]
        try:
            text = super().getUsage(width)
        finally:
            self.longOpt = full
        env = environment_help(
            [r for r in reference_rows() if not r.hidden],
            "Environment variables (flags win over the environment, the environment over "
            "defaults):", width or 79)
        return f"{text.rstrip()}\n\n{env}"

    def postOptions(self) -> None:
        try:
            self.config = load({s.name: self[s.flag] for s in _FLAGS}, self._environ)
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None
