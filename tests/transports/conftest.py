"""Run each transport test three ways: httpx.Client, and httpx.AsyncClient on asyncio and on trio."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import httpx
import pytest

T = TypeVar("T")


class Sender:
    """Send requests through a transport with the client kind under test, reading the body."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    @property
    def is_async(self) -> bool:
        return self.mode != "sync"

    def __call__(
        self, transport: Any, method: str = "GET", url: str = "http://upstream/", **kwargs: Any
    ) -> httpx.Response:
        if self.mode == "sync":
            with httpx.Client(transport=transport) as client:
                response = client.request(method, url, **kwargs)
                response.read()
                return response

        async def main() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport) as client:
                response = await client.request(method, url, **kwargs)
                await response.aread()
                return response

        return anyio.run(main, backend=self.mode)

    def run(self, sync: Callable[[], T], async_: Callable[[], Awaitable[T]]) -> T:
        """Run the sync variant, or the async one on this mode's event loop."""
        if self.mode == "sync":
            return sync()
        return anyio.run(async_, backend=self.mode)


@pytest.fixture(params=["sync", "asyncio", "trio"])
def send(request: pytest.FixtureRequest) -> Sender:
    return Sender(str(request.param))
