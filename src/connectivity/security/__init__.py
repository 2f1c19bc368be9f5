"""Security: mTLS with SPIFFE identities and rotation, peer identity, JWT and API-key authentication,
authorization policies and outbound credentials.

* TLS and identity: :class:`MTLS` (client and server contexts, peer checks in the handshake, rotation),
  :class:`SpiffeId`, ``connectivity certs`` (:func:`create_ca`, :func:`issue`) for development.
* Who is calling: :class:`Peer` (the workload, from mTLS) and :class:`Principal` (the caller, from a JWT or an API
  key), as the inbound middleware leave them in the ASGI scope (:func:`peer_of`, :func:`principal_of`).
* Verifying: :class:`JWTVerifier` and :class:`JWKS`, :class:`KeyRing` of API-key :class:`Consumer` s,
  :class:`Authorizer` over :class:`Policy` objects (Istio's AuthorizationPolicy semantics).
* Outbound credentials: :class:`BearerToken`, :class:`APIKey`, :class:`ClientCredentials` (OAuth 2.0),
  :class:`ServiceJWT`, used by :class:`~connectivity.transports.AuthTransport`.

The uvicorn protocol that exposes client certificates lives in :mod:`connectivity.security.uvicorn` (it imports
uvicorn, so it is not imported here).

.. versionadded:: 0.1
"""

from __future__ import annotations

from connectivity.security.apikeys import Consumer, KeyRing, generate_key, hash_key
from connectivity.security.authz import (
    Authorizer,
    Condition,
    Decision,
    Operation,
    Policy,
    RequestFacts,
    Rule,
    Source,
)
from connectivity.security.certs import CertificateAuthority, IssuedCertificate, create_ca, issue, load_ca
from connectivity.security.credentials import APIKey, BearerToken, Credentials
from connectivity.security.identity import Peer, Principal, peer_of, principal_of
from connectivity.security.jwks import JWKS, SkippedKey, VerificationKey
from connectivity.security.jwt import JWTVerifier
from connectivity.security.oauth2 import ClientCredentials
from connectivity.security.rotation import CertificateStatus, RotationEvent
from connectivity.security.service_jwt import ServiceJWT
from connectivity.security.spiffe import SpiffeId
from connectivity.security.tls import MTLS, PeerHandshake, PeerVerificationError, TLSContext
from connectivity.security.xfcc import XfccElement, parse_client_cert, parse_client_cert_chain, parse_xfcc

__all__ = [
    "JWKS",
    "MTLS",
    "APIKey",
    "Authorizer",
    "BearerToken",
    "CertificateAuthority",
    "CertificateStatus",
    "ClientCredentials",
    "Condition",
    "Consumer",
    "Credentials",
    "Decision",
    "IssuedCertificate",
    "JWTVerifier",
    "KeyRing",
    "Operation",
    "Peer",
    "PeerHandshake",
    "PeerVerificationError",
    "Policy",
    "Principal",
    "RequestFacts",
    "RotationEvent",
    "Rule",
    "ServiceJWT",
    "SkippedKey",
    "Source",
    "SpiffeId",
    "TLSContext",
    "VerificationKey",
    "XfccElement",
    "create_ca",
    "generate_key",
    "hash_key",
    "issue",
    "load_ca",
    "parse_client_cert",
    "parse_client_cert_chain",
    "parse_xfcc",
    "peer_of",
    "principal_of",
]
