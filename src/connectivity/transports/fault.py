"""Fault injection as a transport: delays and aborts on a share of outbound requests (Envoy's fault filter).

Theory of operation: every decision lives in :class:`connectivity.routing.FaultInjection` (which requests, which
fault, how many at once); this layer only acts on the answer. A delay waits on the injected clock before the
request goes on (an async delay is cancellable, so an outer deadline still fires on time; with
:class:`~connectivity.testing.FakeClock` it costs no real time). An abort replaces the call: an HTTP status
answers with a ``text/plain`` body ``fault filter abort`` (as Envoy does) without touching the network, and a
connection error raises :class:`httpx.ConnectError`, which retry layers and breakers outside treat as a refused
connection. The fault chosen is recorded in ``response.extensions["connectivity.fault"]`` (a
:class:`~connectivity.routing.FaultDecision`) and emitted as a ``connectivity.fault.injected`` policy event.

A faulted request counts against ``max_active_faults`` from the decision until this layer returns (the response
head arrived, or the call failed or was cancelled).

Place it where the fault should be felt: outermost to test the caller's own handling, inside a retry layer to
test that the retries absorb it.
"""

from __future__ import annotations

import random as _random
from typing import Final

from connectivity._http import httpx
from connectivity.errors import ConfigError
from connectivity.policies.clock import SYSTEM_CLOCK, Clock
from connectivity.routing.fault import FaultDecision, FaultInjection
from connectivity.telemetry import semconv
from connectivity.telemetry.events import FAULT_INJECTED, emit
from connectivity.transports._base import Inner, Layer

__all__ = ["ABORT_BODY", "FAULT_EXTENSION", "FaultInjectionTransport"]

FAULT_EXTENSION: Final = "connectivity.fault"
"""Request extension: a :class:`FaultInjection` to use for this request instead, or ``False`` for none.
Response extension: the :class:`FaultDecision` applied (absent when no fault was injected)."""
ABORT_BODY: Final = b"fault filter abort"


class FaultInjectionTransport(Layer):
    """Inject delays and aborts into a share of the requests, by Envoy's fault filter rules.

    Args:
        inner: The transport to call.
        fault: The policy: which requests, which faults, how many at once.
        rng: Random number generator for the percentage draws (seed it in tests).
        clock: Time source for delays (``FakeClock`` in tests).

    .. versionadded:: 0.1
    """

    __slots__ = ("_clock", "_fault", "_random")

    def __init__(
        self,
        inner: Inner,
        fault: FaultInjection,
        *,
        rng: _random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(inner)
        if not isinstance(fault, FaultInjection):
            raise ConfigError(
                "FaultInjectionTransport.fault", fault, "must be a connectivity.routing.FaultInjection"
            )
        self._fault = fault
        self._random = (rng if rng is not None else _random.Random()).random
        self._clock = clock

    @property
    def fault(self) -> FaultInjection:
        """The default policy."""
        return self._fault

    def describe(self) -> dict[str, object]:
        """What the status app shows for this layer."""
        fault = self._fault
        return {
            "delay": None if fault.delay is None else repr(fault.delay),
            "abort": None if fault.abort is None else repr(fault.abort),
            "max_active_faults": fault.max_active_faults,
            **fault.stats()._asdict(),
        }

    def _decide(self, request: httpx.Request) -> tuple[FaultInjection, FaultDecision] | None:
        fault = request.extensions.get(FAULT_EXTENSION, self._fault)
        if not fault:  # False turns injection off for this request
            return None
        decision = fault.decide(request.headers, self._random)
        if decision is None:
            return None
        if decision.delay is not None:
            emit(
                FAULT_INJECTED, {semconv.CONNECTIVITY_REASON: "delay", semconv.CONNECTIVITY_DELAY: decision.delay}
            )
        if decision.status is not None or decision.error is not None:
            emit(FAULT_INJECTED, {semconv.CONNECTIVITY_REASON: f"abort {decision.status or decision.error}"})
        return fault, decision

    @staticmethod
    def _abort(request: httpx.Request, decision: FaultDecision) -> httpx.Response:
        if decision.error is not None:
            raise httpx.ConnectError("connection refused (fault injected)", request=request)
        assert decision.status is not None
        return httpx.Response(
            decision.status,
            headers={"content-type": "text/plain", "content-length": str(len(ABORT_BODY))},
            content=ABORT_BODY,
            request=request,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._sync or self._sync_inner()
        found = self._decide(request)
        if found is None:
            return inner.handle_request(request)
        fault, decision = found
        try:
            if decision.delay:
                self._clock.sleep(decision.delay)
            if decision.status is not None or decision.error is not None:
                response = self._abort(request, decision)
            else:
                response = inner.handle_request(request)
        finally:
            fault.release()
        response.extensions[FAULT_EXTENSION] = decision
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._async or self._async_inner()
        found = self._decide(request)
        if found is None:
            return await inner.handle_async_request(request)
        fault, decision = found
        try:
            if decision.delay:
                await self._clock.asleep(decision.delay)
            if decision.status is not None or decision.error is not None:
                response = self._abort(request, decision)
            else:
                response = await inner.handle_async_request(request)
        finally:
            fault.release()
        response.extensions[FAULT_EXTENSION] = decision
        return response
