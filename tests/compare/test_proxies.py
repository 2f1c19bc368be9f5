"""Sidecar proxies: generated configurations, their validators, and real proxies in front of real upstreams."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectivity.compare import pki as certificates
from connectivity.compare import proxies as px
from connectivity.compare.policy import Policy
from connectivity.compare.proxies._process import group_pids
from connectivity.errors import ConfigError, ConnectivityError
from connectivity.testing import Faults, FaultyUpstream
from connectivity.testing.server import RunningServer, serve
from connectivity.testing.system import require_binary

POLICIES = {
    "defaults": Policy(),
    "no-retries": Policy(attempts=1, consecutive_5xx=None),
    "least-request-rate-limited": Policy(attempts=3, balancing="least_request", rate_limit=50.0, burst=5),
    "slow-rate": Policy(attempts=3, retry_statuses=frozenset({500, 503}), rate_limit=0.5, per_try_timeout=0.25),
    "retry-429": Policy(retry_statuses=frozenset({429, 502, 503, 504}), retry_after_cap=2.0),
}
TWO = [("127.0.0.1", 8001), ("127.0.0.1", 8002)]


def fields(rendered: px.Rendered) -> set[str]:
    return {item.partition(":")[0] for item in rendered.unsupported}


def assert_no_processes(pids: list[int]) -> None:
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"]
    assert alive == []


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


@pytest.fixture
def pki(tmp_path: Path) -> certificates.Pki:
    """A CA, the replicas' certificate and a client certificate per proxy (and one for a bare client)."""
    directory = tmp_path / "pki"
    directory.mkdir()
    return certificates.make(directory, [*px.PROXIES, "client"])


@pytest.fixture
def replicas() -> Iterator[tuple[RunningServer[FaultyUpstream], RunningServer[FaultyUpstream]]]:
    """Two real uvicorn replicas: ``good`` answers 200, ``bad`` answers 503 to everything."""
    good = FaultyUpstream(name="good")
    bad = FaultyUpstream(name="bad", faults=Faults(error_rate=1.0, error_status=503))
    with serve(good, name="good") as one, serve(bad, name="bad") as two:
        yield one, two


def start(
    proxy: str, policy: Policy, upstreams: list[tuple[str, int]], workdir: Path
) -> tuple[px.Rendered, px.Sidecar]:
    require_binary(proxy)
    return px.launch(proxy, policy, upstreams, workdir)


# -- configurations ---------------------------------------------------------------------------------------


def test_public_surface() -> None:
    assert px.PROXIES == ("nginx", "haproxy", "caddy")
    assert {"PROXIES", "Rendered", "Sidecar", "ProxyConfigError", "binary", "render", "validate"} <= set(
        px.__all__
    )
    assert issubclass(px.ProxyConfigError, ConnectivityError)
    assert issubclass(px.ProxyStartError, ConnectivityError)


@pytest.mark.system
@pytest.mark.parametrize("proxy", px.PROXIES)
@pytest.mark.parametrize("name", POLICIES)
def test_generated_config_passes_the_proxys_validator(proxy: str, name: str, tmp_path: Path) -> None:
    require_binary(proxy)
    assert px.binary(proxy) is not None
    rendered = px.render(proxy, POLICIES[name], TWO, ("127.0.0.1", 18080), tmp_path)
    assert rendered.config_path.parent == tmp_path.resolve()
    px.validate(rendered)


@pytest.mark.system
@pytest.mark.parametrize("proxy", px.PROXIES)
def test_a_rejected_config_raises_with_the_validators_output(proxy: str, tmp_path: Path) -> None:
    require_binary(proxy)
    rendered = px.render(proxy, Policy(), TWO, ("127.0.0.1", 18080), tmp_path)
    rendered.config_path.write_text(rendered.config_path.read_text() + "\nthis is not a directive {\n")
    with pytest.raises(px.ProxyConfigError) as caught:
        px.validate(rendered)
    assert caught.value.proxy == proxy
    assert caught.value.output


