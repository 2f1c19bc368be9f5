"""HAProxy as a sidecar: a :class:`~connectivity.compare.policy.Policy` as an HAProxy configuration.

Mapping: ``balance roundrobin|leastconn``; retries are ``retries <attempts - 1>`` with ``retry-on conn-failure
empty-response response-timeout <statuses>`` and ``option redispatch 1`` (every retry goes to another replica);
``timeout connect`` / ``timeout server`` bound a try; passive ejection is ``observe layer7 error-limit <n>
on-error mark-down`` on each server, which needs ``check``: the replica comes back after a successful active TCP
check, run every ``ejection_time`` while it is down. The rate limit is approximated by a one-entry stick table
counting ``http_req_rate`` over a sliding window and ``http-request deny deny_status 429`` above it. With upstream
TLS material every ``server`` line originates mutual TLS (``ssl crt ... ca-file ... verify required verifyhost``).
One process, one thread, in the foreground (``-db``), no stats page, no logs; a stats socket in the work directory.

What it did (:func:`counters`): the stats socket (a Unix socket in the work directory, read between blocks, no
cost per request) gives per-server ``wretr`` (tries after the first; one redispatched to another server counts
in ``wredis`` as well, so that one is not added), ``chkdown`` (a replica marked down: an ejection) and the
frontend's ``dreq`` (requests denied: the rate limit).
"""

from __future__ import annotations

import csv
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from connectivity.compare.pki import SERVER_NAME, Material
from connectivity.compare.policy import Policy
from connectivity.compare.proxies._text import address, ms

__all__ = ["RETRYABLE", "command", "config", "counters", "validate_command"]

RETRYABLE = frozenset({500, 501, 502, 503, 504})
"""The statuses of a policy ``retry-on`` accepts (it also takes 401, 403, 404, 408 and 425, but not 429)."""

CONFIG_NAME = "haproxy.cfg"
STATS_SOCKET = "haproxy.sock"


def config(
    policy: Policy,
    upstreams: Sequence[tuple[str, int]],
    listen: tuple[str, int],
    workdir: Path,
    tls: Material | None = None,
) -> tuple[str, tuple[str, ...]]:
    """The HAProxy configuration text for ``policy``, and what of it HAProxy cannot express."""
    unsupported: list[str] = []
    statuses = sorted(policy.retry_statuses & RETRYABLE)
    if policy.retry_statuses - RETRYABLE:
        left = ", ".join(map(str, sorted(policy.retry_statuses - RETRYABLE)))
        unsupported.append(
            f"retry_statuses: HAProxy's retry-on takes 401, 403, 404, 408, 425 and 500 to 504, not {left}"
        )
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
        interval = ms(policy.ejection_time)
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
    upstream_tls = ""
    if tls is not None:
        upstream_tls = (
            f' ssl crt "{tls.bundle}" ca-file "{tls.ca}" verify required'
            f" verifyhost {SERVER_NAME} sni str({SERVER_NAME})"
        )
    servers = "".join(
        f"    server s{index} {address(host, port)}{upstream_tls}{health}\n"
        for index, (host, port) in enumerate(upstreams)
    )
    return (
        f"""global
    nbthread 1
    maxconn 4096
    stats socket unix@{STATS_SOCKET} mode 600 level user

defaults
    mode http
    option http-keep-alive
    timeout client 600s
    timeout http-keep-alive 600s
    timeout connect {ms(policy.per_try_timeout)}
    timeout server {ms(policy.per_try_timeout)}
    timeout queue {ms(policy.total_timeout)}
{retry}
frontend sidecar
    bind {address(*listen)}
{limit}    default_backend service

backend service
    balance {balance}
    http-reuse safe
{servers}""",
        tuple(unsupported),
    )


def counters(workdir: Path) -> dict[str, int]:
    """What HAProxy did so far, from its stats socket: ``retries`` (``wretr`` over the servers),
    ``ejections`` (``chkdown``) and ``rate_limited`` (the frontend's ``dreq``); empty when the socket is silent."""
    try:
        # The socket is bound relative to the work directory (HAProxy runs there); a Unix socket path is limited
        # to ~108 bytes, so it is reached through a descriptor of the directory, whatever the directory's length.
        directory = os.open(workdir, os.O_RDONLY)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stats:
                stats.settimeout(2.0)
                stats.connect(f"/proc/self/fd/{directory}/{STATS_SOCKET}")
                stats.sendall(b"show stat\n")
                chunks = []
                while chunk := stats.recv(65536):
                    chunks.append(chunk)
        finally:
            os.close(directory)
    except OSError:
        return {}
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    rows = list(csv.DictReader([lines[0][2:], *lines[1:]]))
    found = {"retries": 0, "ejections": 0, "rate_limited": 0}

    def number(row: dict[str, str], column: str) -> int:
        value = row.get(column) or "0"
        return int(value) if value.isdigit() else 0

    for row in rows:
        if row.get("svname") not in ("FRONTEND", "BACKEND"):
            found["retries"] += number(row, "wretr")
            found["ejections"] += number(row, "chkdown")
        elif row.get("svname") == "FRONTEND":
            found["rate_limited"] += number(row, "dreq")
    return found


def command(binary: str, config_path: Path, workdir: Path) -> list[str]:
    """Run HAProxy in the foreground (``-db``) with ``config_path``."""
    del workdir
    return [binary, "-db", "-f", str(config_path)]


def validate_command(binary: str, config_path: Path, workdir: Path) -> list[str]:
    """``haproxy -c`` on ``config_path``."""
    del workdir
    return [binary, "-c", "-q", "-f", str(config_path)]
