"""Two services over mutual TLS with SPIFFE identities, service JWTs and authorization, certificates made by
``connectivity certs``.

1. ``connectivity certs`` creates a CA for the trust domain ``shop.test`` and issues X509-SVIDs for ``orders``
   (the server), ``checkout`` (a client that may call it) and ``intruder`` (a client of the same trust domain that
   may not).
2. ``orders`` runs under uvicorn with client certificates required and the TLS extension exposed to the app
   (``TLSH11Protocol``). Its middleware, outermost first: ``PeerIdentityMiddleware`` (who the workload is),
   ``JWTAuthMiddleware`` (who the caller is: a service JWT signed by checkout) and ``AuthorizationMiddleware``
   (only checkout may read orders; placing one needs the JWT's ``orders:write`` scope).
3. ``checkout`` calls it through ``cx.transport(tls=MTLS(..., peer_id=orders), auth=ServiceJWT(...))``: the
   upstream's SPIFFE id is checked in the handshake, each request carries a fresh short-lived JWT.
4. ``intruder`` gets 403; a client expecting another upstream identity gets ``PeerIdentityError`` before sending
   a byte.

Run: python examples/secure_services.py [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import anyio
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import connectivity as cx
from connectivity.cli import main as connectivity_cli
from connectivity.middleware import AuthorizationMiddleware, JWTAuthMiddleware, PeerIdentityMiddleware
from connectivity.security import MTLS, ServiceJWT, VerificationKey, peer_of, principal_of
from connectivity.security.uvicorn import TLSH11Protocol
from connectivity.testing.server import serve

TRUST_DOMAIN = "shop.test"
ORDERS = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/orders"
CHECKOUT = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
INTRUDER = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/intruder"


def make_certificates(directory: Path) -> None:
    """What a developer would type: one CA for the trust domain, one SVID per workload."""
    out = str(directory)
    assert connectivity_cli(["certs", "ca", TRUST_DOMAIN, "-o", out]) == 0
    ca = str(directory / f"{TRUST_DOMAIN}-ca.pem")
    for name, spiffe_id in (("orders", ORDERS), ("checkout", CHECKOUT), ("intruder", INTRUDER)):
        args = ["certs", "issue", name, "--ca", ca, "--spiffe-id", spiffe_id, "-o", out]
        if name == "orders":
            args += ["--dns", "localhost", "--ip", "127.0.0.1"]
        assert connectivity_cli(args) == 0


def orders_service(directory: Path, jwt_public_key: bytes) -> Any:
    async def list_orders(request: Request) -> JSONResponse:
        peer, caller = peer_of(request), principal_of(request)
        return JSONResponse(
            {"orders": [1, 2, 3], "peer": str(peer.spiffe_id) if peer else None, "caller": caller and caller.id}
        )

    async def place_order(request: Request) -> JSONResponse:
        return JSONResponse({"placed": True}, status_code=201)

    app: Any = Starlette(
        routes=[Route("/orders", list_orders, methods=["GET"]), Route("/orders", place_order, methods=["POST"])]
    )
    app = AuthorizationMiddleware(
        app,
        policies=[
            {
                "name": "checkout-reads",
                "action": "ALLOW",
                "rules": [
                    {"from": [{"source": {"principals": [CHECKOUT]}}], "to": [{"operation": {"methods": ["GET"]}}]}
                ],
            },
            {
                "name": "checkout-writes-with-scope",
                "action": "ALLOW",
                "rules": [
                    {
                        "from": [{"source": {"principals": [CHECKOUT]}}],
                        "to": [{"operation": {"methods": ["POST"], "paths": ["/orders"]}}],
                        "when": [{"key": "request.auth.scopes", "values": ["orders:write"]}],
                    }
                ],
            },
        ],
    )
    app = JWTAuthMiddleware(
        app, keys=VerificationKey.from_pem(jwt_public_key, alg="ES256"), issuer="checkout", audience="orders"
    )
    return PeerIdentityMiddleware(app, allowed_trust_domains=[TRUST_DOMAIN])


def client_tls(directory: Path, name: str, *, expect: str = ORDERS) -> MTLS:
    return MTLS(
        cert=directory / f"{name}.pem",
        key=directory / f"{name}.key",
        ca=directory / f"{TRUST_DOMAIN}-ca.pem",
        peer_id=expect,
    )


async def calls(directory: Path, url: str, signing_key: bytes) -> tuple[int, int]:
    ok = total = 0
    signer = ServiceJWT(
        signing_key, "ES256", issuer="checkout", audience="orders", claims={"scope": "orders:write"}
    )
    checkout = cx.transport(tls=client_tls(directory, "checkout"), auth=signer)
    async with httpx.AsyncClient(transport=checkout, base_url=url) as client:
        for _ in range(5):
            response = await client.get("/orders")
            total += 1
            ok += response.status_code == 200
        print(f"checkout GET /orders -> {response.status_code} {response.json()}")
        placed = await client.post("/orders", json={"item": "book"})
        total += 1
        ok += placed.status_code == 201
        print(f"checkout POST /orders (JWT scope orders:write) -> {placed.status_code}")

    read_only = ServiceJWT(signing_key, "ES256", issuer="checkout", audience="orders")
    async with httpx.AsyncClient(
        transport=cx.transport(tls=client_tls(directory, "checkout"), auth=read_only), base_url=url
    ) as client:
        refused = await client.post("/orders", json={"item": "book"})
        total += 1
        ok += refused.status_code == 403
        print(f"checkout POST /orders without the scope -> {refused.status_code} (AuthorizationMiddleware)")

    async with httpx.AsyncClient(
        transport=cx.transport(tls=client_tls(directory, "intruder"), auth=signer), base_url=url
    ) as client:
        denied = await client.get("/orders")
        total += 1
        ok += denied.status_code == 403
        print(f"intruder GET /orders -> {denied.status_code} (its SPIFFE id is in the trust domain, not allowed)")

    impostor = client_tls(directory, "checkout", expect=f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments")
    async with httpx.AsyncClient(transport=cx.transport(tls=impostor), base_url=url) as client:
        total += 1
        try:
            await client.get("/orders")
        except cx.PeerIdentityError as error:
            ok += 1
            print(
                f"a client expecting 'payments' -> PeerIdentityError, nothing sent: presented {error.presented[0]}"
            )
    return ok, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        make_certificates(directory)
        signing = ec.generate_private_key(ec.SECP256R1())
        private_pem = signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public_pem = signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        server_tls = MTLS(
            cert=directory / "orders.pem", key=directory / "orders.key", ca=directory / f"{TRUST_DOMAIN}-ca.pem"
        )
        app = orders_service(directory, public_pem)
        with serve(app, ssl_context=server_tls.server_context(), http_protocol=TLSH11Protocol) as server:
            ok, total = anyio.run(calls, directory, server.url, private_pem, backend=args.backend)
    print(f"ok: {ok}/{total} outcomes as expected (mTLS, SPIFFE peer checks, service JWTs, authorization)")


if __name__ == "__main__":
    main()
