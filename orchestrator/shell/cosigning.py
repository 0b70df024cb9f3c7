"""The shell's side of cosigning a rollout's documents: one :class:`CosigningClient` per
cosigner policy, and the cosigners' answers in the form the log records them.

:func:`log_document` has a stage bundle logged by the plan's cosigners and returns the
:class:`BundleCosigned` input; :func:`publish_artifact` logs the artifact, countersigns every
log's statement signature with the operator key and returns :class:`ArtifactPublished`. Both are
idempotent: a cosigner that already logged a document answers with its receipt for it
(``digest_seen``), so a document is never signed twice, whoever asks again after a crash.

:meth:`Cosigning.follow` takes logged cosigner key rotations (the chain in
:func:`orchestrator.shell.keys.load_rotation_chain`): every client, now and later, checks those
cosigners' answers with their keys in force, whatever key the plan pinned.
"""

from __future__ import annotations

from collections.abc import Iterable

from messages.artifact import FleetKeyArtifact
from messages.bundle import StageBundle
from messages.inputs import ArtifactPublished, BundleCosigned, CosignerAnswer
from messages.origin import OPERATOR
from messages.pins import CosignerPin
from messages.plan import CosignerPolicy
from messages.rotation import KeyRotation
from messages.signing import Signer
from messages.validation import LoggedNotice, with_cosignatures, with_rotations
from orchestrator.core.rollout.effects import ToLog
from transport.cosign_client import CosigningClient, Logged, Peer, Transport


def peers(policy: CosignerPolicy) -> list[Peer]:
    """The plan's cosigners as the cosigning client's peers."""
    return [Peer(p.id, CosignerPin(p.name, p.public_key, p.url)) for p in policy.pins]


class Cosigning:
    """Cosigning clients by policy, over one transport, countersigning with ``operator``."""

    def __init__(self, transport: Transport, operator: Signer) -> None:
        self.transport = transport
        self.operator = operator
        self._clients: dict[tuple, CosigningClient] = {}
        self._rotations: list[tuple[KeyRotation, int]] = []
        self.chain: list[LoggedNotice] = []
        """Every rotation notice followed (the operator's too), in logged order: what each
        published validation bundle carries."""

    def client(self, policy: CosignerPolicy) -> CosigningClient:
        """The client for ``policy`` (one per policy, so it remembers what witnesses saw)."""
        key = (policy.threshold, tuple((p.id, p.name, p.public_key) for p in policy.pins))
        client = self._clients.get(key)
        if client is None:
            client = CosigningClient(self.transport, peers(policy), self.operator, policy.threshold)
            for rotation, index in self._rotations:
                _follow(client, rotation, index)
            self._clients[key] = client
        return client

    def follow(self, chain: Iterable[LoggedNotice]) -> None:
        """Follow the cosigner key rotations in ``chain`` (in logged order; the operator's own
        are for :func:`orchestrator.shell.keys.operator_signer`), each from its entry in the
        cosigner's own log."""
        for notice in chain:
            rotation = notice.logged
            if not isinstance(rotation, KeyRotation):
                continue
            if all(n.logged.digest != rotation.digest for n in self.chain):
                self.chain.append(notice)
            if rotation.signer == OPERATOR:
                continue
            if any(r.digest == rotation.digest for r, _ in self._rotations):
                continue
            own = next((p for p in notice.proofs if p.log == rotation.signer), None)
            index = own.statement.index if own is not None else 0
            self._rotations.append((rotation, index))
            for client in self._clients.values():
                _follow(client, rotation, index)

    async def log_document(self, job: ToLog) -> BundleCosigned:
        """Have a stage bundle logged and witnessed by ``job``'s cosigners."""
        assert isinstance(job.document, StageBundle)
        client = self.client(job.rollout.plan.cosigners)
        logged = await client.log(job.document, job.earlier)
        return BundleCosigned(
            fleet=job.fleet,
            serial=job.document.serial,
            digest=job.document.digest,
            answers=answers(logged, client.peers),
        )

    async def publish_artifact(self, job: ToLog) -> ArtifactPublished:
        """Have the artifact logged, witnessed and countersigned: its validation bundle,
        carrying the rotation notices followed, so a client pinned to older keys walks to the
        current ones."""
        assert isinstance(job.document, FleetKeyArtifact)
        client = self.client(job.rollout.plan.cosigners)
        validation = with_rotations(await client.publish(job.document, job.earlier), self.chain)
        return ArtifactPublished(
            fleet=job.fleet, epoch=job.document.epoch, validation=validation.to_json()
        )


def _follow(client: CosigningClient, rotation: KeyRotation, index: int) -> None:
    """``client`` following ``rotation`` if it uses that cosigner at the rotation's old key."""
    if any(
        p.name == rotation.signer and p.pin.public_key == rotation.old.public_key
        for p in client.peers
    ):
        client.follow(rotation, index)


def answers(logged: Logged, cosigners: list[Peer]) -> tuple[CosignerAnswer, ...]:
    """Each log's answer (named by its origin) with the witness cosignatures gathered on its
    checkpoint."""
    names = {p.id: p.name for p in cosigners}
    return tuple(
        CosignerAnswer(
            cosigner=names[peer_id],
            statement=signed.statement.to_json(),
            signature=signed.signature,
            inclusion=signed.inclusion,
            checkpoint=with_cosignatures(signed.checkpoint, logged.cosignatures.get(peer_id, ())),
        )
        for peer_id, signed in sorted(logged.answers.items())
    )
