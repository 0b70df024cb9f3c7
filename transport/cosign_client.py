"""The orchestrator's side of cosigning: submit documents to cosigners, gather their signatures
and witness cosignatures, countersign, and assemble validation bundles.

:class:`CosigningClient` talks to cosigners through a :class:`Transport`: :class:`NatsTransport`
sends signed requests on ``cosign.<cosigner_id>.sign``; ``cosigner.local.LocalTransport`` calls
cosigner objects in the same process. The client checks every answer it gets as a verifier would
(statement, signature, checkpoint, inclusion proof, cosignature lines), so it never assembles a
bundle that a client would refuse for a cosigner's fault.

For each document, :meth:`CosigningClient.log`:

1. sends it to every cosigner at once; a cosigner that already logged it (``digest_seen``) is
   asked for its receipt instead; one that is behind on the fleet's chain (``serial_gap``,
   ``epoch_gap``) is first sent the ``earlier`` documents the caller passes;
2. asks every other cosigner to witness each log's checkpoint (C2SP tlog-witness), proving
   consistency from the size that witness last saw (learnt from a conflict answer if unknown);
   if a witness has already seen a larger tree, the log's newest checkpoint and a fresh
   inclusion proof replace the answer and the witnessing starts again for that log. A log is
   witnessed by one call at a time; a document already inside the last checkpoint all
   witnesses cosigned is proved against that checkpoint and shares its cosignatures;
3. succeeds when at least ``threshold`` distinct cosigners vouch (as a log or a witness);
   otherwise raises :class:`NotEnoughCosigners` naming each cosigner's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import structlog
from nats.aio.client import Client as NATS

from messages import subjects
from messages.artifact import FleetKeyArtifact
from messages.checkpoint import Checkpoint
from messages.cosigning import (
    COSIGNER_ROLE,
    CheckpointRequest,
    ConsistencyRequest,
    InclusionRequest,
    LatestCheckpoint,
    Proof,
    ReceiptRequest,
    Signed,
    SignRequest,
    Witnessed,
    WitnessRequest,
)
from messages.errors import HsmfleetError
from messages.log_proofs import check_logged
from messages.note import Note, NoteError, NoteSignature
from messages.pins import CosignerPin
from messages.retirement import FleetRetirement
from messages.rotation import KeyRotation, SignerKey, check_rotation
from messages.schema import Body
from messages.signing import ED25519, Signer, TrustedKey, TrustStore
from messages.statement import LoggedDocument
from messages.validation import (
    LoggedNotice,
    LogProof,
    ValidationBundle,
    assemble,
    log_proof,
    notice,
    with_rotations,
)
from messages.verification import VerificationError
from messages.verifier_state import KeyInForce
from transport.bus import NoResponder, RequestRejected, RequestTimeout, request
from transport.gate import Gate
from transport.outbox import Outbox

log = structlog.get_logger("hsmfleet.cosign_client")

MAX_REFRESHES = 3
B = TypeVar("B", bound=Body)
_BEHIND = frozenset({"serial_gap", "epoch_gap"})


@dataclass(frozen=True)
class Peer:
    """A cosigner the orchestrator uses: its id (NATS subject token) and its pin."""

    id: str
    pin: CosignerPin

    @property
    def name(self) -> str:
        return self.pin.name


class CosignerRefused(HsmfleetError):
    """A cosigner refused a request; ``refusal`` is the kind of error it gave."""

    kind = "cosigner_refused"

    def __init__(self, message: str, refusal: str, **detail: object) -> None:
        super().__init__(message, refusal=refusal, **detail)
        self.refusal = refusal


class CosignerUnreachable(HsmfleetError):
    """No answer from a cosigner (nobody serves its subject, or it timed out)."""

    kind = "cosigner_unreachable"


class BadCosignerAnswer(HsmfleetError):
    """A cosigner's answer does not verify: it would not convince a client."""

    kind = "bad_cosigner_answer"


