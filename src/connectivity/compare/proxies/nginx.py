"""nginx as a sidecar: a :class:`~connectivity.compare.policy.Policy` as an nginx configuration.

Mapping: the replicas form an ``upstream`` block (``least_conn`` for ``least_request``, keep-alive connections);
retries are ``proxy_next_upstream error timeout http_5xx...`` with ``proxy_next_upstream_tries`` and
``proxy_next_upstream_timeout``; a try is bounded by ``proxy_connect_timeout`` / ``proxy_send_timeout`` /
``proxy_read_timeout``; passive ejection is ``max_fails`` / ``fail_timeout`` on every server; the rate limit is one
``limit_req_zone`` keyed on a constant (one bucket for the whole service) with ``burst ... nodelay`` and status
429. With upstream TLS material, nginx originates mutual TLS to the replicas (``proxy_ssl_certificate``,
``proxy_ssl_trusted_certificate``, ``proxy_ssl_verify on`` against the replicas' name, sessions reused). One master
and one worker process, in the foreground, every file they write in the work directory.

What it did (:func:`counters`): only requests that were retried are logged (``access_log ... if=``), with
``$upstream_addr`` (one address per try) and ``$upstream_status``; a replica taken out (``max_fails``) and a
request refused by ``limit_req`` are lines of the error log. nginx reports nothing else per request.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

from connectivity.compare.pki import SERVER_NAME, Material
from connectivity.compare.policy import Policy

__all__ = ["RETRYABLE", "command", "config", "counters", "validate_command"]

RETRYABLE = frozenset({429, 500, 502, 503, 504})
"""The statuses ``proxy_next_upstream`` can retry on (``http_429``, ``http_500`` ... ``http_504``)."""

CONFIG_NAME = "nginx.conf"
RETRIED_LOG = "nginx-retried.log"
ERROR_LOG = "nginx-error.log"


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _rate(rate: float) -> tuple[str, str | None]:
    """nginx's rate (whole requests per second or per minute) and, when it had to round, why."""
    if rate >= 1 and float(rate).is_integer():
        return f"{int(rate)}r/s", None
    per_minute = rate * 60
    rounded = max(1, round(per_minute))
    note = None if math.isclose(per_minute, rounded) else f"nginx counts whole requests per minute: {rounded}r/m"
    return f"{rounded}r/m", note


def _user() -> str:
    """Run the workers as the current user: as root nginx would otherwise switch them to ``nobody``."""
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"


