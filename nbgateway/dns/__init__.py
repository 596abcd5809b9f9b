"""Per-account synthetic DNS: an in-memory authority (:mod:`.zone`) and its
twisted.names responder over UDP and TCP (:mod:`.server`)."""
