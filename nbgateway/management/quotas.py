"""Per-account quotas: how many objects one account may hold, and how large one object may be.

nbgateway is multi-tenant and every account's admin may be hostile to every
other: without a bound one account could fill the shared database, the
gateways' memory (every service is pushed to every gateway of its cluster),
the mapping streams and the account's address pool.  This module owns the
limits (:data:`SPECS`: name, default, what is counted), their parsing from the
``--quota-*`` flags / ``NB_MANAGEMENT_QUOTA_*`` variables, and the check
(:meth:`Quotas.check`).  It does no I/O: the store's create and update paths
count the account's rows inside their own write transaction
(:mod:`nbgateway.management.store._quotas`) and call the check there, so the
count and the insert are one atomic step.

Rules of the check:

* only growth is refused: a create (or an update that adds members, targets or
  groups) that would take the account past the limit raises
  :class:`~nbgateway.management.errors.QuotaExceeded` (REST 412, gRPC
  RESOURCE_EXHAUSTED); deletes, and updates that do not grow, always pass, so
  an account over a newly lowered quota keeps what it has;
* ``0`` means unlimited, and only where the operator says so explicitly;
* the message names the caller's own limit only (never another account's count).

The defaults fit a company of about 500 people (several devices each, a few
hundred services); each is far below what degrades a shared gateway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nbgateway.management.errors import QuotaExceeded

__all__ = ["ENV_PREFIX", "SPECS", "QuotaSpec", "Quotas", "env_name", "flag_name",
           "parse_limit"]

#: the ``twistd nbmanagement`` environment prefix (flags win over it)
ENV_PREFIX = "NB_MANAGEMENT_"


@dataclass(frozen=True)
class QuotaSpec:
    """One quota: its name (flag ``--quota-<name>``), default and meaning."""

    name: str
    default: int
    #: plural noun of what is counted, for the refusal message
    noun: str
    #: "account" (rows of the account) or "service" (entries of one service)
    per: str
    help: str


SPECS: tuple[QuotaSpec, ...] = (
    QuotaSpec("services", 1000, "services", "account",
              "most services (HTTP and L4) per account"),
    QuotaSpec("l4-services", 100, "TCP/UDP/TLS services", "account",
              "most TCP/UDP/TLS services per account (each holds a port on the "
              "cluster's shared gateways)"),
    QuotaSpec("peers", 5000, "peers", "account",
              "most peers per account (REST-created and gateway proxy peers)"),
    QuotaSpec("users", 2000, "users", "account",
              "most users per account (API, dashboard and SSO sign-in)"),
    QuotaSpec("groups", 1000, "groups", "account", "most groups per account"),
    QuotaSpec("group-members", 50_000, "group memberships", "account",
              "most group memberships per account, summed over its groups "
              "(the All group not counted)"),
    QuotaSpec("user-tokens", 1000, "personal access tokens", "account",
              "most personal access tokens per account (all its users)"),
    QuotaSpec("proxy-tokens", 100, "proxy tokens", "account",
              "most account-scoped proxy tokens per account (revoked and expired "
              "ones are deleted to make room)"),
    QuotaSpec("domains", 200, "custom domains", "account", "most custom domains per account"),
    QuotaSpec("service-targets", 100, "targets", "service", "most targets of one service"),
    QuotaSpec("service-groups", 200, "access groups", "service",
              "most access groups (private services) and most bearer distribution "
              "groups of one service, each"),
)

_BY_NAME = {s.name: s for s in SPECS}


def flag_name(spec: QuotaSpec) -> str:
    """``--quota-<name>`` without the dashes."""
    return f"quota-{spec.name}"


def env_name(spec: QuotaSpec) -> str:
    """``NB_MANAGEMENT_QUOTA_<NAME>``."""
    return ENV_PREFIX + flag_name(spec).upper().replace("-", "_")


def parse_limit(text: str | int) -> int:
    """A non-negative count (``_`` separators allowed); ``0`` = unlimited."""
    try:
        n = int(str(text).strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not a count (0 = unlimited)") from None
    if n < 0:
        raise ValueError(f"{text!r} is negative (0 = unlimited)")
    return n


class Quotas:
    """The limits in force (immutable; defaults for names not given)."""

    __slots__ = ("_limits",)

    def __init__(self, limits: Mapping[str, int] | None = None) -> None:
        values = {s.name: s.default for s in SPECS}
        for name, value in (limits or {}).items():
            if name not in _BY_NAME:
                raise ValueError(f"unknown quota {name!r}")
            values[name] = parse_limit(value)
        self._limits = values

    @classmethod
    def unlimited(cls) -> Quotas:
        """No quota at all (tests, benchmarks; never the default)."""
        return cls({s.name: 0 for s in SPECS})

    @classmethod
    def from_settings(cls, settings: Mapping[str, str | int | None]) -> Quotas:
        """From ``{flag name ("quota-peers"): text}``; None or missing = default.
        ValueError names the flag."""
        limits: dict[str, int] = {}
        for spec in SPECS:
            value = settings.get(flag_name(spec))
            if value is None or value == "":
                continue
            try:
                limits[spec.name] = parse_limit(value)
            except ValueError as exc:
                raise ValueError(f"--{flag_name(spec)}: {exc}") from None
        return cls(limits)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Quotas:
        """From the ``NB_MANAGEMENT_QUOTA_*`` variables (the embedded management)."""
        return cls.from_settings({flag_name(s): environ.get(env_name(s)) for s in SPECS})

    def limit(self, name: str) -> int:
        """The limit of quota ``name`` (0 = unlimited)."""
        return self._limits[name]

    def items(self) -> Iterable[tuple[str, int]]:
        return self._limits.items()

    def check(self, name: str, have: int, adding: int = 1) -> None:
        """Refuse growth past the limit: ``have`` is what the account (or the
        service) holds now, ``adding`` what the write adds (negative or zero
        for writes that shrink or keep, which always pass)."""
        limit = self._limits[name]
        if limit and adding > 0 and have + adding > limit:
            spec = _BY_NAME[name]
            raise QuotaExceeded(
                f"quota exceeded: at most {limit} {spec.noun} per {spec.per}"
                + (" (delete some first, or ask the operator for more)"
                   if spec.per == "account" else ""))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quotas) and other._limits == self._limits

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._limits.items())))

    def __repr__(self) -> str:
        return f"Quotas({self._limits!r})"
