"""The operator's ``hsmfleet`` verbs: run the orchestrator, talk to its API, read rollout plans."""
