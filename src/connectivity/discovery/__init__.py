"""Discovery: the endpoint model and the resolvers that produce endpoint lists.

.. versionadded:: 0.1
"""

from connectivity.discovery.endpoint import Endpoint
from connectivity.discovery.resolver import Resolution, Resolver, Static, UpdateCallback

__all__ = ["Endpoint", "Resolution", "Resolver", "Static", "UpdateCallback"]
