"""The shell's side of a fleet's retirement document: logged by the cosigners of the plan, as
a stage bundle is, and returned as the logged notice (document and log proofs) that clients
and verifiers ingest. Idempotent like every cosigning effect: a cosigner that logged the
document already answers with its receipt for it."""

from __future__ import annotations

from messages.inputs import RetirementLogged
from messages.retirement import FleetRetirement
from orchestrator.core.rollout.effects import ToLog
from orchestrator.shell.cosigning import Cosigning


async def log_retirement(cosigning: Cosigning, job: ToLog) -> RetirementLogged:
    """Have ``job``'s fleet-retirement document logged and witnessed by its cosigners."""
    assert isinstance(job.document, FleetRetirement)
    client = cosigning.client(job.rollout.plan.cosigners)
    logged = await client.log(job.document)
    return RetirementLogged(fleet=job.fleet, notice=client.notice(logged).to_json())
