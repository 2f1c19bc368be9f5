"""Live per-endpoint load: requests in flight and a peak-EWMA latency estimate.

Theory of operation: an :class:`EndpointStats` belongs to one endpoint of an
:class:`~connectivity.balancing.EndpointSet` lineage and survives every snapshot that still holds the endpoint,
so in-flight counts and latency history carry over when discovery or health changes. The transport calls
:meth:`~EndpointStats.start` when it sends a request to the endpoint and :meth:`~EndpointStats.finish` when the
response (or the failure) comes back.

The latency estimate is *peak EWMA*, as Finagle's ``PeakEwma`` and Linkerd's (tower's) ``PeakEwma`` keep it:

- between samples the estimate decays towards zero, ``E(t) = E * exp(-(t - t_last) / decay)``: an endpoint the
  balancer has been avoiding looks better and better until it is tried again (Finagle decays on every ``load``
  read; here the decay is computed on read, so the value does not depend on how often it is read);
- a sample above the current estimate replaces it at once (the *peak*: one slow response is believed at once);
- a sample below it is blended in: ``E = E(t) * w + sample * (1 - w)`` with ``w = exp(-(t - t_last) / decay)``,
  so the estimate comes down over about ``decay`` seconds of fast responses, whatever their number.

The *cost* a P2C picker compares is ``E(t) * (in_flight + 1)`` (Finagle, Linkerd). An endpoint without a sample
yet costs ``0`` while it is idle, so a new endpoint gets a first request at once, and ``penalty * (in_flight + 1)``
while that request is out (Finagle's ``Penalty``): it is not flooded before it has answered once.

All counters of one lineage share one lock (held for a few operations) and a total of requests in flight, which
bounded-load hashing reads in O(1). Reads (``in_flight``, :meth:`~EndpointStats.cost`) take no lock.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

from connectivity.policies._validate import finite_positive
from connectivity.policies.clock import Clock

if TYPE_CHECKING:
    from connectivity.discovery.endpoint import Endpoint

__all__ = ["DEFAULT_DECAY", "DEFAULT_PENALTY", "EndpointStats"]

DEFAULT_DECAY = 10.0
"""Seconds: the peak-EWMA decay time (Finagle's ``decayTime`` and Linkerd's default, 10 s)."""

DEFAULT_PENALTY = 10.0
"""Seconds: the latency assumed for an endpoint that has a request in flight but no sample yet."""

_exp = math.exp


class _Lineage:
    """What every stats object of one endpoint-set lineage shares: the clock, the EWMA settings, one lock and
    the total of requests in flight."""

    __slots__ = ("clock", "decay", "in_flight", "lock", "now", "penalty")

    def __init__(self, clock: Clock, decay: float, penalty: float) -> None:
        self.clock = clock
        self.now = clock.now
        self.decay = finite_positive("EndpointSet.decay", decay)
        self.penalty = finite_positive("EndpointSet.penalty", penalty)
        self.lock = threading.Lock()
        self.in_flight = 0


class EndpointStats:
    """One endpoint's live load: requests in flight and its peak-EWMA latency (see the module docstring).

    Created by :class:`~connectivity.balancing.EndpointSet`; look one up with ``endpoints.stats(key)``.
    Thread-safe.

    Attributes:
        endpoint: The endpoint (the latest version of it, when discovery changed its weight or zone).
        in_flight: Requests started and not yet finished.
        added_at: When the endpoint joined the set, on the set's clock (``-inf`` for the endpoints of the first
            snapshot, which are taken as established); slow start counts from here.

    .. versionadded:: 0.1
    """

    __slots__ = ("_estimate", "_lineage", "_sampled", "_stamp", "added_at", "endpoint", "in_flight", "key")

    def __init__(self, endpoint: Endpoint, lineage: _Lineage, added_at: float) -> None:
        self.endpoint = endpoint
        self.key = endpoint.key
        self.in_flight = 0
        self.added_at = added_at
        self._lineage = lineage
        self._estimate = 0.0
        self._stamp = 0.0
        self._sampled = False

    # -- the transport's side -------------------------------------------------------------------------------

    def start(self) -> float:
        """Count a request sent to the endpoint; returns its start time (pass it to :meth:`finish`)."""
        lineage = self._lineage
        with lineage.lock:
            self.in_flight += 1
            lineage.in_flight += 1
        return lineage.now()

    def finish(self, started: float, *, latency: float | None = None, observe: bool = True) -> None:
        """Count the end of a request started at ``started``.

        Args:
            started: What :meth:`start` returned.
            latency: The latency to record, in seconds (default: the time since ``started``).
            observe: Whether to feed the latency to the estimate. Pass ``False`` for outcomes that say nothing
                about the endpoint's speed: a cancelled call, or a connection refused in a microsecond (a
                failing endpoint must not look fast; outlier detection deals with failures).
        """
        lineage = self._lineage
        now = lineage.now()
        with lineage.lock:
            if self.in_flight > 0:
                self.in_flight -= 1
                lineage.in_flight -= 1
            if observe:
                self._observe(now - started if latency is None else latency, now)

    def observe(self, latency: float) -> None:
        """Feed one latency sample (seconds) to the estimate without touching the in-flight count."""
        lineage = self._lineage
        now = lineage.now()
        with lineage.lock:
            self._observe(latency, now)

    def _observe(self, sample: float, now: float) -> None:
        sample = max(sample, 0.0)
        if not self._sampled:
            self._estimate = sample
            self._sampled = True
        else:
            elapsed = now - self._stamp
            weight = _exp(-elapsed / self._lineage.decay) if elapsed > 0 else 1.0
            current = self._estimate * weight
            # The peak: a slower sample is believed at once; a faster one is blended in by elapsed time.
            self._estimate = sample if sample > current else current * weight + sample * (1.0 - weight)
        self._stamp = now

    # -- the picker's side ----------------------------------------------------------------------------------

    def latency(self, now: float | None = None) -> float | None:
        """The current latency estimate in seconds (decayed to ``now``), or ``None`` before the first sample."""
        if not self._sampled:
            return None
        if now is None:
            now = self._lineage.now()
        elapsed = now - self._stamp
        return self._estimate * _exp(-elapsed / self._lineage.decay) if elapsed > 0 else self._estimate

    def cost(self, now: float) -> float:
        """What P2C-EWMA compares: the latency estimate times ``in_flight + 1`` (see the module docstring)."""
        pending = self.in_flight
        if not self._sampled:
            return 0.0 if pending <= 0 else self._lineage.penalty * (pending + 1)
        elapsed = now - self._stamp
        estimate = self._estimate * _exp(-elapsed / self._lineage.decay) if elapsed > 0 else self._estimate
        return estimate * (pending + 1)

    def status(self) -> dict[str, object]:
        """What a status page shows for this endpoint."""
        latency = self.latency()
        return {
            "endpoint": self.key,
            "in_flight": self.in_flight,
            "latency_ms": None if latency is None else round(latency * 1000.0, 3),
            "added_at": self.added_at,
        }

    def __repr__(self) -> str:
        latency = self.latency()
        shown = "-" if latency is None else f"{latency * 1000.0:.3g}ms"
        return f"EndpointStats({self.key}, in_flight={self.in_flight}, latency={shown})"
