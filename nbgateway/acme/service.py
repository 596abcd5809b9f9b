"""Wiring ACME into a :class:`nbgateway.service.GatewayService` (``--acme-certs``).

:func:`attach_acme` builds the challenge responder (handed to the public TLS
listener's SNI creator for tls-alpn-01), the account (state in
``<datadir>/acme/``), the manager (a mapping-store observer writing into
``--cert-dir``) and :class:`AcmeService`, a child service that starts the
manager's timer and, for http-01, listens on ``--acme-addr``.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.web.server import Site

from nbgateway.acme.challenges import ChallengeResponder, HTTP01Resource
from nbgateway.acme.client import HTTP_01, AcmeAccount
from nbgateway.acme.manager import AcmeManager
from nbgateway.acme.schedule import RenewalSchedule

log = Logger()


class AcmeService(Service):
    """Starts/stops the manager; binds the http-01 listener when asked to."""

    def __init__(self, manager: AcmeManager, reactor: Any, http_addr: Any = None) -> None:
        self.manager = manager
        self.reactor = reactor
        self.http_addr = http_addr
        self.http_port: Any = None

    def privilegedStartService(self) -> None:
        if self.http_addr is not None:
            from nbgateway.startup import listen_failed

            try:
                self.http_port = self.reactor.listenTCP(
                    self.http_addr.port, Site(HTTP01Resource(self.manager.responder)),
                    interface=self.http_addr.host)
            except Exception as exc:
                raise listen_failed(exc, "the ACME http-01 listener",
                                    "--acme-addr / NB_PROXY_ACME_ADDRESS") from exc
            log.info("ACME http-01 listener on {addr}", addr=self.http_port.getHost())
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.manager.start()

    def stopService(self) -> Any:
        self.manager.stop()
        super().stopService()
        if self.http_port is not None:
            port, self.http_port = self.http_port, None
            return port.stopListening()
        return None


def attach_acme(gateway: Any) -> AcmeManager:
    """Build and attach ACME to ``gateway`` (see the module docstring)."""
    config = gateway.config
    responder = ChallengeResponder()
    account = AcmeAccount(
        config.acme_dir, os.path.join(config.datadir, "acme"), email=config.acme_email,
        eab_kid=config.acme_eab_kid, eab_hmac_key=config.acme_eab_hmac_key,
        ca_bundle=config.acme_ca_bundle, challenge_type=config.acme_challenge_type)
    manager = AcmeManager(account, gateway.certificates, responder, clock=gateway.reactor,
                          cert_dir=config.cert_dir, mgmt=gateway.mgmt,
                          schedule=RenewalSchedule(backoff_base=config.acme_retry_base))
    if config.acme_challenge_type != HTTP_01:
        gateway.tls_creator.challenges = responder
    gateway.store.add_observer(manager)
    gateway.metrics.registry.register(manager.stats)
    http_addr = config.acme_addr if config.acme_challenge_type == HTTP_01 else None
    AcmeService(manager, gateway.reactor, http_addr).setServiceParent(gateway)
    log.info("ACME certificates from {directory} with {challenge}",
             directory=config.acme_dir, challenge=config.acme_challenge_type)
    return manager
