"""The CPU verdict's machinery: medians with distribution-free intervals, paired rounds, fresh pools per block."""

from __future__ import annotations

import math
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("uvicorn")

from connectivity.compare.contenders import FreshPool
from connectivity.compare.drive import Contender, run_block, settle
from connectivity.compare.stats import CPU_RATIO, median_interval, summarise_cpu, verdicts
from connectivity.testing import FaultyUpstream
from connectivity.testing.server import serve
from connectivity.transports.http import HTTPTransport
from connectivity.transports.timeout import deadline_aware

# -- median_interval --------------------------------------------------------------------------------------


def test_the_interval_is_the_sign_test_one() -> None:
    # n = 10 at 95 %: P(Binomial(10, 1/2) <= 1) = 11/1024 <= 2.5 % < P(<= 2): the 2nd smallest to the 2nd largest.
    spread = median_interval([float(value) for value in (9, 1, 8, 2, 7, 3, 6, 4, 5, 10)])
    assert spread["median"] == 5.5
    assert (spread["low"], spread["high"]) == (2.0, 9.0)
    assert spread["n"] == 10
    assert spread["level"] == pytest.approx(1 - 2 * 11 / 1024)


def test_the_interval_covers_the_median_as_often_as_it_says() -> None:
    # Exact coverage over every outcome of a sign test: the interval misses the true median only when fewer than
    # k values fall below it (or above it), which the binomial tail bounds.
    for n in (6, 10, 30, 61):
        spread = median_interval(list(map(float, range(n))))
        k = int(spread["low"]) + 1
        miss = 2 * sum(math.comb(n, count) for count in range(k)) / 2**n
        assert spread["level"] == pytest.approx(1 - miss)
        assert spread["level"] >= 0.95
        assert spread["high"] == n - k


def test_too_few_values_give_the_whole_range_and_say_so() -> None:
    spread = median_interval([3.0, 1.0, 2.0])
    assert (spread["low"], spread["median"], spread["high"]) == (1.0, 2.0, 3.0)
    assert spread["level"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no values"):
        median_interval([])


# -- the CPU verdict --------------------------------------------------------------------------------------


def _phase(added: list[float], hop: list[float], twin: list[float]) -> dict[str, Any]:
    """A healthy scenario whose CPU phase has bare httpx at 1000 µs and the others ``added`` to it, per round."""
    rounds = len(added)
    bare = [{"client_cpu_us": 1000.0 + index, "proxy_cpu_us": None} for index in range(rounds)]
    ours = [{"client_cpu_us": 1000.0 + index + added[index], "proxy_cpu_us": None} for index in range(rounds)]
    control = [{"client_cpu_us": 1000.0 + index + twin[index], "proxy_cpu_us": None} for index in range(rounds)]
    nginx = [{"client_cpu_us": 1040.0 + index, "proxy_cpu_us": hop[index]} for index in range(rounds)]
    blocks = {"httpx": bare, "httpx (control)": control, "connectivity": ours, "nginx": nginx}
    return {"healthy": {"failing_replica": False, "cpu": summarise_cpu({"open": blocks})}}


def _cpu_verdict(scenarios: dict[str, Any]) -> dict[str, Any]:
    (verdict,) = verdicts(scenarios)
    return verdict


def test_paired_differences_are_taken_round_by_round() -> None:
    # Drift of bare httpx across rounds (1000, 1001, ...) cancels out in the pairs: every difference is exactly 7.
    phase = _phase([7.0] * 12, [100.0] * 12, [0.0] * 12)["healthy"]["cpu"]["open"]
    assert phase["added_client_cpu_us"]["connectivity"] == {
        "median": 7.0,
        "low": 7.0,
        "high": 7.0,
        "n": 12,
        "level": pytest.approx(1 - 2 * 79 / 4096),
    }
    assert phase["added_client_cpu_us"]["nginx"]["median"] == 40.0  # its client side, shown beside the hop
    assert phase["hop_cpu_us"] == {"nginx": phase["hop_cpu_us"]["nginx"]}
    assert phase["hop_cpu_us"]["nginx"]["median"] == 100.0


def test_pass_when_the_whole_interval_is_under_the_limit() -> None:
    verdict = _cpu_verdict(_phase([5.0, 8.0, 6.0, 9.0, 7.0, 12.0] * 2, [100.0, 104.0, 98.0] * 4, [1.0, -1.0] * 6))
    assert verdict["pass"] is True
    assert verdict["inconclusive"] is False
    assert verdict["cheapest_hop"] == "nginx"
    assert verdict["added_us"]["high"] <= CPU_RATIO * verdict["cheapest_hop_us"]["low"]
    assert "control twin" in verdict["detail"]


def test_fail_when_the_whole_interval_is_over_the_limit() -> None:
    verdict = _cpu_verdict(_phase([50.0, 60.0, 55.0, 45.0] * 3, [100.0] * 12, [0.0] * 12))
    assert verdict["pass"] is False
    assert verdict["inconclusive"] is False


def test_inconclusive_only_when_the_interval_straddles_the_limit() -> None:
    verdict = _cpu_verdict(_phase([0.0, 40.0, 10.0, 30.0, 20.0, 25.0] * 2, [100.0] * 12, [0.0] * 12))
    assert verdict["pass"] is None
    assert verdict["inconclusive"] is True
    assert "straddles" in verdict["detail"]
    # Without a sidecar there is nothing to compare with: not measured, rather than inconclusive.
    scenarios = _phase([1.0] * 6, [100.0] * 6, [0.0] * 6)
    phase = scenarios["healthy"]["cpu"]["open"]
    phase["hop_cpu_us"] = {}
    verdict = _cpu_verdict(scenarios)
    assert verdict["pass"] is None
    assert "inconclusive" not in verdict


# -- a fresh pool per block -------------------------------------------------------------------------------


def test_a_fresh_pool_keeps_the_network_transports_deadline_awareness() -> None:
    assert deadline_aware(FreshPool(HTTPTransport)) is True
    assert deadline_aware(FreshPool(httpx.AsyncHTTPTransport)) is False


def test_every_block_starts_with_the_connections_its_mode_needs() -> None:
    with serve(FaultyUpstream(name="pool"), name="pool") as server:

        async def main() -> None:
            pool = FreshPool(httpx.AsyncHTTPTransport)
            async with httpx.AsyncClient(transport=pool, trust_env=False) as client:
                contender = Contender("httpx", client, [server.url + "/"], renew=pool.renew)
                block = await run_block(
                    contender,
                    mode="closed",
                    count=30,
                    rate=100.0,
                    concurrency=6,
                    limit=30.0,
                    upstream_requests=lambda: 0,
                    events={},
                    before=lambda: settle(contender, mode="closed", concurrency=6, replicas=1),
                )
                assert block.ok == 30
                # The closed loop's six connections stay pooled; the next (open-loop) block starts from one.
                assert server.open_connections >= 6
                await settle(contender, mode="open", concurrency=6, replicas=1)
                await anyio.to_thread.run_sync(server.wait_for_connections, 1)
                assert server.open_connections == 1

        anyio.run(main, backend="asyncio")
