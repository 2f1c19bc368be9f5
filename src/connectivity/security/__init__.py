"""Security: TLS contexts and rotation, SPIFFE ids, peer identity, JWT and API-key verification, authorization.

.. versionadded:: 0.1
"""

from __future__ import annotations

from connectivity.security.identity import Peer, Principal, peer_of, principal_of
from connectivity.security.spiffe import SpiffeId

__all__ = ["Peer", "Principal", "SpiffeId", "peer_of", "principal_of"]
