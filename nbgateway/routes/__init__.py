"""The gateway's service model (ground floor: pure data and pure functions).

Owns what "a service" is on the gateway, and nothing else:

* :mod:`~nbgateway.routes.hosts` -- host-name normalisation
  (:func:`~nbgateway.routes.hosts.domain_key`, the one key every domain table
  uses), Host header port split, absolute-form request targets;
* :mod:`~nbgateway.routes.paths` -- path routes (several targets per path),
  path rewrite, ``Location`` rewrite;
* :mod:`~nbgateway.routes.balancing` -- a path's load-balancing and
  health-check settings (``nbgw_balancing``);
* :mod:`~nbgateway.routes.restrictions` -- a service's access restrictions
  (CIDR / country / CrowdSec) and the tunnel-address test;
* :mod:`~nbgateway.routes.identity` -- the validated caller;
* :mod:`~nbgateway.routes.service` -- the service entry built from a
  ``ProxyMapping`` (HTTP and L4), target options, ``L4_MODES``;
* :mod:`~nbgateway.routes.table` -- which service serves this host / this
  ``(account, port)``;
* :mod:`~nbgateway.routes.context` -- the typed per-request context passed
  down the request chain;
* :mod:`~nbgateway.routes.redaction` -- the one redaction of a mapping for logs.

No reactor, no twisted.web: :mod:`nbgateway.http`, :mod:`nbgateway.auth`,
:mod:`nbgateway.proxy`, :mod:`nbgateway.observe` and :mod:`nbgateway.store`
depend on this package; it depends on none of them (enforced by
``tests/test_layering.py``).
"""
