"""Brute-force protection for operator secrets (password, PIN, header value)
on the gateway, where the client's address is known: refusing here spares
management an argon2id verification per guess.  The accounting itself is the
ground-floor :class:`nbgateway.attempts.AttemptLimiter` (management keeps its
own instance, :mod:`nbgateway.management.authlimit`); the gateway's front
resource holds one per listener with the defaults (5 failures per 5 minutes,
then 1 minute doubling up to an hour; 100 failures per service and window).
"""

from __future__ import annotations

from nbgateway.attempts import AttemptLimiter

__all__ = ["AttemptLimiter"]
