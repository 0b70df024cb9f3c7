"""The orchestrator process around the pure core: the log on JetStream and its replay, the lease,
the effects it carries out, cosigning, its keys, configuration and metrics."""
