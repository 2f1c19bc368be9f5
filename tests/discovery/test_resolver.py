"""The resolver contract: last good list kept on failure, refresh timing by TTL and interval, static lists."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from connectivity.discovery import Endpoint, Resolution, Resolver, Static
from connectivity.errors import ConfigError
from connectivity.testing import FakeClock


class Scripted(Resolver):
    """Answers from a script: an endpoint list with a TTL, or an exception."""

    def __init__(self, clock: FakeClock, *answers: tuple[list[str], float | None] | Exception) -> None:
        super().__init__("scripted", refresh_interval=10.0, retry_interval=2.0, clock=clock)
        self.answers = list(answers)

    def _fetch(self) -> tuple[Iterable[Endpoint], float | None]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        names, ttl = answer
        return [Endpoint.parse(name) for name in names], ttl


def test_first_use_is_due_and_a_success_is_kept_for_its_ttl() -> None:
    clock = FakeClock()
    resolver = Scripted(clock, (["a:1", "b:2"], 5.0), (["a:1"], None))
    assert resolver.due()
    assert resolver.current().version == 0
    resolution = resolver.refresh()
    assert [e.key for e in resolution.endpoints] == ["a:1", "b:2"]
    assert (resolution.version, resolution.error) == (1, None)
    clock.advance(4.9)
    assert not resolver.due()
    clock.advance(0.1)
    assert resolver.due()
    assert resolver.refresh().version == 2
    clock.advance(9.9)  # no TTL: the refresh interval applies
    assert not resolver.due()


def test_a_failure_keeps_the_last_good_list_and_retries_later() -> None:
    clock = FakeClock()
    resolver = Scripted(clock, (["a:1"], None), OSError("registry down"), (["a:1"], None))
    resolver.refresh()
    clock.advance(10.0)
    failed = resolver.refresh()
    assert [e.key for e in failed.endpoints] == ["a:1"]
    assert failed.error == "OSError: registry down"
    assert failed.version == 1
    clock.advance(1.9)
    assert not resolver.due()
    clock.advance(0.1)
    recovered = resolver.refresh()
    assert recovered.error is None
    assert recovered.version == 1  # the same list: no change to announce


@pytest.mark.anyio
async def test_async_refresh_and_the_polling_watch() -> None:
    clock = FakeClock()
    resolver = Scripted(clock, (["a:1"], None))
    resolution = await resolver.arefresh()
    assert isinstance(resolution, Resolution)
    assert resolution.version == 1


def test_static() -> None:
    resolver = Static(["10.0.0.1:80", Endpoint("10.0.0.2", 8080)])
    assert [e.key for e in resolver.current().endpoints] == ["10.0.0.1:80", "10.0.0.2:8080"]
    assert not resolver.due()
    with pytest.raises(ConfigError):
        Static("10.0.0.1:80")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Static([42])  # type: ignore[list-item]
