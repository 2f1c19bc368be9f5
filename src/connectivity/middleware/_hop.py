"""The cheapest way for a middleware to call the app it wraps: one ASGI hop without the generic instance call.

Calling an object whose class defines ``__call__`` in Python goes through CPython's generic ``tp_call`` path (a
type lookup and an argument tuple per call); calling the bound method ``app.__call__`` takes the vectorcall fast
path to the same function. :class:`Hop` keeps the public ``app`` attribute and the callable to use in step, so
code (and tests) that replace ``middleware.app`` keep working.
"""

from __future__ import annotations

from types import FunctionType, MethodType
from typing import Any, cast

from connectivity.middleware._asgi import ASGIApp

__all__ = ["Hop", "fast_call"]


def fast_call(app: ASGIApp) -> ASGIApp:
    """``app``'s bound ``__call__`` when its class defines one in Python, else ``app`` itself."""
    method = next((vars(klass)["__call__"] for klass in type(app).__mro__ if "__call__" in vars(klass)), None)
    if isinstance(method, FunctionType):
        return cast("ASGIApp", MethodType(method, app))  # what app.__call__ is
    return app


class Hop:
    """A mix-in for middleware classes: ``self.app`` is the wrapped app, ``self._call`` the way to call it.

    Subclasses list ``"_app"`` and ``"_call"`` in their ``__slots__``.
    """

    __slots__ = ()
    _app: ASGIApp
    _call: ASGIApp

    @property
    def app(self) -> ASGIApp:
        """The wrapped ASGI application."""
        return self._app

    @app.setter
    def app(self, app: Any) -> None:
        self._app = app
        self._call = fast_call(app)
