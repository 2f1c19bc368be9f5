"""Caddy as a sidecar: a :class:`~connectivity.compare.policy.Policy` as a Caddyfile.

Mapping: one ``reverse_proxy`` with ``lb_policy round_robin|least_conn``, ``lb_retries <attempts - 1>`` and
``lb_try_duration <total_timeout>``; the HTTP transport's ``dial_timeout`` and ``response_header_timeout`` bound a
try; passive health is ``max_fails`` / ``fail_duration`` / ``unhealthy_status 5xx``. Caddy retries only when it
could not get a response (a dial error, or any error for requests ``lb_retry_match`` allows), never because of a
response status, and stock Caddy has no rate limiter: both are listed as unsupported. The admin endpoint is off,
automatic HTTPS too, and the storage is in the work directory (the sidecar also points ``HOME`` and ``XDG_*``
there). With upstream TLS material the transport originates mutual TLS (``tls_client_auth``,
``tls_trusted_ca_certs``, ``tls_server_name``).

What it did: :func:`counters` has nothing to read. Caddy's access log has no retry count, and with the admin
endpoint on, ``/reverse_proxy/upstreams`` gives only requests in flight and the failures still remembered, not how
many retries or ejections happened; the fleet's own count (upstream requests per request) shows its retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from connectivity.compare.pki import SERVER_NAME, Material
from connectivity.compare.policy import Policy
from connectivity.compare.proxies._text import address, ms

__all__ = ["command", "config", "counters", "validate_command"]

CONFIG_NAME = "Caddyfile"


def config(
    policy: Policy,
    upstreams: Sequence[tuple[str, int]],
    listen: tuple[str, int],
    workdir: Path,
    tls: Material | None = None,
) -> tuple[str, tuple[str, ...]]:
    """The Caddyfile text for ``policy``, and what of it Caddy cannot express."""
    unsupported: list[str] = []
    if policy.retry_statuses:
        unsupported.append(
            "retry_statuses: Caddy retries only when a try got no response, never on a response status"
        )
    unsupported.append("total_timeout: lb_try_duration bounds the time spent retrying, not the whole request")
    retry = ""
    if policy.attempts > 1:
        retry = f"\t\tlb_retries {policy.attempts - 1}\n\t\tlb_try_duration {ms(policy.total_timeout)}\n"
    health = ""
    if policy.consecutive_5xx is not None:
        health = (
            f"\t\tmax_fails {policy.consecutive_5xx}\n"
            f"\t\tfail_duration {ms(policy.ejection_time)}\n"
            "\t\tunhealthy_status 5xx\n"
        )
        unsupported.append(
            "consecutive_5xx: Caddy remembers each failure for fail_duration and ejects at max_fails of them, "
            "not in a row; a replica returns when they expire"
        )
    if policy.rate_limit is not None:
        unsupported.append(
            "rate_limit: stock Caddy has no rate limiter (the caddy-ratelimit plugin is not built in)"
        )
    upstream_tls = ""
    if tls is not None:
        upstream_tls = (
            "\t\t\ttls\n"
            f'\t\t\ttls_client_auth "{tls.cert}" "{tls.key}"\n'
            f'\t\t\ttls_trusted_ca_certs "{tls.ca}"\n'
            f"\t\t\ttls_server_name {SERVER_NAME}\n"
        )
    lb = "least_conn" if policy.balancing == "least_request" else "round_robin"
    targets = " ".join(address(host, port) for host, port in upstreams)
    host, port = listen
    return (
        f"""{{
\tadmin off
\tauto_https off
\tgrace_period 1s
\tstorage file_system {{
\t\troot "{workdir / "caddy-data"}"
\t}}
}}

http://{address(host, port)} {{
\tbind {host}
\treverse_proxy {targets} {{
\t\tlb_policy {lb}
{retry}{health}\t\ttransport http {{
\t\t\tdial_timeout {ms(policy.per_try_timeout)}
\t\t\tresponse_header_timeout {ms(policy.per_try_timeout)}
\t\t\tkeepalive 600s
{upstream_tls}\t\t}}
\t}}
}}
""",
        tuple(unsupported),
    )


def counters(workdir: Path) -> dict[str, int]:
    """Nothing: Caddy does not report its retries or ejections (see the module docstring)."""
    del workdir
    return {}


def command(binary: str, config_path: Path, workdir: Path) -> list[str]:
    """``caddy run`` with the Caddyfile adapter."""
    del workdir
    return [binary, "run", "--config", str(config_path), "--adapter", "caddyfile"]


def validate_command(binary: str, config_path: Path, workdir: Path) -> list[str]:
    """``caddy validate`` with the Caddyfile adapter."""
    del workdir
    return [binary, "validate", "--config", str(config_path), "--adapter", "caddyfile"]
