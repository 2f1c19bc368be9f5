"""Auth: what JWT verification costs, cached against cold, and the server CPU the auth middleware stack adds.

Two measurements, each with its target:

1. **Verification**, in this process, CPU per call (:func:`time.process_time_ns`), inside one asyncio loop:

   * ``pyjwt RS256 (cold)`` / ``pyjwt ES256 (cold)``: ``jwt.decode(token, public_key, algorithms=[alg],
     audience=..., issuer=...)``, what a service without a cache pays for every request;
   * ``connectivity RS256 (uncached)`` / ``connectivity ES256 (uncached)``: ``JWTVerifier(cache_size=0)``: our
     full path (parse, key lookup, signature, claims) for comparison;
   * ``connectivity cached (static key)``: ``await verifier.verify(token)`` for a token verified before;
   * ``connectivity cached (JWKS)``: the same with the key from a :class:`~connectivity.security.jwks.JWKS` (the
     hit also checks that the key set is still fresh and unchanged), served by an ``httpx.MockTransport``.

   Contenders take turns block by block (the order rotating), every round; values are medians over the rounds.
   The target: a cached verification (JWKS) at least :data:`TARGET_SPEEDUP` x faster than either cold decode,
   judged on the median of the per-round ratios.

2. **Middleware**, server CPU per request under uvicorn, with the machinery of :mod:`bench.inbound` (one fresh
   uvicorn process per contender per round, CPU read from ``/proc/<pid>/task/*/schedstat``, servers taking turns
   every block, a control twin of the bare server for the noise floor, paired medians):

   * ``bare``: the inbound benchmark's bare Starlette app (``GET /`` answering ``ok``);
   * ``jwt``: the same app behind ``JWTAuthMiddleware`` with a static RS256 key; every request carries the same
     valid token, so every request after the first is a cache hit;
   * ``jwt + authz``: also behind ``AuthorizationMiddleware`` with one ALLOW policy (any authenticated caller may
     ``GET /``), when that middleware exists; the stack held to the target;
   * ``bare (control)``: a second bare server.

   Every server receives the same ``Authorization`` header. The target: the auth stack <= :data:`TARGET_RATIO` x
   ``bare`` server CPU per request (paired median ratio).

The servers import this module (``bench.auth:jwt_app``); the verification key reaches them through the
environment variable :data:`KEY_ENV` (a public JWK), the token is signed here with its private half.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bench import inbound
from bench._harness import machine_info, median, pinned, pinning, publish, schedule, table, verdict
from bench.e2e import HOST
from connectivity.security.jwks import JWKS, VerificationKey
from connectivity.security.jwt import JWTVerifier

__all__ = ["FULL", "KEY_ENV", "QUICK", "TARGET_RATIO", "TARGET_SPEEDUP", "Settings", "run"]

TARGET_SPEEDUP = 50.0
"""How many times faster than a cold decode (RS256 and ES256) a cached verification must be."""
TARGET_RATIO = 1.05
"""Most server CPU per request the app behind the auth middleware stack may cost, relative to the bare app."""

KEY_ENV = "CONNECTIVITY_BENCH_AUTH_JWK"
"""Environment variable carrying the public JWK to the server processes."""

ISSUER = "https://issuer.bench"
AUDIENCE = "bench"

PYJWT_RS = "pyjwt RS256 (cold)"
PYJWT_ES = "pyjwt ES256 (cold)"
OURS_RS = "connectivity RS256 (uncached)"
OURS_ES = "connectivity ES256 (uncached)"
CACHED = "connectivity cached (static key)"
CACHED_JWKS = "connectivity cached (JWKS)"
_COLD = (PYJWT_RS, PYJWT_ES)
_HIT_WEIGHT = 50  # a cached call is ~100x cheaper: run more of them per block so both sides time similar spans

BARE = inbound.BARE
JWT = "jwt"
STACK = "jwt + authz"
CONTROL = inbound.CONTROL


@dataclass(frozen=True)
class Settings:
    """How much work one run does.

    Attributes:
        calls: Cold verifications per contender per round (cached contenders make :data:`_HIT_WEIGHT` x more).
        call_rounds: Measured verification rounds.
        requests: Requests per server per round (middleware part).
        rounds: Measured middleware rounds, each on freshly started servers.
        warmup: Untimed requests per server before its round.
        block: Requests sent to one server before handing over to the next.
        max_seconds: No middleware round starts after this long (at least one runs).
    """

    calls: int
    call_rounds: int
    requests: int
    rounds: int
    warmup: int
    block: int = 100
    max_seconds: float = 600.0


FULL = Settings(calls=400, call_rounds=15, requests=500, rounds=21, warmup=100)
QUICK = Settings(calls=40, call_rounds=3, requests=60, rounds=3, warmup=20, block=20, max_seconds=120.0)


# -- the servers' apps (imported by uvicorn in the child processes) ------------------------------------------
def _authz_available() -> bool:
    return importlib.util.find_spec("connectivity.middleware.authorization") is not None


def _server_app(*, authz: bool) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    from bench._inbound_app import _ok
    from connectivity.middleware.jwt_auth import JWTAuthMiddleware

    app = Starlette(routes=[Route("/", _ok, methods=["GET"])])
    if authz:
        from connectivity.middleware.authorization import AuthorizationMiddleware

        policy = {
            "name": "authenticated-readers",
            "action": "ALLOW",
            "rules": [
                {"from": [{"source": {"requestPrincipals": ["*"]}}], "to": [{"operation": {"methods": ["GET"]}}]}
            ],
        }
        app.add_middleware(AuthorizationMiddleware, policies=[policy])
    key = VerificationKey.from_jwk(os.environ[KEY_ENV])
    app.add_middleware(JWTAuthMiddleware, verifier=JWTVerifier(keys=key, issuer=ISSUER, audience=AUDIENCE))
    return app


def __getattr__(name: str) -> Any:
    # The servers' apps are built on demand: only the child processes (with the key in their environment) ask.
    if name == "jwt_app":
        return _server_app(authz=False)
    if name == "jwt_authz_app":
        return _server_app(authz=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- keys and tokens ----------------------------------------------------------------------------------------
@dataclass
class _Material:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    rs_token: str
    es_token: str


def _material() -> _Material:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench-user",
        "scope": "orders:read orders:write",
        "groups": ["bench"],
        "iat": int(time.time()),
        "exp": int(time.time()) + 86_400,
    }
    return _Material(
        rsa_key,
        ec_key,
        jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "rs"}),
        jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "es"}),
    )


# -- part 1: verification --------------------------------------------------------------------------------------
Timer = Callable[[int], Awaitable[int]]


def _sync_timer(call: Callable[[], object]) -> Timer:
    async def timed(n: int) -> int:
        start = time.process_time_ns()
        for _ in range(n):
            call()
        return time.process_time_ns() - start

    return timed


def _async_timer(verifier: JWTVerifier, token: str) -> Timer:
    verify = verifier.verify

    async def timed(n: int) -> int:
        start = time.process_time_ns()
        for _ in range(n):
            await verify(token)
        return time.process_time_ns() - start

    return timed


async def _verification(material: _Material, settings: Settings) -> dict[str, list[float]]:
    """ns per call, per round, by contender."""
    rs_public, es_public = material.rsa.public_key(), material.ec.public_key()
    keys = [VerificationKey.from_key(material.rsa, kid="rs"), VerificationKey.from_key(material.ec, kid="es")]
    document = {
        "keys": [
            RSAAlgorithm.to_jwk(rs_public, as_dict=True) | {"kid": "rs", "alg": "RS256", "use": "sig"},
            ECAlgorithm.to_jwk(es_public, as_dict=True) | {"kid": "es", "alg": "ES256"},
        ]
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=document))
    async with httpx.AsyncClient(transport=transport) as client:
        static = JWTVerifier(keys=keys, issuer=ISSUER, audience=AUDIENCE)
        uncached = JWTVerifier(keys=keys, issuer=ISSUER, audience=AUDIENCE, cache_size=0)
        remote = JWTVerifier(
            keys=JWKS("https://issuer.bench/jwks", client=client), issuer=ISSUER, audience=AUDIENCE
        )
        rs, es = material.rs_token, material.es_token
        timers: dict[str, tuple[Timer, int]] = {
            PYJWT_RS: (
                _sync_timer(
                    lambda: jwt.decode(rs, rs_public, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
                ),
                1,
            ),
            PYJWT_ES: (
                _sync_timer(
                    lambda: jwt.decode(es, es_public, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
                ),
                1,
            ),
            OURS_RS: (_async_timer(uncached, rs), 1),
            OURS_ES: (_async_timer(uncached, es), 1),
            CACHED: (_async_timer(static, rs), _HIT_WEIGHT),
            CACHED_JWKS: (_async_timer(remote, rs), _HIT_WEIGHT),
        }
        for verifier, token in ((static, rs), (static, es), (uncached, rs), (remote, rs)):
            principal = await verifier.verify(token)  # every contender verifies for real before it is timed
            if principal.id != "bench-user":
                raise RuntimeError("auth: a benchmark token did not verify")
        names = list(timers)
        blocks = 10
        per_block = max(1, settings.calls // blocks)
        for timer, weight in timers.values():  # warm-up
            await timer(per_block * weight)
        rounds: dict[str, list[float]] = {name: [] for name in names}
        for index in range(settings.call_rounds):
            spent = dict.fromkeys(names, 0)
            calls = dict.fromkeys(names, 0)
            gc.collect()
            for name, _ in schedule(names, blocks, 1, index):
                timer, weight = timers[name]
                spent[name] += await timer(per_block * weight)
                calls[name] += per_block * weight
            for name in names:
                rounds[name].append(spent[name] / calls[name])
    return rounds


def _summarise_verification(rounds: dict[str, list[float]]) -> dict[str, Any]:
    contenders = {
        name: {
            "ns_per_call": round(median(values), 1),
            "ns_min_max": [round(min(values), 1), round(max(values), 1)],
            "rounds_ns_per_call": [round(value, 1) for value in values],
        }
        for name, values in rounds.items()
    }
    comparisons: dict[str, Any] = {}
    for cached in (CACHED, CACHED_JWKS):
        for cold in _COLD:
            paired = median([c / h for c, h in zip(rounds[cold], rounds[cached], strict=True)])
            comparisons[f"{cached} vs {cold}"] = {
                "speedup": round(median(rounds[cold]) / median(rounds[cached]), 1),
                "speedup_paired_median": round(paired, 1),
                "held_to_target": cached == CACHED_JWKS,
                "pass": paired >= TARGET_SPEEDUP,
            }
    return {"contenders": contenders, "comparisons": comparisons}


# -- part 2: middleware server CPU ----------------------------------------------------------------------------
def _contenders() -> dict[str, str]:
    contenders = {BARE: "bench._inbound_app:bare", JWT: "bench.auth:jwt_app"}
    if _authz_available():
        contenders[STACK] = "bench.auth:jwt_authz_app"
    contenders[CONTROL] = "bench._inbound_app:bare"
    return contenders


def _check_served(name: str, url: str, token: str) -> None:
    """The server answers a valid token with ``ok``, and its middleware refuses what it should."""
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        good = client.get(url, headers={"authorization": f"Bearer {token}"})
        bad = client.get(url, headers={"authorization": "Bearer not.a.token"})
        anonymous = client.get(url)
    expected = {BARE: (200, 200), CONTROL: (200, 200), JWT: (401, 200), STACK: (401, 403)}[name]
    if (good.status_code, good.text) != (200, "ok") or (bad.status_code, anonymous.status_code) != expected:
        raise RuntimeError(
            f"auth: {name} answered {good.status_code} to a valid token, {bad.status_code} to a bad one and "
            f"{anonymous.status_code} to none (expected 200, {expected[0]}, {expected[1]}): not the app to measure"
        )


def _middleware(
    contenders: dict[str, str], settings: Settings, material: _Material
) -> tuple[dict[str, Any] | None, str, str | None]:
    """The summary (``None`` when skipped), where server CPU was read, and why it was skipped."""
    missing = [name for name in ("uvicorn", "starlette") if importlib.util.find_spec(name) is None]
    if missing:
        return None, "", f"not installed: {', '.join(missing)}"
    jwk = json.dumps(RSAAlgorithm.to_jwk(material.rsa.public_key(), as_dict=True) | {"kid": "rs", "alg": "RS256"})
    client_cpu, server_cpu = pinning()
    previous_env = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = jwk
    token = material.rs_token
    shape = inbound.Settings(  # what the inbound machinery reads of our settings
        requests=settings.requests,
        rounds=settings.rounds,
        warmup=settings.warmup,
        block=settings.block,
        max_seconds=settings.max_seconds,
    )
    try:
        with pinned(client_cpu):
            rounds, source = inbound._measure(
                shape,
                server_cpu,
                contenders,
                headers={"authorization": f"Bearer {token}"},
                check=lambda name, server: _check_served(name, server.url, token),
            )
    except inbound._NoClock:
        return None, "", "no /proc/<pid>/schedstat or /proc/<pid>/stat"
    finally:
        if previous_env is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = previous_env
    summary = inbound._summarise(rounds)  # the inbound benchmark's statistics; the checks are ours
    held = STACK if STACK in contenders else JWT
    for name, contender in summary["contenders"].items():
        contender["held_to_target"] = name == held
    ratio = summary["contenders"][held]["ratio_paired_median"]
    summary["checks"] = {f"{held} <= {TARGET_RATIO}x {BARE}": ratio <= TARGET_RATIO}
    summary["pass"] = ratio <= TARGET_RATIO
    summary["rounds_completed"] = len(rounds[BARE])
    summary["pinning"] = {"client_cpu": client_cpu, "server_cpu": server_cpu}
    return summary, source, None


# -- report -----------------------------------------------------------------------------------------------------
def _print(verification: dict[str, Any], middleware: dict[str, Any] | None, skipped: str | None) -> None:
    rows = [
        [
            name,
            f"{summary['ns_per_call'] / 1000:.2f}",
            f"{summary['ns_min_max'][0] / 1000:.2f}-{summary['ns_min_max'][1] / 1000:.2f}",
        ]
        for name, summary in verification["contenders"].items()
    ]
    print(table(["verification", "µs/call", "rounds min-max"], rows))
    for label, comparison in verification["comparisons"].items():
        line = f"{label}: {comparison['speedup_paired_median']:.1f}x faster (paired median)"
        if comparison["held_to_target"]:
            print(f"{verdict(comparison['pass'])}  auth: {line}, target >= {TARGET_SPEEDUP:.0f}x")
        else:
            print(f"      {line}")
    print()
    if middleware is None:
        print(f"SKIPPED  auth middleware: {skipped}")
        return
    rows = []
    for name, summary in middleware["contenders"].items():
        low, high = summary["server_us_min_max"]
        rows.append(
            [
                name,
                f"{summary['server_us_per_request']:.1f}",
                f"{low:.0f}-{high:.0f}",
                f"{summary['ratio_vs_bare']:.3f}x",
                f"{summary['ratio_paired_median']:.3f}x",
                f"{summary['added_us_paired_median']:+.1f}",
                str(summary["errors"]),
            ]
        )
    headers = ["middleware", "server µs/req", "rounds min-max", "vs bare", "vs bare (paired)", "added (paired)"]
    print(table([*headers, "errors"], rows))
    inbound._print_noise_floor(middleware)
    for check, ok in middleware["checks"].items():
        name = check.split(" <= ")[0]
        summary = middleware["contenders"][name]
        print(
            f"{verdict(ok)}  auth: {check} (paired median {summary['ratio_paired_median']:.3f}x, "
            f"{summary['added_us_paired_median']:+.1f} µs)"
        )


def run(
    *,
    quick: bool = False,
    rounds: int | None = None,
    requests: int | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the auth benchmark, print its tables and verdicts, and write ``auth.json``.

    Args:
        quick: Few rounds of little work (a smoke run: the numbers are not meaningful).
        rounds: Override the number of rounds (both parts).
        requests: Override the requests per server per round.
        results_dir: Where to write the JSON (default ``bench/results/``).

    Returns:
        The results, as written to the JSON file.

    Raises:
        RuntimeError: A server did not start or does not serve the app it should, or a token did not verify.
    """
    base = QUICK if quick else FULL
    settings = Settings(
        calls=base.calls,
        call_rounds=rounds or base.call_rounds,
        requests=requests or base.requests,
        rounds=rounds or base.rounds,
        warmup=base.warmup,
        block=min(base.block, requests or base.block),
        max_seconds=base.max_seconds,
    )
    began = time.perf_counter()
    material = _material()
    contenders = _contenders()
    print(
        f"auth: JWT verification, {settings.call_rounds} rounds x {settings.calls} cold calls per contender "
        f"(cached: x{_HIT_WEIGHT}), CPU time; then sequential GETs to {len(contenders)} uvicorn servers on {HOST} "
        f"(fresh every round), {settings.rounds} rounds x {settings.requests} requests, server on-CPU time"
    )
    verification = _summarise_verification(anyio.run(_verification, material, settings))
    middleware, source, skipped = _middleware(contenders, settings, material)
    _print(verification, middleware, skipped)
    checks = {
        f"{label} >= {TARGET_SPEEDUP:.0f}x": comparison["pass"]
        for label, comparison in verification["comparisons"].items()
        if comparison["held_to_target"]
    }
    if middleware is not None:
        checks.update(middleware["checks"])
    payload: dict[str, Any] = {
        "benchmark": "auth",
        "quick": quick,
        "target_speedup": TARGET_SPEEDUP,
        "target_ratio": TARGET_RATIO,
        "config": {
            "calls_per_round": settings.calls,
            "cached_calls_per_round": settings.calls * _HIT_WEIGHT,
            "call_rounds": settings.call_rounds,
            "requests_per_round": settings.requests,
            "rounds": settings.rounds,
            "warmup_requests": settings.warmup,
            "block_requests": settings.block,
            "verification_timer": "time.process_time_ns, one asyncio loop, contenders interleaved by block",
            "server_timer": f"server process on-CPU time ({source or 'n/a'}) around every block",
            "contenders": dict(contenders),
            "authorization_middleware": STACK in contenders,
        },
        "machine": machine_info({"pyjwt": jwt.__version__}),
        "verification": verification,
        "middleware": middleware,
        "checks": checks,
        "pass": all(checks.values()),
        "skipped": skipped,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    return publish("auth", payload, results_dir)
