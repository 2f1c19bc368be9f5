"""Benchmarks for connectivity: what the policy stack costs, measured side by side with its alternatives.

Run ``python -m bench`` (all three benchmarks), or ``python -m bench overhead|e2e|instructions``; add ``--quick``
for a smoke run. Each benchmark interleaves its contenders round by round, reports medians over the rounds, prints
ratios and PASS/FAIL lines against the performance budget, and writes every raw number to
``bench/results/<name>.json``.

* :mod:`bench.overhead`: CPU per call of the retry + timeout + budget stack over an in-memory transport, against
  calling that transport directly (no network, no httpx client).
* :mod:`bench.e2e`: client CPU and latency per request to a real uvicorn upstream running in another process, for
  bare httpx, the connectivity stack (in full, and its retry layer alone), httpx-retries and stamina, with
  ``AsyncClient`` and ``Client``.
* :mod:`bench.instructions`: the same requests counted in instructions under valgrind's callgrind, a measure that
  machine noise does not move (skipped when valgrind is not installed).

Speed is measured here, never asserted in the test suite.
"""
