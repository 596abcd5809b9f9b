"""L4 passthrough: TCP, TLS-by-SNI and UDP relays, public and private.

What this package owns:

- :mod:`nbgateway.l4.sni` -- sans-IO TLS ClientHello peeker (server name);
- :mod:`nbgateway.l4.proxyproto` -- sans-IO PROXY protocol v1/v2 reader and
  v2 encoder;
- :mod:`nbgateway.l4.limits` -- dial/idle timeout clamping;
- :mod:`nbgateway.l4.relay` -- the TCP splice between an accepted connection
  and its upstream (half-close, backpressure both ways, idle watchdog);
- :mod:`nbgateway.l4.router` -- a port router: per accepted connection,
  inbound PROXY header, SNI peek, route choice (SNI route, else fallback),
  then the relay; at most :data:`~nbgateway.l4.router.MAX_RELAYS` live relays;
- :mod:`nbgateway.l4.manager` -- the mapping observer: which ports to bind
  for which services (public host ports only inside ``--l4-public-ports``),
  conflicts, status.

Dependencies: :mod:`nbgateway.routes` (the service model), dialers from the
gateway (injected), nothing else of the gateway.  Only the service wiring
(:mod:`nbgateway.service`) imports this package.
"""
