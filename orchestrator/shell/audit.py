"""Cross-checking the orchestrator's evidence against the cosigners' logs (``hsmfleet audit
--orchestrator URL``).

The orchestrator serves each fleet's chain of stage bundles, as its log recorded them issued, and
how many of them the cosigners logged (``/v1/fleets/<id>/stage-bundles``). An audited cosigner
log must hold, for every such fleet, exactly the start of that chain: every bundle the
orchestrator says was logged, byte for byte (same serial, same digest), in order, and no bundle
the orchestrator never issued. Fleets the log holds that this orchestrator does not know are
reported, not refused: a cosigner may serve several operators.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from messages.audit import AuditError, LogAudit
from messages.bundle import StageBundle
from messages.documents import DocumentError
from messages.errors import HsmfleetError


class EvidenceMismatch(AuditError):
    """A cosigner's log and the orchestrator's evidence disagree about a fleet's chain."""

    kind = "evidence_mismatch"


class EvidenceUnreachable(HsmfleetError):
    """The orchestrator's API did not serve its evidence."""

    kind = "evidence_unreachable"


@dataclass(frozen=True)
class FleetEvidence:
    """A fleet's chain as the orchestrator issued it, and how much of it was logged."""

    fleet: str
    bundles: tuple[StageBundle, ...]
    logged: int


async def fetch_evidence(http: aiohttp.ClientSession, api: str, token: str) -> list[FleetEvidence]:
    """Every fleet's stage-bundle chain from the orchestrator's API."""
    headers = {"Authorization": f"Bearer {token}"}

    async def get(path: str) -> dict:
        try:
            async with http.get(api.rstrip("/") + path, headers=headers) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise EvidenceUnreachable(f"GET {path}: {resp.status} {body}", api=api)
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EvidenceUnreachable(f"cannot reach the orchestrator: {exc}", api=api) from None

    out = []
    for fleet in (await get("/v1/fleets"))["fleets"]:
        chain = await get(f"/v1/fleets/{fleet['fleet']}/stage-bundles")
        try:
            bundles = tuple(StageBundle.from_json(b) for b in chain["bundles"])
        except (DocumentError, KeyError, TypeError) as exc:
            raise EvidenceUnreachable(f"the orchestrator served a bad chain: {exc}") from None
        out.append(FleetEvidence(chain["fleet"], bundles, int(chain["logged"])))
    return out


def cross_check(evidence: list[FleetEvidence], audit: LogAudit) -> list[str]:
    """Lines saying how each fleet's evidence matches the log; raises
    :class:`EvidenceMismatch` where it does not."""
    lines = []
    for fleet in evidence:
        record = audit.fleets.get(fleet.fleet)
        in_log = [(b.serial, b.digest) for _, b in record.bundles] if record else []
        issued = [(b.serial, b.digest) for b in fleet.bundles]
        if in_log != issued[: len(in_log)]:
            raise EvidenceMismatch(
                "the log holds a bundle the orchestrator did not issue, or in another order",
                log=audit.origin,
                fleet=fleet.fleet,
            )
        if len(in_log) < fleet.logged:
            raise EvidenceMismatch(
                "the orchestrator says bundles were logged that the log lacks",
                log=audit.origin,
                fleet=fleet.fleet,
                logged=fleet.logged,
                in_log=len(in_log),
            )
        lines.append(
            f"  fleet {fleet.fleet}: the orchestrator's {len(issued)} stage bundle(s) match "
            f"{audit.origin} ({len(in_log)} logged there)"
        )
    known = {f.fleet for f in evidence}
    for name in sorted(set(audit.fleets) - known):
        lines.append(f"  fleet {name}: in {audit.origin}, not this orchestrator's")
    return lines
