"""The File resolver: JSON and YAML endpoint files, change detection by polling on the injected clock, and invalid
files rejected with errors naming the file and the entry while the last good list stays in force."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from connectivity.discovery import DiscoveryError, Endpoint, File, Resolution
from connectivity.discovery import file as file_module
from connectivity.errors import BackendUnavailableError, ConfigError
from connectivity.testing import FakeClock

from .conftest import keys

ENTRIES = [
    {"address": "10.0.0.1", "port": 8080},
    {"address": "10.0.0.2", "port": 8080, "weight": 3, "zone": "eu-1b", "metadata": {"version": "v2"}},
]


def write(path: Path, content: Any) -> None:
    """Replace ``path`` the recommended way: write a sibling, rename it over (a new inode)."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(content if isinstance(content, str) else json.dumps(content))
    os.replace(staging, path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_json_file(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "orders.json"
    write(path, ENTRIES)
    resolver = File(path, clock=clock)
    resolution = resolver.refresh()
    assert resolution.endpoints == (
        Endpoint("10.0.0.1", 8080),
        Endpoint("10.0.0.2", 8080, 3, "eu-1b", {"version": "v2"}),
    )
    assert (resolution.version, resolution.error, resolution.source) == (1, None, f"file:{path}")


def test_an_endpoints_object_and_an_empty_list_are_valid(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "orders.json"
    write(path, {"endpoints": ENTRIES[:1]})
    assert keys(File(path, clock=clock).refresh()) == ["10.0.0.1:8080"]
    write(path, [])
    resolution = File(path, clock=clock).refresh()
    assert (resolution.endpoints, resolution.error, resolution.version) == ((), None, 1)


@pytest.mark.parametrize("name", ["orders.yaml", "orders.YML", "orders.conf"])
def test_a_yaml_file_by_suffix_or_by_format(tmp_path: Path, clock: FakeClock, name: str) -> None:
    path = tmp_path / name
    write(path, "# orders\n- address: 10.0.0.1\n  port: 8080\n- {address: '::1', port: 8081, zone: z}\n")
    resolver = File(path, clock=clock, format=None if name != "orders.conf" else "yaml")
    assert keys(resolver.refresh()) == ["10.0.0.1:8080", "[::1]:8081"]


def test_changes_are_picked_up_at_the_next_check(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "orders.json"
    write(path, ENTRIES[:1])
    resolver = File(path, interval=2.0, clock=clock)
    assert resolver.refresh().version == 1
    write(path, ENTRIES)
    clock.advance(1.9)
    assert not resolver.due()
    clock.advance(0.1)
    assert resolver.due()
    resolution = resolver.refresh()
    assert (keys(resolution), resolution.version) == (["10.0.0.1:8080", "10.0.0.2:8080"], 2)


def test_an_in_place_rewrite_of_the_same_size_is_seen_through_the_modification_time(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "orders.json"
    path.write_text(json.dumps([{"address": "10.0.0.1", "port": 8080}]))
    resolver = File(path, clock=clock)
    resolver.refresh()
    stat = path.stat()
    path.write_text(json.dumps([{"address": "10.0.0.9", "port": 8080}]))  # same inode, same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert keys(resolver.refresh()) == ["10.0.0.9:8080"]


class CountingFile(File):
    __slots__ = ("parsed",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parsed = 0

    def _parse(self, data: bytes) -> list[Endpoint]:
        self.parsed += 1
        return super()._parse(data)


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "orders.json"
    write(path, ENTRIES)
    resolver = CountingFile(path, clock=clock)
    for _ in range(3):
        resolution = resolver.refresh()
    assert (resolver.parsed, resolution.version, resolution.error) == (1, 1, None)
    write(path, "[{")  # invalid, and stays so
    for _ in range(3):
        resolution = resolver.refresh()
    assert resolver.parsed == 2  # the same error again, without reading the file
    assert isinstance(resolution.exception, ConfigError)
    assert resolution.endpoints == resolver.current().endpoints
    assert keys(resolution) == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_invalid_json_names_the_file_and_line_and_keeps_the_last_good_list(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "orders.json"
    write(path, ENTRIES)
    resolver = File(path, clock=clock)
    good = resolver.refresh()
    write(path, '[\n  {"address": "10.0.0.3", "port": 8080}\n  {"address": "10.0.0.4", "port": 8080}\n]')
    failed = resolver.refresh()
    assert isinstance(failed.exception, ConfigError)
    assert failed.exception.field == f"{path}:3:3"
    assert failed.exception.value == '{"address": "10.0.0.4", "port": 8080}'
    assert "is not JSON: Expecting ',' delimiter" in str(failed.error)
    assert (failed.endpoints, failed.version, failed.resolved_at) == (good.endpoints, 1, good.resolved_at)
    write(path, ENTRIES[:1])
    recovered = resolver.refresh()
    assert (keys(recovered), recovered.version, recovered.error) == (["10.0.0.1:8080"], 2, None)


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "orders.yaml"
    write(path, "- address: 10.0.0.1\n  port: 8080\n- address: [unclosed\n")
    failed = File(path, clock=clock).refresh()
    assert isinstance(failed.exception, ConfigError)
    assert failed.exception.field.startswith(f"{path}:")
    assert "is not YAML" in str(failed.error)
    assert failed.endpoints == ()


@pytest.mark.parametrize(
    ("document", "field", "rule"),
    [
        ([ENTRIES[0], {"address": "10.0.0.2", "port": 0}], "[1].port", "from 1 to 65535"),
        ([{"address": "10.0.0.2", "port": "80"}], "[0].port", "from 1 to 65535"),
        ([{"address": "10.0.0.2", "port": True}], "[0].port", "from 1 to 65535"),
        ([{"port": 80}], "[0].address", "is required"),
        ([{"address": "10.0.0.2"}], "[0].port", "is required"),
        ([{"address": "-bad-", "port": 80}], "[0].address", "host name"),
        ([{"address": "10.0.0.2", "port": 80, "weight": 0}], "[0].weight", "greater than 0"),
        ([{"address": "10.0.0.2", "port": 80, "zone": ""}], "[0].zone", "non-empty"),
        ([{"address": "10.0.0.2", "port": 80, "metadata": [1]}], "[0].metadata", "mapping"),
        ([{"address": "10.0.0.2", "port": 80, "wieght": 2}], "[0].wieght", "is not a field"),
        ([ENTRIES[0], ENTRIES[1], ENTRIES[0]], "[2]", "duplicates entry [0]"),
        (["10.0.0.1:80"], "[0]", "must be an object"),
        ({"address": "10.0.0.1", "port": 80}, "", "must be a list"),
        ({"endpoints": ENTRIES, "extra": 1}, "", "must be a list"),
    ],
)
def test_an_invalid_entry_is_named_by_file_and_index(
    tmp_path: Path, clock: FakeClock, document: Any, field: str, rule: str
) -> None:
    path = tmp_path / "orders.json"
    write(path, ENTRIES)
    resolver = File(path, clock=clock)
    good = resolver.refresh()
    write(path, document)
    failed = resolver.refresh()
    assert isinstance(failed.exception, ConfigError)
    assert failed.exception.field == f"{path}{field}"
    assert rule in failed.exception.rule
    assert str(failed.error).startswith(f"ConfigError: {path}{field}")
    assert (failed.endpoints, failed.version) == (good.endpoints, 1)


def test_a_missing_file_keeps_the_last_good_list_until_it_is_back(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "orders.json"
    resolver = File(path, clock=clock)
    missing = resolver.refresh()
    assert isinstance(missing.exception, DiscoveryError)
    assert (missing.exception.kind, missing.endpoints, missing.version) == ("not-found", (), 0)
    assert "No such file or directory" in str(missing.error)
    write(path, ENTRIES)
    good = resolver.refresh()
    path.unlink()
    gone = resolver.refresh()
    assert (gone.endpoints, gone.version) == (good.endpoints, 1)
    write(path, ENTRIES)  # the same content again: known, no new version
    back = resolver.refresh()
    assert (back.error, back.version) == (None, 1)


def test_a_file_that_is_not_utf8_or_too_large(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "orders.json"
    path.write_bytes(b"[\xff]")
    failed = File(path, clock=clock).refresh()
    assert isinstance(failed.exception, ConfigError)
    assert "UTF-8" in failed.exception.rule
    monkeypatch.setattr(file_module, "MAX_FILE_BYTES", 16)
    write(path, ENTRIES)
    failed = File(path, clock=clock).refresh()
    assert isinstance(failed.exception, ConfigError)
    assert "too large" in failed.exception.rule


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"path": ""}, "File.path"),
        ({"path": 42}, "File.path"),
        ({"path": "x.json", "format": "toml"}, "File.format"),
        ({"path": "x.json", "interval": 0}, "File.interval"),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        File(**kwargs)
    assert caught.value.field == field


def test_without_pyyaml_a_yaml_file_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(BackendUnavailableError, match=r"connectivity-sdk\[yaml\]"):
        File("orders.yaml")
    File("orders.json")  # JSON needs nothing


@pytest.mark.anyio
async def test_the_watch_polls_on_the_injected_clock_without_threads(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "orders.json"
    write(path, ENTRIES[:1])
    resolver = File(path, interval=5.0, clock=clock)
    updates: list[Resolution] = []
    threads = threading.active_count()
    async with anyio.create_task_group() as group:
        group.start_soon(resolver.watch, updates.append)
        await clock.asleep(1)  # virtual time: the watch read the file at t=0
        assert [keys(update) for update in updates] == [["10.0.0.1:8080"]]
        write(path, ENTRIES)
        await clock.asleep(3.9)
        assert len(updates) == 1  # the next check is at t=5
        await clock.asleep(0.2)
        assert [keys(update) for update in updates][1] == ["10.0.0.1:8080", "10.0.0.2:8080"]
        write(path, "not json")  # errors are no updates: the version does not change
        await clock.asleep(5)
        assert len(updates) == 2
        assert resolver.current().error is not None
        assert threading.active_count() == threads
        group.cancel_scope.cancel()
    assert [update.version for update in updates] == [1, 2]
    assert clock.now() == pytest.approx(10.1)
