"""Which HTTP client library connectivity builds on: ``CONNECTIVITY_HTTPX`` and the ``auto`` rule."""

from __future__ import annotations

import importlib.util

import httpcore
import httpx
import pytest

from connectivity import _http

HAS_HTTPX2 = importlib.util.find_spec("httpx2") is not None


@pytest.mark.parametrize("setting", [None, "", "auto", " AUTO ", "httpx", "HTTPX"])
def test_httpx_is_chosen_when_it_is_installed(setting: str | None) -> None:
    assert _http.choose(setting) == (httpx, httpcore)


def test_this_environment_runs_on_httpx() -> None:
    assert (_http.LIBRARY, _http.httpx, _http.httpcore) == ("httpx", httpx, httpcore)


@pytest.mark.parametrize("setting", ["requests", "httpx3", "httpx,httpx2"])
def test_an_unknown_library_is_refused_by_name(setting: str) -> None:
    with pytest.raises(ImportError, match="CONNECTIVITY_HTTPX") as caught:
        _http.choose(setting)
    assert repr(setting) in str(caught.value)
    assert "'httpx', 'httpx2' or 'auto'" in str(caught.value)


@pytest.mark.skipif(HAS_HTTPX2, reason="httpx2 is installed here")
def test_asking_for_httpx2_without_it_says_how_to_install_it() -> None:
    with pytest.raises(ImportError, match=r"CONNECTIVITY_HTTPX='httpx2', but httpx2 is not installed \(pip"):
        _http.choose("httpx2")


@pytest.mark.skipif(not HAS_HTTPX2, reason="httpx2 is not installed")
def test_asking_for_httpx2_gives_httpx2_and_httpcore2() -> None:
    client, core = _http.choose("httpx2")
    assert (client.__name__, core.__name__) == ("httpx2", "httpcore2")
