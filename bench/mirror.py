"""Mirroring: what a slow, failing shadow does to the primary's latency (the target: nothing measurable).

One client sends pairs of requests to the primary upstream through one
:class:`~connectivity.transports.MirrorTransport`: in each pair one request is mirrored and one is not (the
``connectivity.mirror`` request extension), in alternating order. The shadow answers after 200 ms, every other time
with a 500. The shadow never holds more than ``max_concurrent=2`` mirrors, so most are dropped at once, as a
shadow that slow would make any sane configuration do.

The primary is :mod:`bench._upstream` (``200 ok``) and the shadow :func:`shadow_app`, each under uvicorn in a child
process of its own, so neither spends this process's CPU. Per round the ratio is ``1 + median(mirrored - plain) /
median(plain)``: the pairing cancels the drift of a shared machine that separate medians suffer from. Rounds run
with :class:`httpx.Client` (the mirror runs in a worker thread), and :class:`httpx.AsyncClient` on asyncio and on
trio (in the client's task group); the reported ratio per mode is the median over rounds, the target
:data:`TARGET_RATIO`.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench._harness import machine_info, median, publish, table, verdict
from bench.e2e import serve
from connectivity.transports import HTTPTransport, MirrorTransport

__all__ = ["FULL", "QUICK", "SHADOW_LATENCY", "TARGET_RATIO", "Settings", "run", "shadow_app"]

TARGET_RATIO = 1.05
"""Most median latency of a mirrored primary request, relative to an unmirrored one (paired)."""
SHADOW_LATENCY = 0.2
"""Seconds the shadow takes to answer."""
MODES = ("sync", "asyncio", "trio")


@dataclass(frozen=True)
class Settings:
    """How much work one run does: ``pairs`` measured pairs (after ``warmup``) per mode per round."""

    pairs: int
    warmup: int
    rounds: int


FULL = Settings(pairs=300, warmup=20, rounds=3)
QUICK = Settings(pairs=20, warmup=2, rounds=1)

_failing = itertools.count()


async def shadow_app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """The shadow: answers after :data:`SHADOW_LATENCY` seconds, every other request with a 500."""
    if scope["type"] != "http":
        return
    await anyio.sleep(SHADOW_LATENCY)
    status = 500 if next(_failing) % 2 else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


_ON = {"connectivity.mirror": True}
_OFF = {"connectivity.mirror": False}


def _order(index: int) -> tuple[dict[str, bool], dict[str, bool]]:
    return (_OFF, _ON) if index % 2 else (_ON, _OFF)


def _transport(shadow: str) -> MirrorTransport:
    return MirrorTransport(HTTPTransport(), HTTPTransport(), url=shadow, max_concurrent=2)


def _sync_pairs(primary: str, shadow: str, settings: Settings) -> list[tuple[float, float]]:
    timings: list[tuple[float, float]] = []
    with httpx.Client(transport=_transport(shadow), trust_env=False) as client:
        for index in range(settings.warmup + settings.pairs):
            pair: dict[bool, float] = {}
            for extensions in _order(index):
                started = time.perf_counter()
                client.get(primary, extensions=extensions).raise_for_status()
                pair[extensions is _ON] = time.perf_counter() - started
            if index >= settings.warmup:
                timings.append((pair[False], pair[True]))
    return timings


async def _async_pairs(primary: str, shadow: str, settings: Settings) -> list[tuple[float, float]]:
    timings: list[tuple[float, float]] = []
    async with httpx.AsyncClient(transport=_transport(shadow), trust_env=False) as client:
        for index in range(settings.warmup + settings.pairs):
            pair: dict[bool, float] = {}
            for extensions in _order(index):
                started = time.perf_counter()
                (await client.get(primary, extensions=extensions)).raise_for_status()
                pair[extensions is _ON] = time.perf_counter() - started
            if index >= settings.warmup:
                timings.append((pair[False], pair[True]))
    return timings


def _ratio(timings: list[tuple[float, float]]) -> dict[str, float]:
    plain = statistics.median(t[0] for t in timings)
    return {
        "plain_ms": round(plain * 1000, 3),
        "mirrored_ms": round(statistics.median(t[1] for t in timings) * 1000, 3),
        "ratio": round(1 + statistics.median(t[1] - t[0] for t in timings) / plain, 4),
    }


def run(
    *, quick: bool = False, rounds: int | None = None, requests: int | None = None, results_dir: Path | None = None
) -> dict[str, Any]:
    """Measure every mode, print the table and verdicts, and write ``mirror.json``."""
    base = QUICK if quick else FULL
    settings = Settings(pairs=requests or base.pairs, warmup=base.warmup, rounds=rounds or base.rounds)
    print(
        f"mirror: {settings.rounds} rounds x {settings.pairs} request pairs per mode (one mirrored, one not), "
        f"shadow answering in {SHADOW_LATENCY * 1000:.0f} ms, half of them 500"
    )
    started = time.monotonic()
    per_round: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with serve("bench._upstream:app") as primary, serve("bench.mirror:shadow_app") as shadow:
        for index in range(settings.rounds):
            for mode in MODES[index % len(MODES) :] + MODES[: index % len(MODES)]:  # the order rotates
                if mode == "sync":
                    timings = _sync_pairs(primary.url + "/", shadow.url, settings)
                else:
                    timings = anyio.run(_async_pairs, primary.url + "/", shadow.url, settings, backend=mode)
                per_round[mode].append(_ratio(timings))
    modes = {
        mode: {
            "ratio": round(median([one["ratio"] for one in results]), 4),
            "plain_ms": round(median([one["plain_ms"] for one in results]), 3),
            "mirrored_ms": round(median([one["mirrored_ms"] for one in results]), 3),
            "rounds": results,
        }
        for mode, results in per_round.items()
    }
    rows = [
        [mode, f"{one['plain_ms']:.3f}", f"{one['mirrored_ms']:.3f}", f"{one['ratio']:.3f}x"]
        for mode, one in modes.items()
    ]
    print(table(["mode", "plain ms (p50)", "mirrored ms (p50)", "ratio (paired)"], rows))
    checks = {
        f"{mode}: mirrored primary latency <= {TARGET_RATIO}x unmirrored": one["ratio"] <= TARGET_RATIO
        for mode, one in modes.items()
    }
    for text, ok in checks.items():
        print(f"{verdict(ok)}  {text}")
    return publish(
        "mirror",
        {
            "benchmark": "mirror",
            "quick": quick,
            "target_ratio": TARGET_RATIO,
            "config": {
                "pairs": settings.pairs,
                "warmup": settings.warmup,
                "rounds": settings.rounds,
                "shadow_latency_s": SHADOW_LATENCY,
                "shadow_error_rate": 0.5,
                "max_concurrent_mirrors": 2,
            },
            "modes": modes,
            "checks": checks,
            "pass": all(checks.values()),
            "machine": machine_info(),
            "elapsed_s": round(time.monotonic() - started, 1),
        },
        results_dir,
    )
