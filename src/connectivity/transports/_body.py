"""Making request bodies safe to send more than once.

Theory of operation (after Linkerd's replay body): a bytes body is replayable as it is. A streamed body is wrapped
in :class:`ReplayableStream`, which passes chunks through to the first attempt while keeping a copy, up to a cap.
A retry replays the copy and then carries on reading the original stream where the last attempt stopped. Once
more than ``cap`` bytes have gone by, the copy is dropped and the body can no longer be replayed; the retry layer
then gives up and records why. Nothing is read ahead: the first attempt streams exactly as it would without us.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from connectivity._http import httpx

__all__ = ["ReplayableStream", "is_replayable", "make_replayable"]


class ReplayableStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A request stream that can be iterated again while it stays under ``cap`` bytes."""

    __slots__ = ("_aiter", "_cap", "_chunks", "_exhausted", "_iter", "_overflowed", "_size", "_source")

    def __init__(self, source: httpx.SyncByteStream | httpx.AsyncByteStream, cap: int) -> None:
        self._source = source
        self._cap = cap
        self._chunks: list[bytes] = []
        self._size = 0
        self._overflowed = cap <= 0
        self._exhausted = False
        self._iter: Iterator[bytes] | None = None
        self._aiter: AsyncIterator[bytes] | None = None

    @property
    def replayable(self) -> bool:
        """Whether every byte handed out so far has been kept."""
        return not self._overflowed

    @property
    def started(self) -> bool:
        """Whether any attempt has begun reading the body."""
        return self._iter is not None or self._aiter is not None

    def _keep(self, chunk: bytes) -> None:
        if self._overflowed:
            return
        self._size += len(chunk)
        if self._size > self._cap:
            self._overflowed = True
            self._chunks.clear()
        else:
            self._chunks.append(chunk)

    def __iter__(self) -> Iterator[bytes]:
        if self._overflowed and self.started:
            raise httpx.StreamConsumed()
        yield from list(self._chunks)
        if self._exhausted:
            return
        if self._iter is None:
            if not isinstance(self._source, httpx.SyncByteStream):
                raise TypeError("an async request body cannot be sent with a sync client")
            self._iter = iter(self._source)
        for chunk in self._iter:
            self._keep(chunk)
            yield chunk
        self._exhausted = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._overflowed and self.started:
            raise httpx.StreamConsumed()
        for chunk in list(self._chunks):
            yield chunk
        if self._exhausted:
            return
        if self._aiter is None:
            if not isinstance(self._source, httpx.AsyncByteStream):
                raise TypeError("a sync request body cannot be sent with an async client")
            self._aiter = self._source.__aiter__()
        async for chunk in self._aiter:
            self._keep(chunk)
            yield chunk
        self._exhausted = True

    def close(self) -> None:
        if isinstance(self._source, httpx.SyncByteStream):
            self._source.close()

    async def aclose(self) -> None:
        if isinstance(self._source, httpx.AsyncByteStream):
            await self._source.aclose()


def make_replayable(request: httpx.Request, cap: int) -> None:
    """Wrap a streamed request body so a retry can resend it (bytes bodies are left alone)."""
    if not isinstance(request.stream, (httpx.ByteStream, ReplayableStream)):
        request.stream = ReplayableStream(request.stream, cap)


def is_replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent again as it was."""
    stream = request.stream
    return isinstance(stream, httpx.ByteStream) or (isinstance(stream, ReplayableStream) and stream.replayable)