def test_nginx_expresses_the_policy_and_lists_the_rest(tmp_path: Path) -> None:
    policy = Policy(
        attempts=3, retry_statuses=frozenset({500, 503, 507}), rate_limit=0.01, balancing="least_request"
    )
    rendered = px.render("nginx", policy, TWO, ("127.0.0.1", 18080), tmp_path)
    text = rendered.config_path.read_text()
    assert "least_conn;" in text
    assert "proxy_next_upstream error timeout http_500 http_503;" in text
    assert "proxy_next_upstream_tries 3;" in text
    assert "proxy_next_upstream_timeout 5000ms;" in text
    assert "max_fails=5 fail_timeout=30s" in text
    assert "rate=1r/m" in text
    assert "limit_req zone=service;" in text
    assert fields(rendered) == {
        "retry_statuses",
        "attempts",
        "per_try_timeout",
        "total_timeout",
        "consecutive_5xx",
        "rate_limit",
    }
    assert any("507" in item for item in rendered.unsupported)
    assert any("not in a row" in item for item in rendered.unsupported)
    exact = px.render("nginx", Policy(attempts=2, rate_limit=0.5, consecutive_5xx=None), TWO, ("::1", 1), tmp_path)
    assert "rate=30r/m" in exact.config_path.read_text()
    assert "listen [::1]:1;" in exact.config_path.read_text()
    assert fields(exact) == {"per_try_timeout", "total_timeout"}


def test_haproxy_expresses_the_policy_and_lists_the_rest(tmp_path: Path) -> None:
    policy = Policy(attempts=3, retry_statuses=frozenset({502, 503, 507}), rate_limit=20.0, burst=5)
    rendered = px.render("haproxy", policy, TWO, ("127.0.0.1", 18080), tmp_path)
    text = rendered.config_path.read_text()
    assert "retries 2" in text
    assert "option redispatch 1" in text
    assert "retry-on conn-failure empty-response response-timeout 502 503" in text
    assert "balance roundrobin" in text
    assert "observe layer7 error-limit 5 on-error mark-down" in text
    assert "sc_http_req_rate(0) gt 25" in text
    assert fields(rendered) == {
        "retry_statuses",
        "total_timeout",
        "ejection_time",
        "consecutive_5xx",
        "rate_limit",
    }
    plain = px.render(
        "haproxy",
        Policy(attempts=1, consecutive_5xx=None, balancing="least_request"),
        TWO,
        ("127.0.0.1", 1),
        tmp_path,
    )
    text = plain.config_path.read_text()
    assert "retries 0" in text
    assert "retry-on" not in text
    assert "check" not in text
    assert "balance leastconn" in text
    assert fields(plain) == {"total_timeout"}


def test_caddy_expresses_the_policy_and_lists_the_rest(tmp_path: Path) -> None:
    rendered = px.render("caddy", Policy(attempts=3, rate_limit=10.0), TWO, ("127.0.0.1", 18080), tmp_path)
    text = rendered.config_path.read_text()
    assert "lb_retries 2" in text
    assert "lb_try_duration 5000ms" in text
    assert "lb_policy round_robin" in text
    assert "max_fails 5" in text
    assert "fail_duration 30000ms" in text
    assert "unhealthy_status 5xx" in text
    assert "admin off" in text
    assert str(tmp_path.resolve()) in text
    assert fields(rendered) == {"retry_statuses", "total_timeout", "consecutive_5xx", "rate_limit"}
    plain = px.render(
        "caddy",
        Policy(attempts=1, consecutive_5xx=None, balancing="least_request"),
        TWO,
        ("127.0.0.1", 1),
        tmp_path,
    )
    text = plain.config_path.read_text()
    assert "lb_policy least_conn" in text
    assert "lb_retries" not in text
    assert fields(plain) == {"retry_statuses", "total_timeout"}


def test_a_429_is_retried_by_nginx_only_and_listed_elsewhere(tmp_path: Path) -> None:
    policy = POLICIES["retry-429"]
    nginx = px.render("nginx", policy, TWO, ("127.0.0.1", 18080), tmp_path)
    retried = "proxy_next_upstream error timeout http_429 http_502 http_503 http_504;"
    assert retried in nginx.config_path.read_text()
    assert any("Retry-After" in item for item in nginx.unsupported)  # retried at once, never waited for
    assert any("throttles is ejected" in item for item in nginx.unsupported)
    haproxy = px.render("haproxy", policy, TWO, ("127.0.0.1", 18080), tmp_path)
    assert "retry-on conn-failure empty-response response-timeout 502 503 504\n" in haproxy.config_path.read_text()
    assert any(item.startswith("retry_statuses") and "not 429" in item for item in haproxy.unsupported)
    caddy = px.render("caddy", policy, TWO, ("127.0.0.1", 18080), tmp_path)
    assert "retry_statuses" in fields(caddy)


