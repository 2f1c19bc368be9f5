"""Callers waiting in a line (a bulkhead's queue, a rate limiter's): a thread or a task, woken from any thread.

Theory of operation: a waiter is made before its ticket joins the line, so a wake-up that comes before the wait
begins is never lost. A thread waits on a :class:`threading.Event`; a task sleeps in a cancel scope that a wake-up
cancels, scheduled through the task's event loop when it comes from another thread.
"""

from __future__ import annotations

import contextlib
import threading

import anyio
import anyio.lowlevel

__all__ = ["AsyncWaiter", "SyncWaiter"]


class SyncWaiter:
    """A thread waiting for its turn: woken through a threading.Event, from any thread."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()


class AsyncWaiter:
    """A task waiting for its turn: it sleeps out its wait on the clock in a cancel scope; a wake-up cancels it.

    Waiting *is* a sleep on the transport's clock, so a virtual clock drives the wait like any other. The scope
    exists before the waiter is queued, so a wake-up that comes before the wait begins is not lost: a scope
    cancelled before it is entered cancels its body at once.
    """

    __slots__ = ("scope", "thread", "token")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.thread = threading.get_ident()
        self.token = anyio.lowlevel.current_token()

    def wake(self) -> None:
        if threading.get_ident() == self.thread:
            self.scope.cancel()
            return
        # Woken from another thread (a sync client, another loop): anyio objects are not thread-safe, so the
        # cancel is scheduled on the waiter's loop without blocking the waking thread.
        token = self.token
        with contextlib.suppress(RuntimeError):  # anyio.RunFinishedError: the loop is gone, its waiter with it
            token.backend_class.run_sync_soon(self.scope.cancel, (), token.native_token)
