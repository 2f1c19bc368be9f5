"""The client process the instructions benchmark runs under callgrind.

``python -m bench._ir_client URL MODE CONTENDER COUNT SEGMENTS`` builds ``CONTENDER`` (see
:mod:`bench._contenders`) on a keep-alive client, sync (``MODE`` ``sync``, :class:`httpx.Client`) or async
(``async``, :class:`httpx.AsyncClient` on asyncio), and sends sequential ``GET`` requests to ``URL`` (the balanced
contender: to its service, whose one endpoint is ``URL``):
:data:`WARMUP` uncounted ones, then one empty segment, then ``SEGMENTS`` segments of ``COUNT`` requests.

Each segment starts with a full garbage collection and a call of :func:`os.getppid`, and ends with a call of
:func:`os.getpgrp`: two libc functions nothing else in the process calls. Run under
``valgrind --tool=callgrind --zero-before=getppid --dump-before=getpgrp``, callgrind zeroes its counters as a
segment starts and writes them out as it ends, so each dump holds the instructions of exactly one segment's
requests: interpreter start-up, imports, building the client and the warm-up are never counted. The empty segment
measures what the markers themselves cost. Outside callgrind the markers are two cheap system calls.

One contender per process: contenders measured one after another in the same process move each other's counts by
several thousand instructions per request (memory the previous one freed, caches it warmed), as much as the
differences being measured.

Exits with status 1 if a request fails (the traceback goes to stderr) or answers other than ``200``, 2 on bad
arguments.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Sequence

import anyio

from bench._contenders import CONTENDERS, async_get, request_url, sync_get

__all__ = ["DUMP_MARKER", "MODES", "WARMUP", "ZERO_MARKER", "main"]

WARMUP = 50
"""Requests sent before the counted ones (opens the connection, warms every cache on the path)."""
MODES = ("sync", "async")
ZERO_MARKER = "getppid"
"""The libc function called as a segment starts (callgrind ``--zero-before``)."""
DUMP_MARKER = "getpgrp"
"""The libc function called as a segment ends (callgrind ``--dump-before``)."""


def _begin() -> None:
    gc.collect()
    os.getppid()


def _end() -> None:
    os.getpgrp()


def _sync(url: str, name: str, count: int, segments: int) -> int:
    failures = 0
    with contextlib.ExitStack() as stack:
        get = sync_get(name, stack, url)
        target = request_url(name, url)
        for _ in range(WARMUP):
            failures += get(target).status_code != 200
        _begin()
        _end()
        for _ in range(segments):
            _begin()
            for _ in range(count):
                failures += get(target).status_code != 200
            _end()
    return failures


async def _async(url: str, name: str, count: int, segments: int) -> int:
    failures = 0
    async with contextlib.AsyncExitStack() as stack:
        get = await async_get(name, stack, url)
        target = request_url(name, url)
        for _ in range(WARMUP):
            failures += (await get(target)).status_code != 200
        _begin()
        _end()
        for _ in range(segments):
            _begin()
            for _ in range(count):
                failures += (await get(target)).status_code != 200
            _end()
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Send the requests; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if (
        len(args) != 5
        or args[1] not in MODES
        or args[2] not in CONTENDERS
        or not args[3].isdigit()
        or not args[4].isdigit()
    ):
        print(
            f"usage: python -m bench._ir_client URL {{{','.join(MODES)}}} CONTENDER COUNT SEGMENTS "
            f"(contenders: {', '.join(CONTENDERS)})",
            file=sys.stderr,
        )
        return 2
    url, mode, name, count, segments = args[0], args[1], args[2], int(args[3]), int(args[4])
    if not url.startswith("http://127.0.0.1:"):
        print("only a loopback upstream (http://127.0.0.1:PORT/) is allowed", file=sys.stderr)
        return 2
    if count < 1 or segments < 1:
        print("COUNT and SEGMENTS must be at least 1", file=sys.stderr)
        return 2
    if mode == "sync":
        failures = _sync(url, name, count, segments)
    else:
        failures = anyio.run(_async, url, name, count, segments, backend="asyncio")
    if failures:
        print(f"{failures} requests answered other than 200", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