def config(
    policy: Policy,
    upstreams: Sequence[tuple[str, int]],
    listen: tuple[str, int],
    workdir: Path,
    tls: Material | None = None,
) -> tuple[str, tuple[str, ...]]:
    """The nginx configuration text for ``policy``, and what of it nginx cannot express."""
    unsupported: list[str] = []
    statuses = sorted(policy.retry_statuses & RETRYABLE)
    if policy.retry_statuses - RETRYABLE:
        left = ", ".join(map(str, sorted(policy.retry_statuses - RETRYABLE)))
        unsupported.append(f"retry_statuses: nginx can retry only on 429, 500, 502, 503, 504; not on {left}")
    if 429 in statuses and policy.attempts > 1:
        unsupported.append(
            "retry_statuses: nginx retries a 429 at once on the next replica, with or without Retry-After, and "
            "never waits for it"
        )
    if policy.attempts > len(upstreams):
        unsupported.append(
            f"attempts: nginx tries each replica at most once per request: at most {len(upstreams)} tries here"
        )
    unsupported.append("per_try_timeout: proxy_read_timeout bounds each wait between two reads, not the whole try")
    if policy.attempts > 1:
        unsupported.append(
            "total_timeout: proxy_next_upstream_timeout only stops starting new tries; a try in flight may run on"
        )
    else:
        unsupported.append("total_timeout: without retries nginx has no request deadline beyond per_try_timeout")
    conditions = ["error", "timeout", *(f"http_{status}" for status in statuses)]
    if policy.attempts > 1:
        retry = (
            f"proxy_next_upstream {' '.join(conditions)};\n"
            f"            proxy_next_upstream_tries {policy.attempts};\n"
            f"            proxy_next_upstream_timeout {_ms(policy.total_timeout)};"
        )
    else:
        # tries 1 keeps the failure accounting of the listed conditions without a second try.
        retry = f"proxy_next_upstream {' '.join(conditions)};\n            proxy_next_upstream_tries 1;"
    if policy.consecutive_5xx is None:
        health = "max_fails=0"
    else:
        # fail_timeout takes whole seconds (ngx_parse_time(..., 1)): "30000ms" is rejected.
        seconds = max(1, math.ceil(policy.ejection_time))
        health = f"max_fails={policy.consecutive_5xx} fail_timeout={seconds}s"
        if seconds != policy.ejection_time:
            unsupported.append(f"ejection_time: nginx's fail_timeout takes whole seconds: {seconds}s")
        counted = (
            f"connect errors, timeouts and {', '.join(map(str, statuses))}"
            if policy.attempts > 1 and statuses
            else "connect errors and timeouts (no status: nginx counts only statuses it may retry)"
        )
        unsupported.append(
            "consecutive_5xx: nginx ejects after max_fails failures within fail_timeout, not in a row, and counts "
            f"only {counted} as failures"
        )
        if 429 in statuses and policy.attempts > 1:
            unsupported.append(
                "consecutive_5xx: nginx counts a retried 429 as a failure, so a replica that throttles is ejected"
            )
    limit_zone = limit = ""
    if policy.rate_limit is not None:
        rate, note = _rate(policy.rate_limit)
        if note:
            unsupported.append(f"rate_limit: {note}")
        limit_zone = (
            '    map $request_method $connectivity_service {\n        default "service";\n    }\n'
            f"    limit_req_zone $connectivity_service zone=service:1m rate={rate};\n"
            "    limit_req_status 429;\n"
        )
        burst = f" burst={policy.burst} nodelay" if policy.burst else ""  # nginx rejects burst=0
        limit = f"            limit_req zone=service{burst};\n"
    balancing = "        least_conn;\n" if policy.balancing == "least_request" else ""
    servers = "".join(f"        server {_address(host, port)} {health};\n" for host, port in upstreams)
    scheme, upstream_tls = "http", ""
    if tls is not None:
        scheme = "https"
        upstream_tls = (
            f'            proxy_ssl_certificate "{tls.cert}";\n'
            f'            proxy_ssl_certificate_key "{tls.key}";\n'
            f'            proxy_ssl_trusted_certificate "{tls.ca}";\n'
            "            proxy_ssl_verify on;\n"
            "            proxy_ssl_verify_depth 2;\n"
            f"            proxy_ssl_name {SERVER_NAME};\n"
            "            proxy_ssl_server_name on;\n"
            "            proxy_ssl_session_reuse on;\n"
        )
    temp = "".join(
        f'    {kind}_temp_path "{workdir / f"nginx-{kind}"}";\n'
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"""daemon off;
master_process on;
worker_processes 1;
{_user()}pid "{workdir / "nginx.pid"}";
error_log "{workdir / ERROR_LOG}" warn;
events {{
    worker_connections 4096;
}}
http {{
    log_format retried "$upstream_addr|$upstream_status";
    map $upstream_addr $connectivity_retried {{
        "~," 1;
        default 0;
    }}
    access_log "{workdir / RETRIED_LOG}" retried if=$connectivity_retried;
{temp}    keepalive_timeout 600s;
    keepalive_requests 1000000;
{limit_zone}    upstream service {{
{balancing}{servers}        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen {_address(*listen)};
        location / {{
{limit}            proxy_pass {scheme}://service;
{upstream_tls}            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout {_ms(policy.per_try_timeout)};
            proxy_send_timeout {_ms(policy.per_try_timeout)};
            proxy_read_timeout {_ms(policy.per_try_timeout)};
            {retry}
        }}
    }}
}}
""",
        tuple(unsupported),
    )


def command(binary: str, config_path: Path, workdir: Path) -> list[str]:
    """Run nginx in the foreground with ``config_path``; ``-e`` keeps even start-up messages in ``workdir``."""
    return [binary, "-p", str(workdir), "-e", str(workdir / ERROR_LOG), "-c", str(config_path)]


def validate_command(binary: str, config_path: Path, workdir: Path) -> list[str]:
    """``nginx -t -q`` on ``config_path``."""
    return [*command(binary, config_path, workdir), "-t", "-q"]


def counters(workdir: Path) -> dict[str, int]:
    """What nginx did so far: ``retries`` (tries after the first, from the retried-requests log), ``ejections``
    (a replica disabled after ``max_fails``) and ``rate_limited`` (requests refused by ``limit_req``)."""
    found = {"retries": 0, "ejections": 0, "rate_limited": 0}
    with contextlib.suppress(OSError), open(workdir / RETRIED_LOG, encoding="utf-8", errors="replace") as log:
        for line in log:
            addresses = line.partition("|")[0]
            found["retries"] += addresses.count(",")  # one address per try, comma-separated
    with contextlib.suppress(OSError), open(workdir / ERROR_LOG, encoding="utf-8", errors="replace") as log:
        for line in log:
            if "upstream server temporarily disabled" in line:
                found["ejections"] += 1
            elif "limiting requests" in line:
                found["rate_limited"] += 1
    return found