def test_policy_retries_429_only_with_retry_after() -> None:
    policy = POLICIES["retry-429"]
    retry = policy.retry()
    assert retry.statuses == {429, 502, 503, 504}
    assert retry.statuses_requiring_retry_after == {429}
    assert retry.retry_after_cap == 2.0
    assert Policy().retry().statuses_requiring_retry_after == frozenset()
    with pytest.raises(ConfigError, match=r"Policy\.retry_statuses"):
        Policy(retry_statuses=frozenset({404}))
    with pytest.raises(ConfigError, match=r"Policy\.retry_after_cap"):
        Policy(retry_after_cap=0.0)


@pytest.mark.parametrize("proxy", px.PROXIES)
def test_mtls_to_the_replicas_is_rendered_with_the_callers_certificate(
    proxy: str, pki: certificates.Pki, tmp_path: Path
) -> None:
    material = pki.clients[proxy]
    rendered = px.render(proxy, Policy(), TWO, ("127.0.0.1", 18080), tmp_path, tls=material)
    text = rendered.config_path.read_text()
    expected = {
        "nginx": [
            "proxy_pass https://service;",
            f'proxy_ssl_certificate "{material.cert}";',
            f'proxy_ssl_certificate_key "{material.key}";',
            f'proxy_ssl_trusted_certificate "{material.ca}";',
            "proxy_ssl_verify on;",
            f"proxy_ssl_name {certificates.SERVER_NAME};",
        ],
        "haproxy": [
            f'ssl crt "{material.bundle}" ca-file "{material.ca}" verify required',
            f"verifyhost {certificates.SERVER_NAME}",
        ],
        "caddy": [
            f'tls_client_auth "{material.cert}" "{material.key}"',
            f'tls_trusted_ca_certs "{material.ca}"',
            f"tls_server_name {certificates.SERVER_NAME}",
        ],
    }[proxy]
    for line in expected:
        assert line in text
    assert "https" not in text.split("listen", 1)[-1].split("\n", 1)[0]  # the client side stays plain
    assert oct(material.key.stat().st_mode & 0o777) == "0o600"
    plain = px.render(proxy, Policy(), TWO, ("127.0.0.1", 18080), tmp_path).config_path.read_text()
    assert str(material.cert) not in plain
    assert str(material.bundle) not in plain


@pytest.mark.system
@pytest.mark.parametrize("proxy", px.PROXIES)
def test_mtls_config_passes_the_proxys_validator(proxy: str, pki: certificates.Pki, tmp_path: Path) -> None:
    require_binary(proxy)
    workdir = tmp_path / proxy
    workdir.mkdir()
    rendered = px.render(proxy, POLICIES["retry-429"], TWO, ("127.0.0.1", 18080), workdir, tls=pki.clients[proxy])
    px.validate(rendered)


@pytest.mark.parametrize("proxy", px.PROXIES)
def test_invalid_input_is_a_config_error(proxy: str, tmp_path: Path) -> None:
    listen = ("127.0.0.1", 18080)
    with pytest.raises(ConfigError, match="upstreams"):
        px.render(proxy, Policy(), [], listen, tmp_path)
    with pytest.raises(ConfigError, match=r"Policy\.attempts"):
        px.render(proxy, Policy(attempts=10**6), TWO, listen, tmp_path)
    with pytest.raises(ConfigError, match="upstreams"):
        px.render(proxy, Policy(), [("127.0.0.1; evil", 80)], listen, tmp_path)
    with pytest.raises(ConfigError, match="listen"):
        px.render(proxy, Policy(), TWO, ("127.0.0.1", 0), tmp_path)
    with pytest.raises(ConfigError, match="workdir"):
        px.render(proxy, Policy(), TWO, listen, tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []


def test_unknown_proxy_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="proxy"):
        px.render("envoy", Policy(), TWO, ("127.0.0.1", 1), tmp_path)
    with pytest.raises(ConfigError, match="proxy"):
        px.binary("envoy")