class NotEnoughCosigners(HsmfleetError):
    """Fewer cosigners than the threshold vouched; ``errors`` says what each other one did."""

    kind = "not_enough_cosigners"

    def __init__(self, message: str, errors: dict[str, HsmfleetError], **detail: object):
        super().__init__(message, errors={k: v.kind for k, v in errors.items()}, **detail)
        self.errors = errors


class Transport(Protocol):
    """How the client reaches cosigners. Refusals raise :class:`CosignerRefused`."""

    async def sign(self, peer: Peer, document: dict[str, Any]) -> Signed: ...

    async def receipt(self, peer: Peer, digest: str) -> Signed: ...

    async def witness(
        self, peer: Peer, old_size: int, consistency: Sequence[bytes], note: str
    ) -> Witnessed: ...

    async def checkpoint(self, peer: Peer) -> str: ...

    async def inclusion(self, peer: Peer, index: int, size: int) -> list[bytes]: ...

    async def consistency(self, peer: Peer, old_size: int, size: int) -> list[bytes]: ...


class NatsTransport:
    """Signed requests on ``cosign.<id>.sign``; answers must be signed by the cosigner's key."""

    def __init__(self, nc: NATS, outbox: Outbox, timeout: float = 5.0) -> None:
        self.nc = nc
        self.outbox = outbox
        self.timeout = timeout
        self._trust = TrustStore()
        self.gate = Gate(self._trust)

    async def _ask(self, peer: Peer, body: Body) -> Body:
        self._trust.add(
            TrustedKey(peer.id, "ed25519", peer.pin.public_key, frozenset({COSIGNER_ROLE}))
        )
        env = self.outbox.envelope(body)
        subject = subjects.cosign(peer.id)
        try:
            received = await request(self.nc, subject, env, self.gate, COSIGNER_ROLE, self.timeout)
        except RequestRejected as exc:
            refusal = str(exc.detail.get("kind", "unknown"))
            raise CosignerRefused(str(exc), refusal, cosigner=peer.id) from exc
        except (RequestTimeout, NoResponder) as exc:
            raise CosignerUnreachable(str(exc), cosigner=peer.id) from exc
        return received.body

    async def _answer(self, peer: Peer, body: Body, kind: type[B]) -> B:
        answer = await self._ask(peer, body)
        if not isinstance(answer, kind):
            raise BadCosignerAnswer("unexpected answer", cosigner=peer.id, type=answer.TYPE)
        return answer

    async def sign(self, peer: Peer, document: dict[str, Any]) -> Signed:
        return await self._answer(peer, SignRequest(document=document), Signed)

    async def receipt(self, peer: Peer, digest: str) -> Signed:
        return await self._answer(peer, ReceiptRequest(digest=digest), Signed)

    async def witness(
        self, peer: Peer, old_size: int, consistency: Sequence[bytes], note: str
    ) -> Witnessed:
        body = WitnessRequest(old_size=old_size, consistency=tuple(consistency), checkpoint=note)
        return await self._answer(peer, body, Witnessed)

    async def checkpoint(self, peer: Peer) -> str:
        return (await self._answer(peer, CheckpointRequest(), LatestCheckpoint)).checkpoint

    async def inclusion(self, peer: Peer, index: int, size: int) -> list[bytes]:
        body = InclusionRequest(index=index, size=size)
        return list((await self._answer(peer, body, Proof)).proof)

    async def consistency(self, peer: Peer, old_size: int, size: int) -> list[bytes]:
        body = ConsistencyRequest(old_size=old_size, size=size)
        return list((await self._answer(peer, body, Proof)).proof)


@dataclass
class Logged:
    """A document as the cosigners logged it: each log's answer, the witness cosignature lines
    gathered on that answer's checkpoint, and what went wrong with the others."""

    document: LoggedDocument
    answers: dict[str, Signed] = field(default_factory=dict)
    cosignatures: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, HsmfleetError] = field(default_factory=dict)

    def vouchers(self, peers: Iterable[Peer]) -> set[str]:
        """Names of the cosigners that vouch: each log that answered (checked and logged the
        document). A witness's cosignature on another log's checkpoint makes no voucher: the
        verifier's default policy counts only logs (``messages/SPEC.md`` 4.7)."""
        by_id = {p.id: p for p in peers}
        return {by_id[i].name for i in self.answers}


