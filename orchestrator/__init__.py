"""The orchestrator: the operator's side of a fleet.

- :mod:`orchestrator.core`: the pure core, deciding on inputs and folding events;
- :mod:`orchestrator.shell`: the process around it: the log on JetStream, the lease, the
  effects it carries out, its keys and configuration;
- :mod:`orchestrator.api`: the operator's HTTP API;
- :mod:`orchestrator.cli`: the operator's ``hsmfleet`` verbs.
"""