# -- running sidecars -------------------------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_retries_a_503_on_the_other_replica(
    proxy: str, replicas: tuple[RunningServer[FaultyUpstream], RunningServer[FaultyUpstream]], tmp_path: Path
) -> None:
    good, bad = replicas
    policy = Policy(attempts=2, consecutive_5xx=None)
    _, sidecar = start(proxy, policy, [("127.0.0.1", good.port), ("127.0.0.1", bad.port)], tmp_path)
    with sidecar, httpx.Client(base_url=sidecar.url, trust_env=False, timeout=5.0) as client:
        before = sidecar.cpu_ns()
        statuses = [client.get("/").status_code for _ in range(40)]
        assert statuses == [200] * 40
        assert bad.app.stats.errors >= 10  # round robin sent it its share: each was retried on `good`
        assert good.app.stats.ok == 40
        # What the proxy says it did: one retry per 503 (nginx's log of retried requests, HAProxy's stats socket).
        # nginx logs a request after answering it: the last line may lag the last response by a moment.
        expected = {"retries": bad.app.stats.errors, "ejections": 0, "rate_limited": 0}
        deadline = time.monotonic() + 5.0
        while sidecar.counters() != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sidecar.counters() == expected
        assert sidecar.cpu_ns() > before
        assert sidecar.rss_bytes() > 1_000_000
        pids = sidecar.pids()
    assert_no_processes(pids)


@pytest.mark.system
@pytest.mark.parametrize(("proxy", "attempts"), [("nginx", 2), ("haproxy", 1)])
def test_ejects_the_failing_replica(
    proxy: str,
    attempts: int,
    replicas: tuple[RunningServer[FaultyUpstream], RunningServer[FaultyUpstream]],
    tmp_path: Path,
) -> None:
    good, bad = replicas
    policy = Policy(attempts=attempts, consecutive_5xx=1, ejection_time=30.0)
    _, sidecar = start(proxy, policy, [("127.0.0.1", good.port), ("127.0.0.1", bad.port)], tmp_path)
    with sidecar, httpx.Client(base_url=sidecar.url, trust_env=False, timeout=5.0) as client:
        statuses = [client.get("/").status_code for _ in range(30)]
        assert sidecar.counters()["ejections"] == 1
    assert bad.app.stats.requests == 1  # out after its first 503, for 30 s
    assert statuses.count(200) == 30 - (attempts == 1)


@pytest.mark.system
def test_nginx_without_retries_does_not_eject_on_statuses_as_listed(
    replicas: tuple[RunningServer[FaultyUpstream], RunningServer[FaultyUpstream]], tmp_path: Path
) -> None:
    good, bad = replicas
    rendered, sidecar = start(
        "nginx",
        Policy(attempts=1, consecutive_5xx=1),
        [("127.0.0.1", good.port), ("127.0.0.1", bad.port)],
        tmp_path,
    )
    assert any("no status" in item for item in rendered.unsupported)
    with sidecar, httpx.Client(base_url=sidecar.url, trust_env=False, timeout=5.0) as client:
        statuses = [client.get("/").status_code for _ in range(20)]
    assert statuses.count(503) == bad.app.stats.requests == 10  # round robin, never ejected


@pytest.mark.system
def test_haproxy_does_not_eject_on_retried_statuses_as_listed(
    replicas: tuple[RunningServer[FaultyUpstream], RunningServer[FaultyUpstream]], tmp_path: Path
) -> None:
    good, bad = replicas
    rendered, sidecar = start(
        "haproxy",
        Policy(attempts=2, consecutive_5xx=1),
        [("127.0.0.1", good.port), ("127.0.0.1", bad.port)],
        tmp_path,
    )
    assert any("never ejected" in item for item in rendered.unsupported)
    with sidecar, httpx.Client(base_url=sidecar.url, trust_env=False, timeout=5.0) as client:
        assert [client.get("/").status_code for _ in range(20)] == [200] * 20
    assert bad.app.stats.requests >= 10


