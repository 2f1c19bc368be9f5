"""HAProxy as a sidecar: a :class:`~connectivity.compare.policy.Policy` as an HAProxy configuration.

Mapping: ``balance roundrobin|leastconn``; retries are ``retries <attempts - 1>`` with ``retry-on conn-failure
empty-response response-timeout <statuses>`` and ``option redispatch 1`` (every retry goes to another replica);
``timeout connect`` / ``timeout server`` bound a try; passive ejection is ``observe layer7 error-limit <n>
on-error mark-down`` on each server, which needs ``check``: the replica comes back after a successful active TCP
check, run every ``ejection_time`` while it is down. The rate limit is approximated by a one-entry stick table
counting ``http_req_rate`` over a sliding window and ``http-request deny deny_status 429`` above it. One process,
one thread, in the foreground (``-db``), no stats page, no logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from connectivity.compare.policy import Policy

__all__ = ["RETRYABLE", "command", "config", "validate_command"]

RETRYABLE = frozenset({500, 501, 502, 503, 504})
"""The 5xx statuses ``retry-on`` accepts."""

CONFIG_NAME = "haproxy.cfg"


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def config(
    policy: Policy, upstreams: Sequence[tuple[str, int]], listen: tuple[str, int], workdir: Path
) -> tuple[str, tuple[str, ...]]:
    """The HAProxy configuration text for ``policy``, and what of it HAProxy cannot express."""
    del workdir  # HAProxy in the foreground writes nothing
    unsupported: list[str] = []
    statuses = sorted(policy.retry_statuses & RETRYABLE)
    if policy.retry_statuses - RETRYABLE:
        left = ", ".join(map(str, sorted(policy.retry_statuses - RETRYABLE)))
        unsupported.append(f"retry_statuses: HAProxy's retry-on takes only 500 to 504 among 5xx; not {left}")
    unsupported.append("total_timeout: HAProxy has no deadline across tries; each try gets timeout server again")
    retry = ""
    if policy.attempts > 1:
        retry = (
            f"    retries {policy.attempts - 1}\n"
            f"    retry-on conn-failure empty-response response-timeout {' '.join(map(str, statuses))}\n"
            "    option redispatch 1\n"
        )
    else:
        retry = "    retries 0\n"
    health = ""
    if policy.consecutive_5xx is not None:
        interval = _ms(policy.ejection_time)
        health = (
            f" check inter {interval} downinter {interval} rise 1 fall 1000000"
            f" observe layer7 error-limit {policy.consecutive_5xx} on-error mark-down"
        )
        unsupported.append(
            "ejection_time: a marked-down replica returns after its next successful TCP check (every "
            "ejection_time while down), so it may return sooner; HAProxy also TCP-checks the healthy ones"
        )
        unsupported.append("consecutive_5xx: HAProxy's layer7 observation does not count 501 and 505 as errors")
        if policy.attempts > 1 and statuses:
            unsupported.append(
                "consecutive_5xx: HAProxy does not count a response it retried (retry-on) as an error, so a "
                "replica failing only with retried statuses is never ejected"
            )
    limit = ""
    if policy.rate_limit is not None:
        period = 1 if policy.rate_limit >= 1 else math.ceil(1 / policy.rate_limit)
        allowed = max(1, round(policy.rate_limit * period)) + policy.burst
        limit = (
            f"    stick-table type integer size 1 expire {period + 10}s store http_req_rate({period}s)\n"
            "    http-request track-sc0 int(1)\n"
            f"    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {allowed} }}\n"
        )
        unsupported.append(
            f"rate_limit: approximated by at most {allowed} requests (rate + burst) in any sliding "
            f"{period}s window, not a token bucket"
        )
    balance = "leastconn" if policy.balancing == "least_request" else "roundrobin"
    servers = "".join(
        f"    server s{index} {_address(host, port)}{health}\n" for index, (host, port) in enumerate(upstreams)
    )
    return (
        f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout client 600s
    timeout http-keep-alive 600s
    timeout connect {_ms(policy.per_try_timeout)}
    timeout server {_ms(policy.per_try_timeout)}
    timeout queue {_ms(policy.total_timeout)}
{retry}
frontend sidecar
    bind {_address(*listen)}
{limit}    default_backend service

backend service
    balance {balance}
    http-reuse safe
{servers}""",
        tuple(unsupported),
    )


def command(binary: str, config_path: Path, workdir: Path) -> list[str]:
    """Run HAProxy in the foreground (``-db``) with ``config_path``."""
    del workdir
    return [binary, "-db", "-f", str(config_path)]


def validate_command(binary: str, config_path: Path, workdir: Path) -> list[str]:
    """``haproxy -c`` on ``config_path``."""
    del workdir
    return [binary, "-c", "-q", "-f", str(config_path)]