def _size(note: str) -> int:
    return Checkpoint.from_text(Note.parse(note).text).size


class CosigningClient:
    """Gets documents logged and cosigned by ``threshold`` of ``peers``."""

    def __init__(
        self,
        transport: Transport,
        peers: Sequence[Peer],
        operator: Signer,
        threshold: int,
    ) -> None:
        if not 1 <= threshold <= len(peers):
            raise ValueError("threshold must be between 1 and the number of cosigners")
        for what, values in (
            ("ids", [p.id for p in peers]),
            ("names", [p.name for p in peers]),
            ("keys", [p.pin.public_key for p in peers]),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"cosigner {what} must be distinct")
        self.transport = transport
        self.peers = list(peers)
        self.operator = operator
        self.threshold = threshold
        self._seen: dict[tuple[str, str], int] = {}  # (witness id, log name) -> size it saw
        self._locks: dict[str, asyncio.Lock] = {}  # log id -> one witnessing at a time
        self._witnessed: dict[str, tuple[str, tuple[str, ...]]] = {}  # log id -> last cosigned
        self._keys: dict[str, tuple[KeyInForce, ...]] = {}  # rotated cosigner -> its keys

    def follow(self, rotation: KeyRotation, index: int = 0) -> None:
        """Use a cosigner's new key from ``rotation`` (the key it pins must be the old one,
        the version the next, both signatures good), logged at ``index`` of that cosigner's
        own log: its answers from that entry on are checked with the new key, earlier
        statements still with the old. A rotation of another signer changes nothing here."""
        for position, peer in enumerate(self.peers):
            if peer.name == rotation.signer:
                current = SignerKey(ED25519, peer.pin.public_key)
                check_rotation(current, peer.pin.version, rotation)
                pin = replace(
                    peer.pin, public_key=rotation.new.public_key, version=rotation.version
                )
                self.peers[position] = replace(peer, pin=pin)
                new = KeyInForce(ED25519, pin.public_key, pin.version, index, rotation.at)
                self._keys[peer.name] = (*self._history(peer), new)

    def _history(self, peer: Peer) -> tuple[KeyInForce, ...]:
        """``peer``'s keys, oldest first, as this client followed them."""
        pin = peer.pin
        return self._keys.get(
            peer.name, (KeyInForce(ED25519, pin.public_key, pin.version, 0, None),)
        )

    async def log(self, document: LoggedDocument, earlier: Sequence[LoggedDocument] = ()) -> Logged:
        """Have ``document`` logged and witnessed; ``earlier`` are the documents of the same
        fleet before it, for cosigners that missed some. A rotation of a cosigner's key is
        followed (:meth:`follow`) before its answers are checked. Raises
        :class:`NotEnoughCosigners`."""
        rotated = None
        if isinstance(document, KeyRotation):
            rotated = next((p for p in self.peers if p.name == document.signer), None)
            if rotated is not None and rotated.pin.public_key == document.old.public_key:
                self.follow(document)
        logged = Logged(document)
        answers = await asyncio.gather(
            *(self._sign(peer, document, earlier) for peer in self.peers), return_exceptions=True
        )
        for peer, answer in zip(self.peers, answers, strict=True):
            if isinstance(answer, Signed):
                logged.answers[peer.id] = answer
            elif isinstance(answer, HsmfleetError):
                logged.errors[peer.id] = answer
                log.warning("cosigner did not log", cosigner=peer.id, kind=answer.kind)
            else:
                raise answer
        if rotated is not None and rotated.id in logged.answers:
            # Where the new key took over: the rotation's own entry in the cosigner's log.
            *older, new = self._keys[rotated.name]
            index = logged.answers[rotated.id].statement.index
            self._keys[rotated.name] = (*older, replace(new, from_index=index))
        await asyncio.gather(*(self._witness_log(logged, peer) for peer in self._logs(logged)))
        vouchers = logged.vouchers(self.peers)
        if len(vouchers) < self.threshold:
            raise NotEnoughCosigners(
                "too few cosigners vouch for the document",
                logged.errors,
                vouchers=sorted(vouchers),
                threshold=self.threshold,
            )
        return logged

    async def publish(
        self, artifact: FleetKeyArtifact, earlier: Sequence[FleetKeyArtifact] = ()
    ) -> ValidationBundle:
        """Log ``artifact``, countersign every log's statement signature with the operator key
        and assemble the validation bundle."""
        logged = await self.log(artifact, earlier)
        return self.bundle(logged)

    def bundle(self, logged: Logged) -> ValidationBundle:
        """The validation bundle of an artifact already logged."""
        if not isinstance(logged.document, FleetKeyArtifact):
            raise TypeError("only fleet-key artifacts make validation bundles")
        return assemble(logged.document, self._proofs(logged))

    def notice(self, logged: Logged) -> LoggedNotice:
        """The countersigned notice of a logged key rotation or fleet retirement, for clients
        (:func:`messages.verify.ingest_retirement`, a bundle's rotation chain)."""
        if not isinstance(logged.document, KeyRotation | FleetRetirement):
            raise TypeError("only key rotations and fleet retirements make notices")
        return notice(logged.document, self._proofs(logged))

    def _proofs(self, logged: Logged) -> list[LogProof]:
        """Each log's answer, countersigned, with the cosignatures gathered on its checkpoint."""
        return [
            log_proof(answer, self.operator, logged.cosignatures.get(peer_id, ()))
            for peer_id, answer in logged.answers.items()
        ]

    async def refresh(self, bundle: ValidationBundle) -> ValidationBundle:
        """``bundle`` proved again against each log's newest checkpoint (timestamped by the
        log's scheduled re-signing), witnessed again and countersigned with the operator key
        in force: what to serve clients that refuse a checkpoint older than their maximum age.
        Proofs from logs that are not peers are dropped; a rotation chain is kept."""
        by_name = {p.name: p for p in self.peers}
        logged = Logged(bundle.artifact)
        for proof in bundle.proofs:
            peer = by_name.get(proof.log)
            if peer is None:
                continue
            answer = Signed(
                statement=proof.statement,
                signature=proof.signature,
                inclusion=proof.inclusion,
                checkpoint=proof.checkpoint,
            )
            note = await self.transport.checkpoint(peer)
            logged.answers[peer.id] = await self._prove_against(peer, logged, answer, note)
        await asyncio.gather(*(self._gather_cosignatures(logged, p) for p in self._logs(logged)))
        return with_rotations(self.bundle(logged), bundle.rotations)

    def _logs(self, logged: Logged) -> list[Peer]:
        return [p for p in self.peers if p.id in logged.answers]

    async def _sign(
        self, peer: Peer, document: LoggedDocument, earlier: Sequence[LoggedDocument]
    ) -> Signed:
        try:
            answer = await self.transport.sign(peer, document.to_json())
        except CosignerRefused as exc:
            if exc.refusal == "digest_seen":
                answer = await self.transport.receipt(peer, document.digest)
            elif exc.refusal in _BEHIND and earlier:
                await self._catch_up(peer, earlier)
                answer = await self.transport.sign(peer, document.to_json())
            else:
                raise
        self._check(peer, document, answer)
        return answer

    async def _catch_up(self, peer: Peer, earlier: Sequence[LoggedDocument]) -> None:
        for document in earlier:
            try:
                await self.transport.sign(peer, document.to_json())
            except CosignerRefused as exc:
                if exc.refusal != "digest_seen":
                    raise

    def _check(self, peer: Peer, document: LoggedDocument, answer: Signed) -> None:
        try:
            check_logged(
                peer.pin,
                document,
                answer.statement,
                answer.signature,
                answer.inclusion,
                answer.checkpoint,
                keys=self._history(peer),
            )
        except VerificationError as exc:
            raise BadCosignerAnswer(f"answer does not verify: {exc}", cosigner=peer.id) from exc

    async def _witness_log(self, logged: Logged, log_peer: Peer) -> None:
        """Gather every other cosigner's cosignature on a checkpoint of ``log_peer`` that holds
        the document. One witnessing per log at a time: a document whose entry is already in
        the last checkpoint all witnesses cosigned is proved against that one instead."""
        async with self._locks.setdefault(log_peer.id, asyncio.Lock()):
            answer = logged.answers[log_peer.id]
            last = self._witnessed.get(log_peer.id)
            if last is not None and _size(last[0]) >= _size(answer.checkpoint):
                if last[0] != answer.checkpoint:
                    answer = await self._prove_against(log_peer, logged, answer, last[0])
                logged.answers[log_peer.id] = answer
                logged.cosignatures[log_peer.id] = list(last[1])
                return
            await self._gather_cosignatures(logged, log_peer)

    async def _gather_cosignatures(self, logged: Logged, log_peer: Peer) -> None:
        witnesses = [p for p in self.peers if p.id != log_peer.id]
        for _ in range(MAX_REFRESHES):
            answer = logged.answers[log_peer.id]
            results = await asyncio.gather(
                *(self._cosign(w, log_peer, answer.checkpoint) for w in witnesses),
                return_exceptions=True,
            )
            if any(isinstance(r, _Stale) for r in results):
                note = await self.transport.checkpoint(log_peer)
                answer = await self._prove_against(log_peer, logged, answer, note)
                logged.answers[log_peer.id] = answer
                continue
            lines = []
            for witness, result in zip(witnesses, results, strict=True):
                if isinstance(result, str):
                    lines.append(result)
                elif isinstance(result, HsmfleetError):
                    logged.errors.setdefault(witness.id, result)
                    log.warning("witness did not cosign", witness=witness.id, kind=result.kind)
                else:
                    raise result
            logged.cosignatures[log_peer.id] = lines
            if len(lines) == len(witnesses):
                self._witnessed[log_peer.id] = (answer.checkpoint, tuple(lines))
            return

    async def _prove_against(self, peer: Peer, logged: Logged, answer: Signed, note: str) -> Signed:
        """``answer`` with an inclusion proof against the log's checkpoint ``note``."""
        inclusion = await self.transport.inclusion(peer, answer.statement.index, _size(note))
        fresh = replace(answer, inclusion=tuple(inclusion), checkpoint=note)
        self._check(peer, logged.document, fresh)
        return fresh

    async def _cosign(self, witness: Peer, log_peer: Peer, note: str) -> str:
        """``witness``'s cosignature line on ``note``, a checkpoint of ``log_peer``."""
        size = _size(note)
        key = (witness.id, log_peer.name)
        old = self._seen.get(key, 0)
        for _ in range(2):
            if old > size:
                raise _Stale("the witness saw a larger tree", witness=witness.id)
            proof = await self.transport.consistency(log_peer, old, size) if 0 < old < size else []
            answer = await self.transport.witness(witness, old, proof, note)
            self._seen[key] = answer.size
            if answer.cosignature is not None:
                self._check_cosignature(witness, note, answer.cosignature)
                return answer.cosignature
            old = answer.size
        raise CosignerRefused("the witness keeps changing its size", "witness_conflict")

    def _check_cosignature(self, witness: Peer, note: str, line: str) -> None:
        try:
            signature = NoteSignature.parse_line(line.rstrip("\n"))
        except NoteError as exc:
            raise BadCosignerAnswer("not a cosignature line", cosigner=witness.id) from exc
        verifier = witness.pin.witness_verifier
        text = Note.parse(note).text.encode()
        if (signature.name, signature.key_id) != (verifier.name, verifier.key_id) or not (
            verifier.verify(text, signature.signature)
        ):
            raise BadCosignerAnswer("cosignature does not verify", cosigner=witness.id)


class _Stale(HsmfleetError):
    """A witness has seen a larger tree of the log than the checkpoint offered."""

    kind = "stale_checkpoint"