@pytest.mark.system
def test_caddy_does_not_retry_on_a_status_as_listed(
    replicas: tuple[RunningServer[FaultyUpstream], RunningServer[FaultyUpstream]], tmp_path: Path
) -> None:
    good, bad = replicas
    rendered, sidecar = start(
        "caddy",
        Policy(attempts=2, consecutive_5xx=None),
        [("127.0.0.1", good.port), ("127.0.0.1", bad.port)],
        tmp_path,
    )
    assert "retry_statuses" in fields(rendered)
    with sidecar, httpx.Client(base_url=sidecar.url, trust_env=False, timeout=5.0) as client:
        before = sidecar.cpu_ns()
        statuses = [client.get("/").status_code for _ in range(20)]
        assert sorted(set(statuses)) == [200, 503]
        assert sidecar.counters() == {}  # Caddy reports neither retries nor ejections
        assert sidecar.cpu_ns() > before
        assert sidecar.rss_bytes() > 1_000_000
    assert (tmp_path / "caddy").exists()  # its autosave and storage went to the work directory


@pytest.mark.system
@pytest.mark.parametrize("proxy", px.PROXIES)
def test_a_sidecar_originates_mtls_to_a_replica_that_requires_it(
    proxy: str, pki: certificates.Pki, tmp_path: Path
) -> None:
    require_binary(proxy)
    context = pki.server.mtls().server_context(require_client_cert=True)
    with serve(FaultyUpstream(name="tls"), name="tls", ssl_context=context) as replica:
        # Without a client certificate the replica refuses the handshake...
        verify = ssl.create_default_context(cafile=str(pki.server.ca))
        with httpx.Client(verify=verify, trust_env=False) as anonymous, pytest.raises(httpx.HTTPError):
            anonymous.get(replica.url)
        # ...with the sidecar's, through the sidecar (plain HTTP on its side), every request is answered.
        _, sidecar = px.launch(proxy, Policy(), [("127.0.0.1", replica.port)], tmp_path, tls=pki.clients[proxy])
        with sidecar, httpx.Client(base_url=sidecar.url, trust_env=False, timeout=5.0) as client:
            assert [client.get("/").status_code for _ in range(5)] == [200] * 5
        assert replica.app.stats.ok == 5


# -- no process left behind -------------------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.parametrize("proxy", px.PROXIES)
@pytest.mark.parametrize("raised", [RuntimeError, KeyboardInterrupt])
def test_no_process_outlives_an_exception_in_the_block(
    proxy: str, raised: type[BaseException], tmp_path: Path
) -> None:
    _, sidecar = start(proxy, Policy(), TWO, tmp_path)
    pids = sidecar.pids()
    assert sidecar.pid in pids
    assert sidecar.running

    def block() -> None:
        with sidecar:
            raise raised

    with pytest.raises(raised):
        block()
    assert_no_processes(pids)
    assert group_pids(sidecar.pid) == []
    sidecar.stop()  # idempotent
    assert sidecar.rss_bytes() == 0


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from connectivity.compare import proxies as px
    from connectivity.compare.policy import Policy

    proxy, workdir, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    rendered = px.render(proxy, Policy(), [("127.0.0.1", 8001)], ("127.0.0.1", px.free_port()), workdir)
    sidecar = px.Sidecar.start(rendered)
    if mode == "interrupt":
        with sidecar:
            print(" ".join(map(str, sidecar.pids())), flush=True)
            time.sleep(60)
    else:
        print(" ".join(map(str, sidecar.pids())), flush=True)  # and exit without stopping it: atexit does
    """
)


@pytest.mark.system
@pytest.mark.parametrize("mode", ["interrupt", "exit"])
def test_no_process_outlives_ctrl_c_or_exit_of_the_parent(mode: str, tmp_path: Path) -> None:
    require_binary("nginx")
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, "nginx", str(tmp_path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stderr is not None
            pids = [int(pid) for pid in child.stdout.readline().split()]
            assert pids, child.stderr.read()
            if mode == "interrupt":
                child.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
            child.wait(timeout=15)
        finally:
            if child.poll() is None:
                child.kill()
    assert_no_processes(pids)


@pytest.mark.system
def test_a_taken_port_is_a_start_error_and_leaves_nothing(tmp_path: Path) -> None:
    require_binary("haproxy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rendered = px.render("haproxy", Policy(), TWO, ("127.0.0.1", taken.getsockname()[1]), tmp_path)
        before = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}
        with pytest.raises(px.ProxyStartError, match="haproxy") as caught:
            px.Sidecar.start(rendered, timeout=5.0)
    assert "cannot bind" in caught.value.output
    new = [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) not in before]
    assert [pid for pid in new if "haproxy" in _cmdline(pid)] == []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().decode(errors="replace")
    except OSError:
        return ""
