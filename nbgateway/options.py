"""``twistd nbgateway`` command-line options, generated from the configuration
table in :mod:`nbgateway.config`.

Each flag's help line names its ``NB_PROXY_*`` variable and default; a setting
marked ``hidden`` (``--private``, as upstream) is accepted but left out of
``--help``.  :meth:`Options.postOptions` overlays the environment, validates,
and leaves the result in ``options.config``; any invalid value becomes a
one-line :class:`~twisted.python.usage.UsageError` naming the flag.  Building
the service from the config is the composition root's job (``nbgateway.tap``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.python import usage

from nbgateway.config import SETTINGS, Config, ConfigError, load


def _help(setting) -> str:
    default = setting.default if setting.default else "empty"
    return f"{setting.help} [env {setting.env}; default: {default}]"


_FLAGS = [s for s in SETTINGS if s.flag]
_HIDDEN = frozenset(s.flag for s in _FLAGS if s.hidden)
_ENV_ONLY = [s for s in SETTINGS if not s.flag]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the nbgateway proxy. Without --mgmt the management service runs in-process. "
        "Every flag can also be set with the NB_PROXY_* environment variable shown next to "
        "it; flags win over the environment, the environment over defaults. Environment-only: "
        + "; ".join(f"{s.env} ({s.help})" for s in _ENV_ONLY) + "."
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
            return super().getUsage(width)
        finally:
            self.longOpt = full

    def postOptions(self) -> None:
        try:
            self.config = load({s.name: self[s.flag] for s in _FLAGS}, self._environ)
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None
