"""The streaming reverse proxy: outgoing headers (:mod:`.headers`), the
exchange with the upstream (:mod:`.reverse`), Upgrade/WebSocket relays
(:mod:`.upgrade`), failure classification (:mod:`.failures`), error pages
(:mod:`.pages`) and twisted.web streaming plumbing (:mod:`.streaming`)."""
