"""Request ids for inbound requests as pure ASGI middleware (Envoy's ``x-request-id``).

Each HTTP request gets one id: the caller's, when it sent exactly one well-formed id and the middleware trusts it,
else a new one. The id is the *current* request id (a context variable, so concurrent requests never see each
other's) while the app runs, which is how outbound transports, spans and access logs pick it up; it is also in
``scope["state"]["request_id"]`` (Starlette's ``request.state.request_id``) and, by default, in the response.
"""

from __future__ import annotations

import re

from connectivity.errors import ConfigError
from connectivity.middleware._asgi import ASGIApp, Message, Receive, Scope, Send, require_app
from connectivity.telemetry.request_id import HEADER, generate, reset_request_id, set_request_id, valid

__all__ = ["RequestIDMiddleware"]

# RFC 9110 section 5.6.2: a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class RequestIDMiddleware:
    """Give every inbound HTTP request an id, make it current, and return it in the response.

    Args:
        app: The ASGI application to wrap.
        header: The header carrying the id, in the request and the response (default ``x-request-id``;
            case-insensitive).
        trust_incoming: Accept the caller's id when the request carries exactly one valid id (1-128 characters
            of ``A-Z a-z 0-9 . _ : @ / + = -``). A missing, invalid or repeated id is replaced by a new one and
            never repeated anywhere. With ``False`` every request gets a new id (for edge services that face
            untrusted callers).
        response_header: Add the id to the response, unless the app set that header itself.

    Raises:
        ConfigError: ``header`` is not a header name, or a flag is not a bool.

    Put it outermost, so every other layer (tracing, access log, the app's outbound calls) sees the id, and so
    error responses produced by the framework also carry it.

    .. versionadded:: 0.1
    """

    __slots__ = ("_header", "app", "header", "response_header", "trust_incoming")

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = HEADER,
        trust_incoming: bool = True,
        response_header: bool = True,
    ) -> None:
        self.app = require_app("RequestIDMiddleware", app)
        if not isinstance(header, str) or _TOKEN.fullmatch(header) is None:
            raise ConfigError("RequestIDMiddleware.header", header, "must be a header name (an RFC 9110 token)")
        for field, flag in (("trust_incoming", trust_incoming), ("response_header", response_header)):
            if not isinstance(flag, bool):
                raise ConfigError(f"RequestIDMiddleware.{field}", flag, "must be True or False")
        self.header = header.lower()
        self._header = self.header.encode("ascii")
        self.trust_incoming = trust_incoming
        self.response_header = response_header

    def _incoming(self, scope: Scope) -> str | None:
        """The caller's id when exactly one header carries it and it is valid."""
        found: bytes | None = None
        for name, value in scope.get("headers") or ():
            if name.lower() == self._header:
                if found is not None:
                    return None  # two ids: neither can be trusted to be the caller's
                found = value
        if found is None:
            return None
        text = found.decode("latin-1")
        return text if valid(text) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self._incoming(scope) if self.trust_incoming else None
        if request_id is None:
            request_id = generate()
        scope.setdefault("state", {})["request_id"] = request_id
        if self.response_header:
            send = _with_header(send, self._header, request_id.encode("ascii"))
        token = set_request_id(request_id)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_request_id(token)


def _with_header(send: Send, name: bytes, value: bytes) -> Send:
    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or ())
            if not any(key.lower() == name for key, _ in headers):
                headers.append((name, value))
                message = {**message, "headers": headers}
        await send(message)

    return send_with_id
