"""The process's file-descriptor budget and one account's share of it.

Every account's sockets (public clients, direct upstreams, L4 relays, UDP
sessions, idle pooled upstream connections) come out of one
``RLIMIT_NOFILE``; once it is spent no listener accepts and nothing is dialed
for any account.  The bounds on what one account may hold of each kind are
derived here from the soft limit, so one account takes at most a share.

``twistd nbgateway`` first raises the soft limit to the hard one (at most
:data:`MAX_RAISED`), as Go programs and nginx's ``worker_rlimit_nofile`` do:
a soft limit of 1,024 (a common default for services) would otherwise leave
each account a few hundred descriptors.  A library host keeps its own limit.
"""

from __future__ import annotations

import resource

#: one account's holdings of one kind take at most 1/n of the budget
ACCOUNT_SHARE = 4
#: the least share (a process with a tiny budget still serves an account)
MIN_SHARE = 64
#: the most the soft limit is raised to (each descriptor costs kernel memory
#: only when used, but some kernels' select()/poll() users size by the limit)
MAX_RAISED = 1 << 20


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (at most
    :data:`MAX_RAISED`); (before, after), equal when nothing changed or the
    system refused."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return (0, 0)
    want = MAX_RAISED if hard == resource.RLIM_INFINITY else min(hard, MAX_RAISED)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError):
            return (soft, soft)
        return (soft, want)
    return (soft, soft)


def descriptor_budget() -> int:
    """The soft ``RLIMIT_NOFILE`` (0: unlimited or unknown)."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 0
    return int(soft)


def account_share(per_item: int = 1, fraction: int = ACCOUNT_SHARE) -> int:
    """At most how many things holding ``per_item`` descriptors each one
    account may hold: ``1/fraction`` of the budget (at least
    :data:`MIN_SHARE`); 0 when the budget is unlimited (no bound)."""
    budget = descriptor_budget()
    if not budget:
        return 0
    return max(MIN_SHARE, budget // fraction // max(1, per_item))
