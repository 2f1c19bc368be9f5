"""A worker process sharing one breaker through Redis: JSON commands on stdin, one JSON reply per line on stdout.

Run as ``python redis_worker.py <redis url> <breaker config as JSON>``.
"""

from __future__ import annotations

import json
import sys

from connectivity.backends.redis import RedisBreakerBackend
from connectivity.policies.breaker import CircuitBreaker, Rejection


def main() -> None:
    backend = RedisBreakerBackend(sys.argv[1], timeout=1.0)
    circuit = backend.circuit(CircuitBreaker(**json.loads(sys.argv[2])))
    held: list[int] = []
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "exit":
            break
        if op == "admit":
            results = []
            for _ in range(command.get("n", 1)):
                ticket = circuit.admit()
                if isinstance(ticket, Rejection):
                    results.append({"rejected": ticket.state, "retry_after": ticket.retry_after})
                else:
                    held.append(ticket)
                    results.append({"ticket": ticket})
            reply: object = results
        elif op == "record_all":
            for ticket in held:
                circuit.record(ticket, command["outcome"])
            held.clear()
            reply = {"state": circuit.state}
        elif op == "status":
            reply = dict(circuit.status())
        else:
            reply = {"error": f"unknown op {op!r}"}
        print(json.dumps(reply), flush=True)
    backend.close()


if __name__ == "__main__":
    main()
