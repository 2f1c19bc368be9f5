"""Three real processes share one breaker through one real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectivity.policies.breaker import FAILURE, SUCCESS
from connectivity.testing.redis import RedisServer

from .conftest import wait_until

pytestmark = pytest.mark.system

WORKER = Path(__file__).with_name("redis_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"
CONFIG = {
    "name": "orders",
    "failure_ratio": None,
    "consecutive_failures": 3,
    "open_for": 0.3,
    "half_open_permits": 2,
}


class Worker:
    def __init__(self, url: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), url, json.dumps(CONFIG)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def reply(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"worker exited with {self.process.wait(timeout=10)}"
        return json.loads(line)

    def __call__(self, **command: Any) -> Any:
        self.send(**command)
        return self.reply()

    def close(self) -> None:
        if self.process.poll() is None:
            self.send(op="exit")
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)
        self.process.stdout.close()


@pytest.fixture
def workers(redis_server: RedisServer) -> Iterator[list[Worker]]:
    started = [Worker(redis_server.url) for _ in range(3)]
    try:
        for worker in started:
            assert worker.reply() == {"ready": True}
        yield started
    finally:
        for worker in started:
            worker.close()


def test_a_trip_in_one_process_is_enforced_by_the_others_on_their_next_admit(workers: list[Worker]) -> None:
    first, second, third = workers
    for worker in workers:  # all three are admitted while the circuit is closed
        assert "ticket" in worker(op="admit")[0]
        assert worker(op="record_all", outcome=SUCCESS) == {"state": "closed"}

    for _ in range(3):
        assert "ticket" in first(op="admit")[0]
        reply = first(op="record_all", outcome=FAILURE)
    assert reply == {"state": "open"}

    for worker in (second, third):  # their very next call is rejected
        [answer] = worker(op="admit")
        assert answer["rejected"] == "open"
        assert 0 < answer["retry_after"] <= 0.3

    # Once open_for has passed, the three race for the probes: exactly half_open_permits succeed in total.
    wait_until(lambda: second(op="status")["retry_after_s"] == 0.0, what="open time elapsed")
    assert second(op="status")["state"] == "open"  # nobody has asked since: no probe taken yet
    for worker in workers:
        worker.send(op="admit", n=10)
    answers = [answer for worker in workers for answer in worker.reply()]
    assert sum("ticket" in answer for answer in answers) == 2
    assert {answer["rejected"] for answer in answers if "rejected" in answer} == {"half-open"}
    assert third(op="status")["probes_in_flight"] == 2

    # The probes succeed, wherever they ran: the circuit closes for everyone.
    assert {worker(op="record_all", outcome=SUCCESS)["state"] for worker in workers} <= {"half-open", "closed"}
    for worker in workers:
        assert "ticket" in worker(op="admit")[0]
    assert first(op="status")["state"] == "closed"
