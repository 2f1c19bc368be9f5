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
* ``connectivity (+balancer)``: the full stack plus client-side load balancing: ``discovery=[<upstream
  host:port>]`` (one endpoint, the default EWMA picker), the requests addressed to the logical service
  (``http://upstream/``, see :func:`request_url`) instead of the upstream's address;
* ``connectivity (defaults)``: the full stack as ``cx.transport`` builds it by default, with the tracing layer (no
  OpenTelemetry SDK configured: the cost every user pays) and request-id propagation on top;
* ``connectivity (retry)``: ``cx.transports.RetryTransport(cx.transports.HTTPTransport(), cx.Retry())``: 3
  attempts, no budget, no deadline: the same job as httpx-retries;
* ``httpx-retries``: ``httpx_retries.RetryTransport`` with ``Retry(total=2, status_forcelist=...)``;
* ``stamina``: a bare client, each ``get`` wrapped in ``@stamina.retry(on=httpx.HTTPError, attempts=3)``;
* ``httpx (control)``: a second bare client, measured like the others: how far it lands from ``httpx`` is the
  noise floor of a run.

httpx-retries and stamina are optional: :func:`available` says whether a contender can be built here. Every
contender's ``get`` is called with :func:`request_url` of its name and the upstream's URL.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

import connectivity as cx

__all__ = [
    "BALANCED_STACK",
    "BARE",
    "BREAKER_STACK",
    "CONTENDERS",
    "CONTROL",
    "DEFAULTS",
    "DESCRIPTIONS",
    "FULL_STACK",
    "HTTPX_RETRIES",
    "NETWORK",
    "RETRY_ONLY",
    "RETRY_STATUSES",
    "SERVICE",
    "STAMINA",
    "AsyncGet",
    "SyncGet",
    "async_get",
    "available",
    "request_url",
    "sync_get",
]

BARE = "httpx"
NETWORK = "connectivity (network)"
"""connectivity's network transport alone: what the stacks above it are built on, with no policy layer."""
FULL_STACK = "connectivity (full)"
"""Retries, a total deadline and a retry budget: the resilience stack with nothing else."""
BREAKER_STACK = "connectivity (+breaker)"
"""The full stack plus a per-host circuit breaker and a bulkhead."""
BALANCED_STACK = "connectivity (+balancer)"
"""The full stack plus load balancing over one discovered endpoint (the upstream), addressed by service name."""
SERVICE = "upstream"
"""The logical service name the balanced contender's requests are addressed to."""
DEFAULTS = "connectivity (defaults)"
"""The full stack with ``cx.transport``'s defaults: tracing (no SDK) and request ids on."""
RETRY_ONLY = "connectivity (retry)"
HTTPX_RETRIES = "httpx-retries"
STAMINA = "stamina"
CONTROL = "httpx (control)"
"""A second bare client: its distance from ``httpx`` is the measurement's noise floor in that run."""
CONTENDERS = (
    BARE,
    NETWORK,
    FULL_STACK,
    BREAKER_STACK,
    BALANCED_STACK,
    DEFAULTS,
    RETRY_ONLY,
    HTTPX_RETRIES,
    STAMINA,
    CONTROL,
)
"""Every contender, the baseline first and its control twin last."""

RETRY_STATUSES = frozenset({429, 502, 503, 504})

DESCRIPTIONS = {
    BARE: "httpx.AsyncClient() / httpx.Client()",
    NETWORK: "cx.transports.HTTPTransport(): the network transport every stack here ends in, with no policy",
    FULL_STACK: "cx.transport(timeout=cx.Timeout(total=10.0), retry=cx.Retry(budget=cx.RetryBudget()), "
    "telemetry=False, request_id=False)",
    BREAKER_STACK: "the full stack plus breaker=cx.CircuitBreaker(), bulkhead=cx.Bulkhead()",
    BALANCED_STACK: f"the full stack plus discovery=['<upstream host:port>'], service={SERVICE!r} (default EWMA "
    f"picker); requests to http://{SERVICE}/",
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


def request_url(name: str, upstream: str) -> str:
    """The URL contender ``name`` sends its requests to, given the upstream's (the service's, when balanced)."""
    return f"http://{SERVICE}/" if name == BALANCED_STACK else upstream


def _endpoint(upstream: str | None) -> str:
    """``host:port`` of the upstream URL, the balanced contender's one discovered endpoint."""
    if upstream is None:
        raise ValueError(f"{BALANCED_STACK} needs the upstream's URL to discover it")
    netloc = urllib.parse.urlsplit(upstream).netloc
    if not netloc:
        raise ValueError(f"not an absolute URL: {upstream!r}")
    return netloc


def _transport(
    name: str, *, sync: bool, upstream: str | None = None
) -> httpx.BaseTransport | httpx.AsyncBaseTransport | None:
    """The transport of contender ``name`` (``None``: httpx's default one)."""
    if name in (FULL_STACK, BREAKER_STACK, BALANCED_STACK, DEFAULTS):
        options: dict[str, Any] = {"timeout": cx.Timeout(total=10.0), "retry": cx.Retry(budget=cx.RetryBudget())}
        if name != DEFAULTS:
            options.update(telemetry=False, request_id=False)
        if name == BREAKER_STACK:
            options.update(breaker=cx.CircuitBreaker(), bulkhead=cx.Bulkhead())
        if name == BALANCED_STACK:
            options.update(discovery=[_endpoint(upstream)], service=SERVICE)
        return cx.transport(**options)
    if name == NETWORK:
        return cx.transports.HTTPTransport()
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


def sync_get(name: str, stack: contextlib.ExitStack, upstream: str | None = None) -> SyncGet:
    """Contender ``name``'s ``get(url)`` on a new :class:`httpx.Client` that ``stack`` closes.

    ``upstream`` (the upstream's URL) is needed by the balanced contender, which discovers it as its endpoint;
    call ``get`` with :func:`request_url`.

    Raises:
        ValueError: Unknown contender, or the balanced one without ``upstream``.
        ImportError: The contender's library is not installed (see :func:`available`).
    """
    available(name)
    transport: Any = _transport(name, sync=True, upstream=upstream)
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


async def async_get(name: str, stack: contextlib.AsyncExitStack, upstream: str | None = None) -> AsyncGet:
    """Contender ``name``'s ``get(url)`` on a new :class:`httpx.AsyncClient` that ``stack`` closes (see
    :func:`sync_get` for ``upstream``).

    Raises:
        ValueError: Unknown contender, or the balanced one without ``upstream``.
        ImportError: The contender's library is not installed (see :func:`available`).
    """
    available(name)
    transport: Any = _transport(name, sync=False, upstream=upstream)
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
