"""``connectivity compare``: the same policy scenario, in-process and through real out-of-process proxies.

* :class:`Policy` (:mod:`~connectivity.compare.policy`): one description of what calls to a service get, from
  which the in-process stack and every sidecar's configuration are generated;
* :data:`SCENARIOS` (:mod:`~connectivity.compare.scenarios`): what goes wrong at the upstreams;
* :class:`Fleet` (:mod:`~connectivity.compare.fleet`): the upstream replicas, one uvicorn process each (serving
  mutual TLS for the ``mtls`` scenario, with certificates from :mod:`~connectivity.compare.pki`);
* :mod:`~connectivity.compare.contenders`: the clients (bare httpx, the in-process stack, bare httpx through each
  sidecar), each on a connection pool renewed before every block;
* :func:`run` (:mod:`~connectivity.compare.runner`): scenarios x contenders x modes x rounds, every process
  cleaned up, then the CPU phase (paired rounds) behind the CPU verdict; :mod:`~connectivity.compare.stats`
  summarises and judges (medians with distribution-free confidence intervals), :mod:`~connectivity.compare.report`
  writes the table, JSON, plots and Markdown report;
* :mod:`connectivity.compare.proxies`: nginx, HAProxy and Caddy configurations and sidecar processes.

.. versionadded:: 0.1
"""

from connectivity.compare.fleet import Fleet, FleetError
from connectivity.compare.policy import Balancing, Policy
from connectivity.compare.runner import FULL, QUICK, Settings, run
from connectivity.compare.scenarios import SCENARIOS, Scenario
from connectivity.compare.stats import CPU_RATIO, verdicts

__all__ = [
    "CPU_RATIO",
    "FULL",
    "QUICK",
    "SCENARIOS",
    "Balancing",
    "Fleet",
    "FleetError",
    "Policy",
    "Scenario",
    "Settings",
    "run",
    "verdicts",
]
