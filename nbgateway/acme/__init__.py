"""Certificates from an ACME server (RFC 8555) for the gateway's public domains.

- :mod:`nbgateway.acme.schedule`: the sans-IO core deciding, fed ``now``, which
  domain to order or renew next (two thirds of the lifetime, exponential
  backoff with jitter, the server's Retry-After respected);
- :mod:`nbgateway.acme.challenges`: pending challenge answers (http-01 tokens,
  tls-alpn-01 certificates) and the HTTP resource serving them;
- :mod:`nbgateway.acme.client`: the blocking ACME conversation (``acme`` +
  ``josepy``), run off the reactor thread; the account key kept 0600;
- :mod:`nbgateway.acme.manager`: the Twisted adapter: mapping observer, timer,
  thread hand-off, atomic certificate files, status updates and metrics.
"""
