"""The ways of adding retries that the end-to-end benchmarks compare, built one way for every benchmark.

Each contender is a ``get(url)`` callable over its own keep-alive client (``trust_env=False``), sync
(:func:`sync_get`, on :class:`httpx.Client`) or async (:func:`async_get`, on :class:`httpx.AsyncClient`). The
retrying ones do the same job: up to 3 attempts on transport errors and on 429/502/503/504, short exponential
backoff.

* ``httpx``: a bare client, the baseline;
* ``connectivity (full)``: ``cx.transport(timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget()),
  telemetry=False, request_id=False)``: the resilience stack alone: retries, a 10 s deadline over all attempts and
  a retry budget;
* ``connectivity (+breaker)``: the same plus a per-host circuit breaker and a bulkhead (the breaker's full stack);
* ``connectivity (defaults)``: the full stack as ``cx.transport`` builds it by default, with the tracing layer (no
  OpenTelemetry SDK configured: the cost every user pays) and request-id propagation on top;
* ``connectivity (retry)``: ``cx.transports.RetryTransport(cx.transports.HTTPTransport(), cx.Retry())``: 3
  attempts, no budget, no deadline: the same job as httpx-retries;
* ``httpx-retries``: ``httpx_retries.RetryTransport`` with ``Retry(total=2, status_forcelist=...)``;
* ``stamina``: a bare client, each ``get`` wrapped in ``@stamina.retry(on=httpx.HTTPError, attempts=3)``;
* ``httpx (control)``: a second bare client, measured like the others: how far it lands from ``httpx`` is the
  noise floor of a run.

httpx-retries and stamina are optional: :func:`available` says whether a contender can be built here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

import connectivity as cx

__all__ = [
    "BARE",
    "BREAKER_STACK",
    "CONTENDERS",
    "CONTROL",
    "DEFAULTS",
    "DESCRIPTIONS",
    "FULL_STACK",
    "HTTPX_RETRIES",
    "RETRY_ONLY",
    "RETRY_STATUSES",
    "STAMINA",
    "AsyncGet",
    "SyncGet",
    "async_get",
    "available",
    "sync_get",
]

BARE = "httpx"
FULL_STACK = "connectivity (full)"
"""Retries, a total deadline and a retry budget: the resilience stack with nothing else."""
BREAKER_STACK = "connectivity (+breaker)"
"""The full stack plus a per-host circuit breaker and a bulkhead."""
DEFAULTS = "connectivity (defaults)"
"""The full stack with ``cx.transport``'s defaults: tracing (no SDK) and request ids on."""
RETRY_ONLY = "connectivity (retry)"
HTTPX_RETRIES = "httpx-retries"
STAMINA = "stamina"
CONTROL = "httpx (control)"
"""A second bare client: its distance from ``httpx`` is the measurement's noise floor in that run."""
CONTENDERS = (BARE, FULL_STACK, BREAKER_STACK, DEFAULTS, RETRY_ONLY, HTTPX_RETRIES, STAMINA, CONTROL)
"""Every contender, the baseline first and its control twin last."""

RETRY_STATUSES = frozenset({429, 502, 503, 504})

DESCRIPTIONS = {
    BARE: "httpx.AsyncClient() / httpx.Client()",
    FULL_STACK: "cx.transport(timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget()), "
    "telemetry=False, request_id=False)",
    BREAKER_STACK: "the full stack plus breaker=cx.CircuitBreaker(), bulkhead=cx.Bulkhead()",
    DEFAULTS: "cx.transport(timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget())): tracing "
    "(no SDK) and request ids on, as built by default",
    RETRY_ONLY: "cx.transports.RetryTransport(cx.transports.HTTPTransport(), cx.Retry()): 3 attempts, "
    "no budget, no deadline",
    HTTPX_RETRIES: "httpx_retries.RetryTransport(retry=Retry(total=2, backoff_factor=0.025, "
    "max_backoff_wait=0.25, status_forcelist=[429, 502, 503, 504]))",
    STAMINA: "@stamina.retry(on=httpx.HTTPError, attempts=3, timeout=10.0) around client.get",
    CONTROL: "a second bare client, the same as httpx: shows the noise floor",
}

