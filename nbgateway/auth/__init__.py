"""Who may reach a service: the private gate (tunnel peers validated by
management, cached per account and revoked with the network map) and the
session cookie; see :mod:`.tunnel`.  The pure restriction checks belong to the
service model (:mod:`nbgateway.routes.restrictions`)."""
