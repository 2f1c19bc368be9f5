"""Discovery: the endpoint model (later also the resolvers that produce endpoint lists: static, DNS, registries).

.. versionadded:: 0.1
"""

from connectivity.discovery.endpoint import Endpoint

__all__ = ["Endpoint"]