SyncGet = Callable[[str], httpx.Response]
AsyncGet = Callable[[str], Awaitable[httpx.Response]]

_OPTIONAL = {HTTPX_RETRIES: "httpx_retries", STAMINA: "stamina"}
# Backoff of the retrying peers (never reached on the success path, but the same job for all).
_WAIT_INITIAL = 0.025
_WAIT_MAX = 0.25


def available(name: str) -> bool:
    """Whether contender ``name`` can be built here (httpx-retries and stamina are optional)."""
    if name not in CONTENDERS:
        raise ValueError(f"unknown contender {name!r}; expected one of {', '.join(CONTENDERS)}")
    module = _OPTIONAL.get(name)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _transport(name: str, *, sync: bool) -> httpx.BaseTransport | httpx.AsyncBaseTransport | None:
    """The transport of contender ``name`` (``None``: httpx's default one)."""
    if name in (FULL_STACK, BREAKER_STACK, DEFAULTS):
        options: dict[str, Any] = {"timeout": cx.Timeout(total=10.0), "retry": cx.Retry(budget=cx.RetryBudget())}
        if name != DEFAULTS:
            options.update(telemetry=False, request_id=False)
        if name == BREAKER_STACK:
            options.update(breaker=cx.CircuitBreaker(), bulkhead=cx.Bulkhead())
        return cx.transport(**options)
    if name == RETRY_ONLY:
        return cx.transports.RetryTransport(cx.transports.HTTPTransport(), cx.Retry())
    if name == HTTPX_RETRIES:
        import httpx_retries

        inner: Any = httpx.HTTPTransport() if sync else httpx.AsyncHTTPTransport()
        return httpx_retries.RetryTransport(
            transport=inner,
            retry=httpx_retries.Retry(
                total=2, backoff_factor=_WAIT_INITIAL, max_backoff_wait=_WAIT_MAX, status_forcelist=RETRY_STATUSES
            ),
        )
    return None


def sync_get(name: str, stack: contextlib.ExitStack) -> SyncGet:
    """Contender ``name``'s ``get(url)`` on a new :class:`httpx.Client` that ``stack`` closes.

    Raises:
        ValueError: Unknown contender.
        ImportError: The contender's library is not installed (see :func:`available`).
    """
    available(name)
    transport: Any = _transport(name, sync=True)
    client = stack.enter_context(httpx.Client(transport=transport, trust_env=False))
    if name != STAMINA:
        return client.get
    import stamina

    @stamina.retry(on=httpx.HTTPError, attempts=3, timeout=10.0, wait_initial=_WAIT_INITIAL, wait_max=_WAIT_MAX)
    def stamina_get(url: str) -> httpx.Response:
        response = client.get(url)
        if response.status_code in RETRY_STATUSES:
            response.raise_for_status()
        return response

    return stamina_get


async def async_get(name: str, stack: contextlib.AsyncExitStack) -> AsyncGet:
    """Contender ``name``'s ``get(url)`` on a new :class:`httpx.AsyncClient` that ``stack`` closes.

    Raises:
        ValueError: Unknown contender.
        ImportError: The contender's library is not installed (see :func:`available`).
    """
    available(name)
    transport: Any = _transport(name, sync=False)
    client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, trust_env=False))
    if name != STAMINA:
        return client.get
    import stamina

    @stamina.retry(on=httpx.HTTPError, attempts=3, timeout=10.0, wait_initial=_WAIT_INITIAL, wait_max=_WAIT_MAX)
    async def stamina_get(url: str) -> httpx.Response:
        response = await client.get(url)
        if response.status_code in RETRY_STATUSES:
            response.raise_for_status()
        return response

    return stamina_get
