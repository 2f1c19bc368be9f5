"""Pointing a logical URL at an endpoint: ``http://orders/items`` becomes ``http://10.0.0.7:8080/items``.

httpx's :meth:`httpx.URL.copy_with` re-parses and re-validates the whole URL, about 20 µs per call: more than the
rest of the balancing layer. Endpoint addresses are validated and normalised already, so the fast form replaces
the two fields of httpx's parsed URL directly (about 1 µs). It relies on an httpx internal (``URL._uri_reference``,
a named tuple), so at import it is checked against ``copy_with`` on a few URLs (IPv4, IPv6, names, default ports,
user info, query and fragment); with an httpx where the check fails, ``copy_with`` is used.

Over TLS the server name stays the logical service's: given the request's extensions, :func:`rewrite` also sets
httpx's ``sni_hostname`` extension (unless the caller set one), so certificates are checked against the service.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from connectivity._http import httpx
from connectivity.discovery.endpoint import Endpoint

__all__ = ["rewrite"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_new = object.__new__
_tuple_new = tuple.__new__  # a named tuple's own __new__ is a Python function: skip its frame


def _server_name(url: httpx.URL, extensions: MutableMapping[str, Any]) -> None:
    if "sni_hostname" not in extensions:
        extensions["sni_hostname"] = url.host  # certificates are checked against the service


def _slow_rewrite(
    url: httpx.URL, endpoint: Endpoint, extensions: MutableMapping[str, Any] | None = None
) -> httpx.URL:
    if extensions is not None and url.scheme == "https":
        _server_name(url, extensions)
    return url.copy_with(host=endpoint.address, port=endpoint.port)


def _fast_rewrite(
    url: httpx.URL, endpoint: Endpoint, extensions: MutableMapping[str, Any] | None = None
) -> httpx.URL:
    # httpx's copy_with re-parses and re-validates the whole URL (~20 µs); replacing two fields of its parsed
    # form is ~1 µs. Endpoint addresses are already validated and normalised. Checked against copy_with at import.
    ref = url._uri_reference
    scheme = ref.scheme
    if extensions is not None and scheme == "https":
        _server_name(url, extensions)
    port: int | None = endpoint.port
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    rewritten = _new(httpx.URL)
    rewritten._uri_reference = _tuple_new(
        type(ref), (scheme, ref.userinfo, endpoint.address, port, ref.path, ref.query, ref.fragment)
    )
    return rewritten


def _fast_rewrite_works() -> bool:
    try:
        for text in ("https://user@orders/a/b?c=d#e", "http://orders:8080/"):
            url = httpx.URL(text)
            for endpoint in (Endpoint("10.0.0.1", 443), Endpoint("::1", 80), Endpoint("host.internal", 8443)):
                fast, slow = _fast_rewrite(url, endpoint), _slow_rewrite(url, endpoint)
                if fast != slow or str(fast) != str(slow) or fast.netloc != slow.netloc:
                    return False
    except Exception:  # another httpx: use its public API
        return False
    return True


rewrite = _fast_rewrite if _fast_rewrite_works() else _slow_rewrite
"""``rewrite(url, endpoint, extensions=None)``: ``url`` with the endpoint's host and port (the fast form when this
httpx allows); over TLS, the logical host becomes ``extensions["sni_hostname"]`` unless one is set."""
