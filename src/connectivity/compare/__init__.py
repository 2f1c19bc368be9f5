"""``connectivity compare``: the same policy scenario, in-process and through real out-of-process proxies.

.. versionadded:: 0.1
"""
