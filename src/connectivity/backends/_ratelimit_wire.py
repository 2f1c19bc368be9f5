"""The wire side of :class:`~connectivity.backends.redis_ratelimit.RedisRateLimiter`: one decision as one EVALSHA
frame on a pooled connection, and a batch of decisions as one pipeline.

Theory of operation: for a plain (non-Cluster) client, :class:`Scripts` writes a frame built mostly in advance
(:func:`bulk`, :data:`SHA`) straight to an idle connection of the client's pool and reads the reply back, so none
of redis-py's per-command layers (pool lock, observability hooks, retries, argument encoding) run on the hot path.
A connection whose reply may still be on its way is dropped, never reused; ``SCRIPT LOAD`` runs once when the
server does not know the script. A Cluster client goes through ``register_script``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import anyio
import redis
import redis.asyncio
import redis.exceptions

from connectivity.backends import _ratelimit_scripts as lua

__all__ = ["SHA", "Call", "Scripts", "apipeline", "bulk", "pipeline"]

SHA: Final = hashlib.sha1(lua.DECIDE.encode(), usedforsecurity=False).hexdigest().encode()
"""The decision script's SHA-1, as EVALSHA takes it."""


@dataclass(slots=True)
class Call:
    """One script call being made: where, with what, and the pending cost it carries (batched mode)."""

    key: str
    redis_key: str
    args: tuple[str, ...]
    started: float
    view: Any = None  # batched mode: the key's view (connectivity.backends._ratelimit_views.View)
    carried: float = 0.0
    frame: bytes = b""


async def _read(conn: Any, timeout: float) -> Any:  # noqa: ASYNC109 (redis-py's own per-read timeout)
    """A reply read within ``timeout``: redis-py answers ``None`` when a read given a timeout runs out of it (the
    script and ``SCRIPT LOAD`` never reply nil), leaving the late reply on the wire; raising makes the caller drop
    the connection."""
    reply = await conn.read_response(timeout=timeout)
    if reply is None:
        raise redis.exceptions.TimeoutError(f"no reply within {timeout:g} s")
    return reply


def bulk(*parts: bytes) -> bytes:
    """RESP bulk strings (the body of a command frame)."""
    return b"".join(b"$%d\r\n%b\r\n" % (len(part), part) for part in parts)


class Scripts:
    """A client and the script registered on it; for a plain (non-Cluster) client, its connections used directly.

    A decision is one EVALSHA frame, built mostly in advance, written to an idle connection of the client's pool
    and read back: none of the client's per-command layers (pool lock, observability hooks, retries, argument
    encoding) run on the hot path, which is most of a decision's CPU. ``SCRIPT LOAD`` once when the server does not
    know the script (first use, or a Redis restarted empty). A Cluster client goes through ``register_script``.
    """

    __slots__ = ("client", "decide", "direct", "idle", "owned")

    def __init__(self, client: Any, *, owned: bool) -> None:
        self.client = client
        self.owned = owned
        self.decide: Any = client.register_script(lua.DECIDE)
        self.direct = isinstance(client, (redis.Redis, redis.asyncio.Redis))
        self.idle: list[Any] = []  # list.pop/append are atomic: threads share it without a lock

    def call(self, call: Call) -> Any:
        if not self.direct:
            return self.decide(keys=(call.redis_key,), args=call.args)
        try:
            conn = self.idle.pop()
        except IndexError:
            conn = self.client.connection_pool.make_connection()
        try:
            conn.send_packed_command((call.frame,), check_health=False)
            try:
                reply = conn.read_response()
            except redis.exceptions.NoScriptError:
                conn.send_command("SCRIPT", "LOAD", lua.DECIDE, check_health=False)
                conn.read_response()
                conn.send_packed_command((call.frame,), check_health=False)
                reply = conn.read_response()
        except redis.exceptions.ResponseError:
            self.idle.append(conn)  # an error reply leaves the connection in step
            raise
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: never reuse this connection
            raise
        self.idle.append(conn)
        return reply

    async def acall(self, call: Call, timeout: float) -> Any:  # noqa: ASYNC109 (a per-read timeout, below)
        """One decision, bounded by ``timeout``: a connection's connect and handshake (once) and then its read.

        The connections are made without a socket timeout: redis-py then writes without wrapping the write in a
        task of its own, and the read takes ``timeout`` as an argument (a timer, not a task). A write of one small
        frame never waits. A fresh connection to a server that accepts and never answers costs at most two
        ``timeout``: one for the handshake, then this read (the Cluster path is bounded as a whole by the caller).
        """
        if not self.direct:
            with anyio.fail_after(timeout):
                return await self.decide(keys=(call.redis_key,), args=call.args)
        try:
            conn = self.idle.pop()
        except IndexError:
            pool = self.client.connection_pool
            kwargs = {**pool.connection_kwargs, "socket_timeout": None, "socket_connect_timeout": timeout}
            conn = pool.connection_class(**kwargs)
        try:
            if not conn.is_connected:
                with anyio.fail_after(timeout):
                    await conn.connect()
            await conn.send_packed_command((call.frame,), check_health=False)
            try:
                reply = await _read(conn, timeout)
            except redis.exceptions.NoScriptError:
                await conn.send_command("SCRIPT", "LOAD", lua.DECIDE, check_health=False)
                await _read(conn, timeout)
                await conn.send_packed_command((call.frame,), check_health=False)
                reply = await _read(conn, timeout)
        except redis.exceptions.ResponseError:
            self.idle.append(conn)
            raise
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
            raise
        self.idle.append(conn)
        return reply

    def close(self) -> None:
        while self.idle:
            self.idle.pop().disconnect()
        if self.owned:
            self.client.close()

    async def aclose(self) -> None:
        while self.idle:
            await self.idle.pop().disconnect()
        if self.owned:
            await self.client.aclose()


def pipeline(scripts: Scripts, calls: list[Call]) -> list[Any]:
    pipe = scripts.client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(scripts.decide.sha, 1, call.redis_key, *call.args)
    return list(pipe.execute(raise_on_error=False))


async def apipeline(scripts: Scripts, calls: list[Call]) -> list[Any]:
    pipe = scripts.client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(scripts.decide.sha, 1, call.redis_key, *call.args)
    return list(await pipe.execute(raise_on_error=False))
