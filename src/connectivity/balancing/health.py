"""Active health checking: Envoy's HTTP health checker as configuration and a pure state machine.

Theory of operation: a :class:`HealthCheck` is frozen, validated configuration; a :class:`HealthChecker` holds
the state of one endpoint set (one per load-balancing transport) and does no I/O. The transport's background loop
asks it which endpoints are :meth:`~HealthChecker.due` for a probe, sends each a ``GET <path>`` with the
configured timeout, and hands the outcome back to :meth:`~HealthChecker.record`, which answers with a
:class:`HealthTransition` when the endpoint changes state. Time comes from the injected clock, so tests drive
every interval in virtual time.

The rules are Envoy's (``config.core.v3.HealthCheck`` and its ``health_checker_base_impl.cc``):

- **Outcomes.** A status in ``expected_statuses`` (default: only 200) is a *success*. A status in
  ``retriable_statuses`` and any network failure (refused, reset, timed out) is a *network* failure, which counts
  towards ``unhealthy_threshold``. Any other status is a plain *failure*: the endpoint is asking to be taken out,
  and a healthy one turns unhealthy at once, whatever the threshold.
- **Thresholds.** A healthy endpoint turns unhealthy after ``unhealthy_threshold`` network failures in a row (or
  one plain failure); an unhealthy one turns healthy after ``healthy_threshold`` successes in a row. Any result
  of the other kind resets the count.
- **The first check decides.** An endpoint's first result moves it at once, in either direction ("during
  startup, only a single successful health check is required to mark a host healthy").
- **Starting state.** Endpoints that join a running set start *unhealthy* until their first check passes (Envoy
  marks new hosts ``FAILED_ACTIVE_HC``). The endpoints of the first resolution start *healthy*: Envoy keeps a new
  cluster warming (unused) until its first round of checks completes; a client library cannot hold its first
  requests back that way, so it trusts the initial list, as it does for slow start, and the first check (sent at
  once) corrects it.
- **Intervals.** After a success, the next check comes ``healthy_edge_interval`` later while a transition to
  healthy is pending, else ``interval``; after a failure, ``unhealthy_edge_interval`` while a transition is
  pending, else ``unhealthy_interval``. Until the first request has been sent through the transport,
  ``no_traffic_interval`` (60 s, as in Envoy) applies instead; the first request pulls every later check in to
  ``interval``. ``interval_jitter`` (seconds) and ``interval_jitter_percent`` add random jitter to each wait, and
  ``initial_jitter`` delays an endpoint's first check.

Envoy requires ``interval``, ``timeout`` and both thresholds and has no defaults for them; the defaults here are
5 s, 1 s, 3 and 2 (Kubernetes' probe timeout and ``failureThreshold``; ``healthy_threshold=2`` so that one lucky
answer does not return a flapping endpoint). An endpoint that passes its checks while ejected by outlier
detection is returned to service (Envoy's ``successful_active_health_check_uneject_host``, default true), unless
``uneject_outliers=False``: the transport does that with
:meth:`OutlierDetector.uneject <connectivity.policies.outlier.OutlierDetector.uneject>`.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from connectivity.errors import ConfigError
from connectivity.policies._validate import at_least_int, finite_non_negative, finite_positive
from connectivity.policies.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "FAILURE",
    "NETWORK",
    "SUCCESS",
    "HealthCheck",
    "HealthChecker",
    "HealthTransition",
    "Outcome",
]

SUCCESS: Final = "success"
"""A check answered with an expected status."""
FAILURE: Final = "failure"
"""A check answered with a status that is neither expected nor retriable: unhealthy at once."""
NETWORK: Final = "network"
"""A check failed on the network (refused, reset, timed out) or answered a retriable status: counted."""

Outcome = Literal["success", "failure", "network"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_EMPTY: Mapping[str, str] = MappingProxyType({})


def _statuses(name: str, value: object) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(name, value, "must be a collection of HTTP status codes (e.g. range(200, 300))")
    found = frozenset(value)
    for status in found:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ConfigError(name, value, "must contain only HTTP status codes from 100 to 599")
    return found


def _optional_interval(name: str, value: float | None) -> None:
    if value is not None:
        finite_positive(name, value)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class HealthCheck:
    """How to health check the endpoints of a service actively (Envoy's HTTP health check; see the module
    docstring for the rules).

    Args:
        path: The path to ``GET`` (Envoy ``http_health_check.path``).
        interval: Seconds between checks of a healthy endpoint.
        timeout: Seconds a check may take; a slower one is a network failure.
        unhealthy_threshold: Network failures in a row that make a healthy endpoint unhealthy.
        healthy_threshold: Successes in a row that make an unhealthy endpoint healthy.
        unhealthy_interval: Seconds between checks of an unhealthy endpoint (default: ``interval``).
        unhealthy_edge_interval: The wait after a failure while a transition to unhealthy is pending (default:
            ``unhealthy_interval``).
        healthy_edge_interval: The wait after a success while a transition to healthy is pending (default:
            ``interval``).
        no_traffic_interval: Seconds between checks until the first request is sent (Envoy's default 60 s);
            ``None`` uses the normal intervals from the start.
        interval_jitter: Up to this many random seconds are added to each wait.
        interval_jitter_percent: Up to this percentage of the wait is added to it at random.
        initial_jitter: An endpoint's first check is delayed by up to this many random seconds.
        expected_statuses: Statuses that pass (Envoy's default: only 200).
        retriable_statuses: Statuses that count towards ``unhealthy_threshold`` instead of failing at once.
        method: The HTTP method (Envoy sends ``GET``; ``HEAD`` also works with most servers).
        headers: Extra request headers.
        host: The ``Host`` header (and TLS server name): default the service name, as Envoy uses the cluster's.
        scheme: ``"http"`` or ``"https"`` (over TLS, certificates are checked against ``host``).
        uneject_outliers: Return an endpoint that outlier detection ejected as soon as it passes a check while
            healthy (Envoy's ``successful_active_health_check_uneject_host``, default true).
        rng: Randomness for jitter (inject a seeded :class:`random.Random` in tests).

    Raises:
        ConfigError: A field is invalid; ``field`` names it.

    .. versionadded:: 0.1
    """

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    unhealthy_interval: float | None = None
    unhealthy_edge_interval: float | None = None
    healthy_edge_interval: float | None = None
    no_traffic_interval: float | None = 60.0
    interval_jitter: float = 0.0
    interval_jitter_percent: float = 0.0
    initial_jitter: float = 0.0
    expected_statuses: Collection[int] = frozenset({200})
    retriable_statuses: Collection[int] = frozenset()
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    host: str | None = None
    scheme: Literal["http", "https"] = "http"
    uneject_outliers: bool = True
    rng: random.Random | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        name = "HealthCheck."
        if not isinstance(self.path, str) or not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise ConfigError(name + "path", self.path, "must be an absolute path such as '/healthz'")
        finite_positive(name + "interval", self.interval)
        finite_positive(name + "timeout", self.timeout)
        at_least_int(name + "unhealthy_threshold", self.unhealthy_threshold, 1)
        at_least_int(name + "healthy_threshold", self.healthy_threshold, 1)
        for option in (
            "unhealthy_interval",
            "unhealthy_edge_interval",
            "healthy_edge_interval",
            "no_traffic_interval",
        ):
            _optional_interval(name + option, getattr(self, option))
        finite_non_negative(name + "interval_jitter", self.interval_jitter)
        finite_non_negative(name + "initial_jitter", self.initial_jitter)
        if not 0 <= finite_non_negative(name + "interval_jitter_percent", self.interval_jitter_percent) <= 100:
            raise ConfigError(name + "interval_jitter_percent", self.interval_jitter_percent, "must be 0 to 100")
        object.__setattr__(
            self, "expected_statuses", _statuses(name + "expected_statuses", self.expected_statuses)
        )
        object.__setattr__(
            self, "retriable_statuses", _statuses(name + "retriable_statuses", self.retriable_statuses)
        )
        if not self.expected_statuses:
            raise ConfigError(name + "expected_statuses", self.expected_statuses, "must not be empty")
        if not isinstance(self.method, str) or not _TOKEN.fullmatch(self.method):
            raise ConfigError(name + "method", self.method, "must be an HTTP method such as 'GET'")
        object.__setattr__(self, "method", self.method.upper())
        headers = self.headers
        if headers is not _EMPTY:
            if not isinstance(headers, Mapping) or not all(
                isinstance(k, str) and _TOKEN.fullmatch(k) and isinstance(v, str) and "\n" not in v
                for k, v in headers.items()
            ):
                raise ConfigError(name + "headers", headers, "must map header names to single-line strings")
            object.__setattr__(self, "headers", MappingProxyType(dict(headers)))
        host = self.host
        if host is not None and (
            not isinstance(host, str) or not host.strip() or any(c in host for c in " \r\n/")
        ):
            raise ConfigError(name + "host", host, "must be a host name (with an optional port), or None")
        if self.scheme not in ("http", "https"):
            raise ConfigError(name + "scheme", self.scheme, "must be 'http' or 'https'")
        if not isinstance(self.uneject_outliers, bool):
            raise ConfigError(name + "uneject_outliers", self.uneject_outliers, "must be a bool")
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise ConfigError(name + "rng", self.rng, "must be a random.Random or None")

    def outcome(self, status: int) -> Outcome:
        """How a check that answered ``status`` counts: :data:`SUCCESS`, :data:`NETWORK` or :data:`FAILURE`."""
        if status in self.expected_statuses:  # expected wins over retriable, as in Envoy
            return SUCCESS
        return NETWORK if status in self.retriable_statuses else FAILURE


@dataclass(frozen=True, slots=True)
class HealthTransition:
    """An endpoint changed state (returned by :meth:`HealthChecker.record`).

    Attributes:
        key: The endpoint's key.
        healthy: The new state.
        reason: Why, for people: ``"first check passed"``, ``"2 checks passed"``, ``"status 503"``, ...
        at: The clock reading.

    .. versionadded:: 0.1
    """

    key: str
    healthy: bool
    reason: str
    at: float


class _Target:
    """One endpoint's check state."""

    __slots__ = ("checking", "checks", "failures", "first", "healthy", "last", "next_at", "successes")

    def __init__(self, healthy: bool, next_at: float) -> None:
        self.healthy = healthy
        self.first = True
        self.successes = 0  # in a row, towards healthy_threshold
        self.failures = 0  # network failures in a row, towards unhealthy_threshold
        self.next_at = next_at
        self.checking = False
        self.checks = 0
        self.last = ""


class HealthChecker:
    """The health-check state of one endpoint set (see the module docstring). Thread-safe; no I/O.

    Args:
        check: The configuration.
        clock: Time source (inject :class:`~connectivity.testing.FakeClock` in tests).

    .. versionadded:: 0.1
    """

    __slots__ = ("_lock", "_random", "_targets", "_traffic", "check", "clock")

    def __init__(self, check: HealthCheck, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if not isinstance(check, HealthCheck):
            raise TypeError(f"check must be a HealthCheck, got {type(check).__name__}")
        self.check = check
        self.clock = clock
        self._lock = threading.Lock()
        self._random = check.rng if check.rng is not None else random.Random()
        self._targets: dict[str, _Target] = {}
        self._traffic = check.no_traffic_interval is None

    # -- membership and traffic ------------------------------------------------------------------------------

    def update(self, keys: Iterable[str], *, healthy: bool = False) -> None:
        """Check exactly ``keys`` from now on: new ones start in state ``healthy`` (see the module docstring) with
        a first check due now (plus ``initial_jitter``); keys that left are forgotten."""
        wanted = dict.fromkeys(keys)
        now = self.clock.now()
        jitter = self.check.initial_jitter
        with self._lock:
            targets = self._targets
            for key in [key for key in targets if key not in wanted]:
                del targets[key]
            for key in wanted:
                if key not in targets:
                    delay = self._random.uniform(0.0, jitter) if jitter else 0.0
                    targets[key] = _Target(healthy, now + delay)

    def traffic(self) -> None:
        """The first request went out: leave ``no_traffic_interval`` and pull later checks in to ``interval``."""
        if self._traffic:
            return
        latest = self.clock.now() + self.check.interval
        with self._lock:
            self._traffic = True
            for target in self._targets.values():
                target.next_at = min(target.next_at, latest)

    # -- scheduling ---------------------------------------------------------------------------------------------

    def due(self) -> list[str]:
        """The endpoints whose check is due now; each is marked as being checked until its :meth:`record`."""
        now = self.clock.now()
        found = []
        with self._lock:
            for key, target in self._targets.items():
                if not target.checking and target.next_at <= now:
                    target.checking = True
                    found.append(key)
        return found

    def next_check(self) -> float:
        """The clock time of the next check due (``inf`` when every endpoint is being checked, or none is set)."""
        with self._lock:
            return min(
                (target.next_at for target in self._targets.values() if not target.checking), default=math.inf
            )

    def record(self, key: str, outcome: Outcome, detail: str = "") -> HealthTransition | None:
        """Count one check's outcome and schedule the next check.

        Args:
            key: The endpoint's key (a key no longer checked is ignored).
            outcome: :data:`SUCCESS`, :data:`NETWORK` or :data:`FAILURE` (see :meth:`HealthCheck.outcome`).
            detail: What happened, for people (``"status 503"``, ``"ConnectError"``).

        Returns:
            The transition, when the endpoint changed state; else ``None``.

        Raises:
            ValueError: ``outcome`` is not one of the three.
        """
        if outcome not in (SUCCESS, NETWORK, FAILURE):
            raise ValueError(f"outcome must be {SUCCESS!r}, {NETWORK!r} or {FAILURE!r}: {outcome!r}")
        check = self.check
        now = self.clock.now()
        with self._lock:
            target = self._targets.get(key)
            if target is None:
                return None
            target.checking = False
            target.checks += 1
            target.last = detail or outcome
            first, target.first = target.first, False
            transition: HealthTransition | None = None
            pending = False
            if outcome == SUCCESS:
                target.failures = 0
                if not target.healthy:
                    target.successes += 1
                    if first or target.successes >= check.healthy_threshold:
                        target.healthy = True
                        target.successes = 0
                        reason = "first check passed" if first else f"{check.healthy_threshold} checks passed"
                        transition = HealthTransition(key, True, reason, now)
                    else:
                        pending = True
                wait = check.healthy_edge_interval if pending else check.interval
                wait = check.interval if wait is None else wait
            else:
                target.successes = 0
                if target.healthy:
                    target.failures += 1
                    if first or outcome == FAILURE or target.failures >= check.unhealthy_threshold:
                        target.healthy = False
                        target.failures = 0
                        transition = HealthTransition(key, False, detail or outcome, now)
                    else:
                        pending = True
                steady = check.unhealthy_interval if check.unhealthy_interval is not None else check.interval
                edge = check.unhealthy_edge_interval
                wait = (edge if edge is not None else steady) if pending else steady
            if not self._traffic and check.no_traffic_interval is not None:
                wait = check.no_traffic_interval
            target.next_at = now + self._jittered(wait)
            return transition

    def _jittered(self, wait: float) -> float:
        check = self.check
        extra = 0.0
        if check.interval_jitter_percent:
            extra += self._random.uniform(0.0, wait * check.interval_jitter_percent / 100.0)
        if check.interval_jitter:
            extra += self._random.uniform(0.0, check.interval_jitter)
        return wait + extra

    # -- reading ------------------------------------------------------------------------------------------------

    def unhealthy(self) -> frozenset[str]:
        """The keys unhealthy now (with the ejected ones, what ``EndpointSet.with_unhealthy`` takes)."""
        with self._lock:
            return frozenset(key for key, target in self._targets.items() if not target.healthy)

    def is_healthy(self, key: str) -> bool:
        """Whether ``key`` is checked and healthy."""
        target = self._targets.get(key)
        return target is not None and target.healthy

    def __contains__(self, key: object) -> bool:
        return key in self._targets

    def __len__(self) -> int:
        return len(self._targets)

    def status(self) -> dict[str, object]:
        """What a status page shows: every endpoint's state, check count, last result and next check."""
        with self._lock:
            return {
                "traffic": self._traffic,
                "endpoints": {
                    key: {
                        "healthy": target.healthy,
                        "checks": target.checks,
                        "last": target.last,
                        "next_at": target.next_at,
                    }
                    for key, target in self._targets.items()
                },
            }

    def __repr__(self) -> str:
        unhealthy = sum(1 for target in self._targets.values() if not target.healthy)
        return f"HealthChecker({self.check.path!r}, endpoints={len(self._targets)}, unhealthy={unhealthy})"
