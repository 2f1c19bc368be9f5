"""The throwaway PKI of the ``mtls`` scenario: one CA, the replicas' certificate and the callers' certificates.

Theory of operation: :func:`make` creates a CA for the trust domain :data:`TRUST_DOMAIN` with
:func:`connectivity.security.certs.create_ca` and issues, as a mesh's control plane would, X509-SVIDs with
:func:`~connectivity.security.certs.issue`: one for the upstream replicas (SPIFFE id :data:`UPSTREAM_ID`, DNS name
:data:`SERVER_NAME` and the loopback address, for servers) and one per caller (the in-process stack, bare httpx,
each sidecar: a client certificate each). The files are written into a directory of the run (keys mode 0600) and
removed with it; :class:`Material` carries their paths, and builds the contexts every party uses:

* the replicas serve TLS with :meth:`connectivity.security.MTLS.server_context` (client certificate required);
* the in-process stack gets :meth:`Material.mtls`, an :class:`~connectivity.security.MTLS` checking the replicas'
  SPIFFE id during the handshake (``cx.transport(tls=...)``);
* bare httpx gets a plain :mod:`ssl` client context (:meth:`Material.ssl_context`): CA, client certificate, host
  name checked against the replicas' IP address SAN;
* each sidecar's configuration names the files (:attr:`Material.cert`, :attr:`Material.key`, :attr:`Material.ca`,
  and :attr:`Material.bundle`, certificate and key in one file, for HAProxy's ``crt``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectivity.security.certs import create_ca, issue, write_pem

__all__ = ["SERVER_NAME", "TRUST_DOMAIN", "UPSTREAM_ID", "Material", "Pki", "make"]

TRUST_DOMAIN = "compare.test"
"""The trust domain of the scenario's workloads."""
UPSTREAM_ID = f"spiffe://{TRUST_DOMAIN}/ns/compare/sa/upstream"
"""The replicas' SPIFFE id, which the in-process stack expects."""
SERVER_NAME = "upstream.compare.test"
"""The replicas' DNS name (SNI and name check of the sidecars)."""


@dataclass(frozen=True)
class Material:
    """One workload's certificate files, and the CA they all chain to.

    Attributes:
        cert: The certificate (PEM).
        key: Its private key (PEM, mode 0600).
        ca: The CA certificate, which every peer must chain to.
        bundle: Certificate then key in one file (HAProxy's ``crt``), mode 0600.

    .. versionadded:: 0.1
    """

    cert: Path
    key: Path
    ca: Path
    bundle: Path

    def mtls(self, **options: Any) -> Any:
        """An :class:`~connectivity.security.MTLS` presenting this certificate; ``options`` go to it too."""
        from connectivity.security.tls import MTLS

        return MTLS(cert=str(self.cert), key=str(self.key), ca=str(self.ca), **options)

    def ssl_context(self) -> ssl.SSLContext:
        """A plain :mod:`ssl` client context: the CA, this certificate, host names checked (bare httpx's)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@dataclass(frozen=True)
class Pki:
    """The scenario's certificates: the replicas' (:attr:`server`) and one per caller (:attr:`clients`)."""

    server: Material
    clients: dict[str, Material]


def make(directory: Path, callers: list[str]) -> Pki:
    """Create the CA and issue the replicas' certificate and one client certificate per name in ``callers``.

    Args:
        directory: An existing directory, the run's own; the files go there.
        callers: Who calls the replicas (``"connectivity"``, ``"httpx"``, ``"nginx"``...).

    Returns:
        The paths of everything written.
    """
    ca = create_ca(TRUST_DOMAIN)
    ca_path = directory / "ca.pem"
    write_pem(ca_path, ca.cert_pem(), overwrite=True)

    def material(stem: str, spiffe_id: str, *, server: bool) -> Material:
        leaf = issue(
            ca,
            spiffe_id=spiffe_id,
            dns_names=[SERVER_NAME] if server else [],
            ip_addresses=["127.0.0.1"] if server else [],
            server=server,
            client=True,
        )
        cert, key, bundle = (directory / f"{stem}{suffix}" for suffix in (".pem", ".key", ".bundle.pem"))
        leaf.write(cert, key, overwrite=True)
        write_pem(bundle, leaf.cert_pem() + leaf.key_pem(), private=True, overwrite=True)
        return Material(cert, key, ca_path, bundle)

    server = material("upstream", UPSTREAM_ID, server=True)
    clients = {
        name: material(f"client-{index}", f"spiffe://{TRUST_DOMAIN}/ns/compare/sa/client-{index}", server=False)
        for index, name in enumerate(callers)
    }
    return Pki(server, clients)
