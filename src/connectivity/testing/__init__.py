"""Tools for testing code that uses connectivity: a virtual clock, a scripted transport, a faulty upstream.

The pytest plugin (registered automatically when the package is installed) provides the ``fake_clock``,
``faulty_upstream`` and ``faulty_upstream_factory`` fixtures.
"""

from connectivity.testing.clock import FakeClock
from connectivity.testing.scripted import RecordedRequest, ScriptedTransport, Step
from connectivity.testing.upstream import Faults, FaultyUpstream, RequestRecord, UpstreamStats

__all__ = [
    "FakeClock",
    "Faults",
    "FaultyUpstream",
    "RecordedRequest",
    "RequestRecord",
    "ScriptedTransport",
    "Step",
    "UpstreamStats",
]
