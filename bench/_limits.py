"""Benchmarks measure throughput, not the management's per-account limits.

``lift_management_limits()`` sets the documented variables that turn off the
per-account REST rate limits (``NB_MANAGEMENT_API_WRITE_RATE`` /
``NB_MANAGEMENT_API_READ_RATE``) and quotas (``NB_MANAGEMENT_QUOTA_*``) for
the management processes a benchmark starts (they inherit this process's
environment), unless the caller set them: a flood of peer creations is
otherwise answered 429 after the account's burst, and a 20,000-peer seed 412
past the peer quota.
"""

from __future__ import annotations

import os


def lift_management_limits() -> list[str]:
    """Set every limit variable not set already to 0 (off); the names set."""
    from nbgateway.management.quotas import SPECS, env_name
    from nbgateway.management.service import API_READ_RATE_ENV, API_WRITE_RATE_ENV

    names = [API_WRITE_RATE_ENV, API_READ_RATE_ENV, *(env_name(s) for s in SPECS)]
    lifted = [n for n in names if n not in os.environ]
    for name in lifted:
        os.environ[name] = "0"
    return lifted
