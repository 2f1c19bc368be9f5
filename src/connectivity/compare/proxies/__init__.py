"""Out-of-process proxies (nginx, HAProxy, Caddy) configured from one :class:`~connectivity.compare.policy.Policy`.

Theory of operation: :func:`render` translates a policy, the upstream replicas and a listen address into the
proxy's own configuration file in a work directory, and lists in :attr:`Rendered.unsupported` every part of the
policy the proxy cannot express or only approximates, with the reason, instead of dropping it silently.
:func:`validate` runs the proxy's own checker (``nginx -t``, ``haproxy -c``, ``caddy validate``) and
:meth:`Sidecar.start` runs it as a process group that is always stopped: on ``stop()``, on leaving a ``with``
block for any reason (Ctrl-C included), and at interpreter exit. Every file a proxy writes (pid, logs, temporary
files, Caddy's storage) stays in the work directory.

.. versionadded:: 0.1
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from connectivity.compare.pki import Material
from connectivity.compare.policy import Policy
from connectivity.compare.proxies import caddy, haproxy, nginx
from connectivity.compare.proxies._process import Sidecar, SidecarError, free_port
from connectivity.errors import ConfigError, ConnectivityError
from connectivity.policies._validate import at_least_int

__all__ = [
    "MAX_ATTEMPTS",
    "PROXIES",
    "ProxyConfigError",
    "ProxyStartError",
    "Rendered",
    "Sidecar",
    "binary",
    "counters",
    "environment",
    "free_port",
    "launch",
    "render",
    "validate",
]

PROXIES: tuple[str, ...] = ("nginx", "haproxy", "caddy")
"""The proxies a policy can be rendered for."""

MAX_ATTEMPTS = 100
"""Most tries per request a rendered proxy is configured for (beyond it a policy is a mistake, not a scenario)."""

_MODULES = {"nginx": nginx, "haproxy": haproxy, "caddy": caddy}
_PLACES = ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin", "/sbin", "/bin")
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")
_VALIDATE_TIMEOUT = 60.0


class ProxyConfigError(ConnectivityError):
    """A proxy rejected its generated configuration.

    Attributes:
        proxy: ``"nginx"``, ``"haproxy"`` or ``"caddy"``.
        output: What the proxy's validator printed.

    .. versionadded:: 0.1
    """

    def __init__(self, proxy: str, output: str) -> None:
        super().__init__(f"{proxy} rejected its configuration:\n{output}")
        self.proxy = proxy
        self.output = output


class ProxyStartError(SidecarError, ConnectivityError):
    """A proxy exited or did not listen in time when started.

    Attributes:
        proxy: The proxy's name.
        output: The end of its output and error log.

    .. versionadded:: 0.1
    """

    def __init__(self, proxy: str, output: str) -> None:
        super().__init__(f"{proxy} did not start: {output}")
        self.proxy = proxy
        self.output = output


@dataclass(frozen=True)
class Rendered:
    """A proxy configuration written to disk, and how to run it.

    Attributes:
        proxy: ``"nginx"``, ``"haproxy"`` or ``"caddy"``.
        config_path: The configuration file (in ``workdir``).
        command: The command that runs the proxy in the foreground with it.
        unsupported: ``"field: reason"`` for every policy field the proxy cannot express or only approximates.
        workdir: Where the proxy writes everything (pid, logs, temporary files, storage).
        listen: The address the proxy listens on.

    .. versionadded:: 0.1
    """

    proxy: str
    config_path: Path
    command: list[str]
    unsupported: tuple[str, ...]
    workdir: Path
    listen: tuple[str, int] = ("127.0.0.1", 0)


def binary(proxy: str) -> str | None:
    """The path of ``proxy``'s binary: on ``PATH`` or in a usual bin/sbin directory; ``None`` if not installed.

    Raises:
        ConfigError: ``proxy`` is not one of :data:`PROXIES`.

    .. versionadded:: 0.1
    """
    _check_proxy(proxy)
    search = os.pathsep.join(filter(None, [os.environ.get("PATH"), *_PLACES]))
    return shutil.which(proxy, path=search)


def environment(workdir: Path) -> dict[str, str]:
    """The environment a proxy runs with: this one, with ``HOME`` and ``XDG_*`` pointing into ``workdir``."""
    env = dict(os.environ)
    home = str(workdir)
    env.update(HOME=home, XDG_DATA_HOME=home, XDG_CONFIG_HOME=home, XDG_CACHE_HOME=home, XDG_STATE_HOME=home)
    return env


def render(
    proxy: str,
    policy: Policy,
    upstreams: Sequence[tuple[str, int]],
    listen: tuple[str, int],
    workdir: Path,
    *,
    tls: Material | None = None,
) -> Rendered:
    """Write ``proxy``'s configuration for ``policy`` in front of ``upstreams``, listening on ``listen``.

    Args:
        proxy: One of :data:`PROXIES`.
        policy: What the calls should get.
        upstreams: ``(host, port)`` of every replica.
        listen: ``(host, port)`` the proxy listens on (see :func:`free_port`).
        workdir: An existing directory, the proxy's own (the configuration and everything it writes go there).
        tls: Originate mutual TLS to the replicas with this certificate (``None``: plain HTTP); the client side
            stays plain (a sidecar listens on the loopback of its pod).

    Returns:
        The configuration's path, the command to run, and what the proxy cannot express.

    Raises:
        ConfigError: Unknown proxy, no upstreams, a malformed address, more than :data:`MAX_ATTEMPTS` attempts,
            or a missing work directory.

    .. versionadded:: 0.1
    """
    _check_proxy(proxy)
    upstreams = list(upstreams)
    if not upstreams:
        raise ConfigError("upstreams", upstreams, "must name at least one replica")
    for address in upstreams:
        _check_address("upstreams", address, port_zero=False)
    _check_address("listen", listen, port_zero=False)
    if policy.attempts > MAX_ATTEMPTS:
        raise ConfigError("Policy.attempts", policy.attempts, f"must be at most {MAX_ATTEMPTS} for a proxy")
    workdir = Path(workdir).resolve()
    if not workdir.is_dir():
        raise ConfigError("workdir", str(workdir), "must be an existing directory")
    module = _MODULES[proxy]
    text, unsupported = module.config(policy, upstreams, listen, workdir, tls)
    path = workdir / module.CONFIG_NAME
    path.write_text(text, encoding="utf-8")
    executable = binary(proxy) or proxy
    return Rendered(
        proxy=proxy,
        config_path=path,
        command=module.command(executable, path, workdir),
        unsupported=unsupported,
        workdir=workdir,
        listen=(listen[0], int(listen[1])),
    )


def validate(rendered: Rendered) -> None:
    """Check ``rendered``'s configuration with the proxy's own validator.

    Raises:
        ProxyConfigError: The validator rejected it, could not run, or is not installed.

    .. versionadded:: 0.1
    """
    executable = binary(rendered.proxy)
    if executable is None:
        raise ProxyConfigError(rendered.proxy, f"{rendered.proxy} is not installed (no binary on PATH or in sbin)")
    module = _MODULES[rendered.proxy]
    command = module.validate_command(executable, rendered.config_path, rendered.workdir)
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_VALIDATE_TIMEOUT,
            check=False,
            cwd=rendered.workdir,
            env=environment(rendered.workdir),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as failure:
        raise ProxyConfigError(rendered.proxy, f"{' '.join(command)}: {failure}") from failure
    if completed.returncode != 0:
        output = (completed.stderr + completed.stdout).strip()[-3000:]
        raise ProxyConfigError(rendered.proxy, f"{' '.join(command)} exited {completed.returncode}:\n{output}")


def counters(rendered: Rendered) -> dict[str, int]:
    """What the proxy reports it did so far: cumulative ``retries``, ``ejections`` and ``rate_limited`` counts,
    read from its logs (nginx) or stats socket (HAProxy); empty for what it does not report (Caddy).

    .. versionadded:: 0.1
    """
    return dict(_MODULES[rendered.proxy].counters(rendered.workdir))


def launch(
    proxy: str,
    policy: Policy,
    upstreams: Sequence[tuple[str, int]],
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
    attempts: int = 3,
    tls: Material | None = None,
) -> tuple[Rendered, Sidecar]:
    """Render, validate and start ``proxy`` on a free port of ``host``; on a port taken meanwhile, on another
    (``tls``: as :func:`render`).

    Returns:
        What was rendered and the running sidecar.

    Raises:
        ConfigError: As :func:`render`.
        ProxyConfigError: As :func:`validate`.
        ProxyStartError: It did not start, ``attempts`` times (a taken port) or once (anything else).

    .. versionadded:: 0.1
    """
    at_least_int("launch.attempts", attempts, 1)
    for attempt in range(attempts):
        rendered = render(proxy, policy, upstreams, (host, free_port(host)), workdir, tls=tls)
        validate(rendered)
        try:
            return rendered, Sidecar.start(rendered, timeout=timeout)
        except ProxyStartError as failure:
            taken = any(sign in failure.output.lower() for sign in ("in use", "cannot bind"))
            if not taken or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _check_proxy(proxy: str) -> None:
    if proxy not in PROXIES:
        raise ConfigError("proxy", proxy, f"must be one of {', '.join(PROXIES)}")


def _check_address(field: str, address: object, *, port_zero: bool) -> None:
    """A ``(host, port)`` safe to write into any configuration: an IP or a plain hostname, a valid port."""
    if not (isinstance(address, tuple | list) and len(address) == 2):
        raise ConfigError(field, address, "must be a (host, port) pair")
    host, port = address
    if isinstance(port, bool) or not isinstance(port, int) or not (0 if port_zero else 1) <= port <= 65535:
        raise ConfigError(field, address, "port must be an integer from 1 to 65535")
    if not isinstance(host, str):
        raise ConfigError(field, address, "host must be a string")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ConfigError(field, address, "host must be an IP address or a hostname") from None
