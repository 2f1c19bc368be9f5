"""Circuit breaking as a transport.

Every decision lives in :class:`connectivity.CircuitBreaker` and its circuits; this layer asks a circuit to admit
each call, classifies what came back (5xx and transport errors are failures, 4xx are not, a cancellation never
counts), and records it. A rejected call raises :class:`~connectivity.CircuitOpenError` without touching the
network.

Scope: one circuit for the whole client (``"client"``), one per upstream authority (``"host"``: ``host:port``), or
one per endpoint (``"endpoint"``: the endpoint a balancer below this layer chose, from
``request.extensions["connectivity.endpoint"]``, else the authority).

The success path of a local, closed circuit takes no lock and builds nothing: the circuit of a ``host`` scope is
found by the request's ``(host, port)`` in a table of the layer's own (the ``host:port`` key string is built once
per host, when its circuit is first looked up), and a response below 400 that is not one of the breaker's failure
statuses is recorded as a success without asking the breaker to classify it (unless a slow-call threshold is set,
or the breaker's class classifies statuses its own way).

A ``pybreaker.CircuitBreaker`` is accepted as the policy for teams that already have one; its own semantics then
apply, with its caveats (it counts consecutive failures only, holds its lock for the whole call, and has no
half-open limit): see the circuit-breaking guide.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio

from connectivity._http import httpx
from connectivity.errors import CircuitOpenError
from connectivity.policies.breaker import (
    CANCELLED,
    FAILURE,
    SUCCESS,
    Circuit,
    CircuitBreaker,
    Rejection,
    Transition,
)
from connectivity.telemetry import events, semconv
from connectivity.telemetry.otel import track_breaker
from connectivity.transports._base import Inner, Layer

__all__ = ["CircuitBreakerTransport"]

Scope = Literal["client", "host", "endpoint"]
_SCOPES = ("client", "host", "endpoint")
ENDPOINT_EXTENSION = "connectivity.endpoint"


def _announce(transition: Transition) -> None:
    """Every breaker transition becomes a policy event (a span event, a metric, a line in the access log)."""
    events.emit(
        events.BREAKER_STATE_CHANGE,
        {
            semconv.CONNECTIVITY_BREAKER: transition.circuit,
            semconv.CONNECTIVITY_STATE_FROM: transition.from_state,
            semconv.CONNECTIVITY_STATE_TO: transition.to_state,
            semconv.CONNECTIVITY_REASON: transition.reason,
        },
    )


def _key(scope: str, request: httpx.Request) -> str:
    if scope == "client":
        return ""
    if scope == "endpoint":
        endpoint = request.extensions.get(ENDPOINT_EXTENSION)
        if endpoint:
            return str(endpoint)
    return request.url.netloc.decode("ascii")


class CircuitBreakerTransport(Layer):
    """Reject calls to a dependency that keeps failing; probe it; resume when it recovers.

    Args:
        inner: The transport to call.
        breaker: The policy: a :class:`connectivity.CircuitBreaker`, or a ``pybreaker.CircuitBreaker``.
        scope: ``"client"`` (one circuit), ``"host"`` (one per ``host:port``) or ``"endpoint"`` (one per endpoint
            chosen by a balancer below).
        backend: Shared state for many processes (e.g. ``connectivity.backends.RedisBreakerBackend``): its
            ``circuit(breaker, key)`` replaces the local circuits.

    Raises:
        CircuitOpenError: (from a call) The circuit is open, isolated, or half-open with every probe permit
            taken; nothing was sent. ``retry_after`` says when a probe may go.

    .. versionadded:: 0.1
    """

    __slots__ = ("_backend", "_breaker", "_by_host", "_failures", "_pybreaker", "_scope", "_single", "_slow")

    def __init__(
        self,
        inner: Inner,
        breaker: CircuitBreaker | Any,
        *,
        scope: Scope = "client",
        backend: Any = None,
    ) -> None:
        super().__init__(inner)
        if scope not in _SCOPES:
            raise ValueError(f"scope must be one of {', '.join(_SCOPES)}, got {scope!r}")
        self._scope = scope
        self._backend = backend
        self._pybreaker = None
        local = isinstance(breaker, CircuitBreaker)
        if local:
            breaker.add_listener(_announce)
            track_breaker(breaker)
            from connectivity.admin.registry import register

            register("breakers", breaker.name, breaker)
        elif _is_pybreaker(breaker):
            from connectivity.transports._pybreaker import PybreakerCircuit

            self._pybreaker = PybreakerCircuit(breaker)
        else:
            raise TypeError(
                f"breaker must be a connectivity.CircuitBreaker or a pybreaker.CircuitBreaker, "
                f"got {type(breaker).__name__}"
            )
        self._breaker = breaker
        # The common case, one local circuit for the client, is resolved once.
        self._single: Circuit | None = (
            breaker.circuit() if local and scope == "client" and backend is None else None
        )
        # Local circuits per host: found by (host, port), so no call builds the "host:port" key string.
        self._by_host: dict[tuple[bytes, int | None], Circuit] | None = (
            {} if local and scope == "host" and backend is None else None
        )
        self._slow = local and breaker.slow_call_threshold is not None
        # A status below 400 that is not a failure status is a success, unless calls can be slow or the breaker's
        # class classifies its own way: then every response is classified by the breaker (None).
        plain = local and not self._slow and type(breaker).classify_status is CircuitBreaker.classify_status
        self._failures: frozenset[int] | None = breaker.failure_statuses if plain else None

    @property
    def breaker(self) -> CircuitBreaker | Any:
        """The policy."""
        return self._breaker

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer."""
        name = getattr(self._breaker, "name", None) or type(self._breaker).__name__
        return {"breaker": name, "scope": self._scope, "shared": self._backend is not None}

    def _circuit(self, request: httpx.Request) -> Any:
        """The circuit of ``request`` when the layer has more than one (``_single`` is ``None``)."""
        hosts = self._by_host
        if hosts is not None:
            url = request.url
            where = (url.raw_host, url.port)
            found = hosts.get(where)
            if found is None:
                found = hosts[where] = self._breaker.circuit(_key("host", request))
            return found
        key = _key(self._scope, request)
        if self._backend is not None:
            return self._backend.circuit(self._breaker, key)
        return self._breaker.circuit(key)

    @staticmethod
    def _rejected(request: httpx.Request, rejection: Rejection) -> CircuitOpenError:
        after = "" if rejection.retry_after is None else f"; a probe may go in {rejection.retry_after:.3g} s"
        return CircuitOpenError(
            f"circuit {rejection.circuit} is {rejection.state}: {request.method} not sent{after}",
            request=request,
            breaker=rejection.circuit,
            state=rejection.state,
            retry_after=rejection.retry_after,
        )

    def _started(self) -> float | None:
        """When the call began, for a breaker with a slow-call threshold (``None`` otherwise)."""
        return self._breaker.clock.now() if self._slow else None

    def _outcome(self, response: httpx.Response, started: float | None) -> int:
        """The breaker's classification of a response (the callers decide plain successes inline)."""
        breaker: CircuitBreaker = self._breaker
        elapsed = None if started is None else breaker.clock.now() - started
        return breaker.classify_status(response.status_code, elapsed)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        if self._pybreaker is not None:
            return self._pybreaker.send(inner, request)
        circuit: Any = self._single or self._circuit(request)
        ticket = circuit.admit()
        if type(ticket) is not int:
            raise self._rejected(request, ticket)
        started = self._started() if self._slow else None
        try:
            response = inner.handle_request(request)
        except Exception:
            circuit.record(ticket, FAILURE)
            raise
        except BaseException:
            circuit.record(ticket, CANCELLED)
            raise
        status = response.status_code
        failures = self._failures
        if failures is not None and status < 400 and status not in failures:
            circuit.record(ticket, SUCCESS)  # a plain success: no classification needed
        else:
            circuit.record(ticket, self._outcome(response, started))
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        if self._pybreaker is not None:
            return await self._pybreaker.asend(inner, request)
        circuit: Any = self._single or self._circuit(request)
        if self._backend is not None and getattr(circuit, "remote", False):
            return await self._remote(inner, circuit, request)
        ticket = circuit.admit()
        if type(ticket) is not int:
            raise self._rejected(request, ticket)
        started = self._started() if self._slow else None
        try:
            response = await inner.handle_async_request(request)
        except Exception:
            circuit.record(ticket, FAILURE)
            raise
        except BaseException:  # cancellation (a hedge that lost, a caller that went away) never counts
            circuit.record(ticket, CANCELLED)
            raise
        status = response.status_code
        failures = self._failures
        if failures is not None and status < 400 and status not in failures:
            circuit.record(ticket, SUCCESS)  # a plain success: no classification needed
        else:
            circuit.record(ticket, self._outcome(response, started))
        return response

    async def _remote(
        self, inner: httpx.AsyncBaseTransport, circuit: Any, request: httpx.Request
    ) -> httpx.Response:
        """A call through a shared circuit whose decisions are awaited (e.g. in Redis)."""
        ticket = await circuit.aadmit()
        if type(ticket) is not int:
            raise self._rejected(request, ticket)
        started = self._started()
        try:
            response = await inner.handle_async_request(request)
        except Exception:
            outcome = FAILURE
            raise
        except BaseException:  # cancellation (a hedge that lost, a caller that went away) never counts
            outcome = CANCELLED
            raise
        else:
            outcome = self._outcome(response, started)
        finally:
            # Shielded: a cancelled probe must still hand its permit back (bounded by the backend's timeout).
            with anyio.CancelScope(shield=True):
                await circuit.arecord(ticket, outcome)
        return response


def _is_pybreaker(breaker: object) -> bool:
    module = type(breaker).__module__
    return module.split(".")[0] == "pybreaker" and hasattr(breaker, "calling")
