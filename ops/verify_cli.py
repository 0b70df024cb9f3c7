"""``hsmfleet verify``, ``hsmfleet audit`` and ``hsmfleet pins``: the client's and auditor's tools.

- ``verify BUNDLE --pins PINS [--state FILE] [--now TIME] [--rotations FILE] [--retirement FILE
  ...] [--json]``: client verification (messages/SPEC.md section 7) of a validation bundle
  file. The signer-key rotation chain is walked first (``--rotations``: a notice or a list of
  them; by default the chain the bundle carries), and each fleet retirement notice is
  ingested; what was walked is printed.
  Consistency proofs the bundle does not carry are fetched from the ``url`` of each pinned
  cosigner. Exit 0 when accepted (the state file is then updated), 1 with the refusal's kind
  otherwise (the state file then keeps only notices that were accepted on their own), 2 with
  ``malformed_pins`` or ``malformed_state`` when the pins or the state file break their rules
  (nothing was verified).
- ``audit --pins PINS [--url URL ...] [--state FILE] [--json]``: re-check each cosigner's whole log
  over HTTP: the checkpoint's signature (and witness cosignatures), consistency with the
  checkpoint stored by the last audit, every entry hashing into the signed root, every entry's
  signed statement and inclusion proof, each fleet's chain; then how keys and members changed
  between epochs. A log's own key rotations are walked from its pinned key (entries before a
  rotation are checked with the old key, the checkpoint with the key in force), and every key
  rotation logged is listed; ``--rotations FILE`` walks the operator's and other logs' keys
  first (the state's walked keys are used too). With ``--orchestrator URL`` the orchestrator's
  evidence (each fleet's chain of stage bundles, from its API) is cross-checked against every
  log too. The witnesses listed are the other pinned cosigners whose cosignature is on the log's
  checkpoint, never the log itself (its own timestamped cosignature is its freshness). Exit 0
  when every log passes, 1 otherwise, 2 as for ``verify`` when the pins or state are unusable.
- ``pins --cosigner PIN... --operator-key FILE --threshold K [--vouching POLICY] [floor options]
  --out FILE``: write a pins file from cosigner pins (``hsmfleet cosigner pin``) and the
  operator's public key (hex, as ``orchestrator/shell/keys.py`` writes it, or JSON ``{"alg",
  "public_key"}``). ``--vouching logged`` (the default) counts towards K only cosigners that
  logged the artifact; ``witnessed`` also those that cosigned another pinned log's checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from messages.audit import AuditError, BadLogEntry, LogAudit, audit_entries, own_keys
from messages.canonical import b64, canonical
from messages.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from messages.cosignature import cosignatures
from messages.documents import DocumentError, load_json
from messages.errors import HsmfleetError, MessageError
from messages.ids import parse_time
from messages.keyring import Keyring, pinned_keys
from messages.log_proofs import check_extends, check_logged, needed_proofs, witnesses_of
from messages.note import Ed25519NoteVerifier, Note, NoteError
from messages.pins import LOGGED, VOUCHING, CosignerPin, OperatorPin, Pins, QuorumFloor
from messages.rotation import KeyRotation
from messages.statement import parse_logged_bytes
from messages.validation import LoggedNotice, ValidationBundle
from messages.verification import (
    BadCheckpoint,
    PinsError,
    StateError,
    StatementMismatch,
    VerificationError,
)
from messages.verifier_state import KeyInForce, TreeHead, VerifierState
from messages.verify import (
    Accepted,
    ingest_retirement,
    ingest_rotations,
    parse_bundle,
    parse_notice,
    verify_bundle,
)
from ops.verifier_files import load_pins, load_state, save_pins, save_state
from orchestrator.shell.audit import cross_check, fetch_evidence
from transport.log_reader import LogReader, LogUnreachable

RECEIPT_CONCURRENCY = 8
REFUSED = 1
UNUSABLE = 2
"""Exit code when the pins or the state cannot be used: nothing was verified."""


def register(verbs: argparse._SubParsersAction) -> None:
    verify = verbs.add_parser("verify", help="verify a validation bundle (SPEC.md section 7)")
    verify.add_argument("bundle", type=Path, help="validation bundle file (JSON)")
    verify.add_argument(
        "--pins", "--trust", type=Path, required=True, help="pinned keys and policy"
    )
    verify.add_argument("--state", type=Path, help="verifier state file, updated on acceptance")
    verify.add_argument("--now", help="verify at this RFC 3339 time instead of the clock's")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument("--rotations", type=Path, help="signer-key rotation notices (JSON)")
    verify.add_argument(
        "--retirement", type=Path, action="append", default=[], help="fleet retirement notice"
    )
    verify.set_defaults(run=verify_command)

    audit = verbs.add_parser("audit", help="re-check cosigners' logs over HTTP")
    audit.add_argument("--pins", type=Path, required=True, help="pinned keys and policy")
    audit.add_argument(
        "--url", action="append", default=[], help="log API base URL (default: pinned URLs)"
    )
    audit.add_argument("--state", type=Path, help="audit state file (last checkpoint per log)")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.add_argument("--orchestrator", help="orchestrator API whose evidence to cross-check")
    audit.add_argument("--token", default=os.environ.get("HSMFLEET_TOKEN", ""), help="its token")
    audit.add_argument("--rotations", type=Path, help="signer-key rotation notices (JSON)")
    audit.set_defaults(run=audit_command)

    pins = verbs.add_parser("pins", help="write a pins file for verifiers")
    pins.add_argument("--cosigner", type=Path, action="append", required=True, help="pin file")
    pins.add_argument("--operator-key", type=Path, required=True, help="operator public key")
    pins.add_argument("--threshold", type=int, required=True, help="cosigners needed (k)")
    pins.add_argument("--vouching", choices=VOUCHING, default=LOGGED, help="who counts towards k")
    pins.add_argument("--min-members", type=int, default=1)
    pins.add_argument("--min-threshold", type=int, default=1)
    pins.add_argument("--min-domains", type=int, default=1)
    pins.add_argument("--survive-domain-loss", action="store_true")
    pins.add_argument("--out", type=Path, required=True, help="pins file to write")
    pins.set_defaults(run=pins_command)


def _emit(args: argparse.Namespace, result: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(json.loads(canonical(result)), indent=2, ensure_ascii=False))
    else:
        print("\n".join(lines))


def _refusal(
    args: argparse.Namespace, exc: HsmfleetError, code: int = REFUSED, **extra: Any
) -> int:
    _emit(
        args,
        {"accepted": False, "kind": exc.kind, "reason": str(exc), **extra},
        [f"REFUSED {exc.kind}: {exc}"],
    )
    return code


def pins_and_state(args: argparse.Namespace) -> tuple[Pins, VerifierState]:
    """The pins and the state file given (the empty state without one); :class:`PinsError`
    or :class:`StateError` when they break their rules."""
    pins = load_pins(args.pins)
    return pins, load_state(args.state) if args.state else VerifierState()


def _now_ms(args: argparse.Namespace) -> int:
    if args.now is None:
        return time.time_ns() // 1_000_000
    try:
        return parse_time(args.now)
    except MessageError as exc:
        raise HsmfleetError(f"--now is not an RFC 3339 time: {args.now}") from exc


async def _fetch_proofs(needed: list[tuple]) -> dict[tuple[str, int, int], list[bytes]]:
    """Consistency proofs from the logs' HTTP APIs; a log that cannot be read is skipped (the
    verifier then reports the missing proof)."""
    proofs = {}
    async with aiohttp.ClientSession() as http:
        for origin, old, new, url in needed:
            if url is None:
                continue
            try:
                proofs[(origin, old, new)] = await LogReader(http, url).consistency(old, new)
            except LogUnreachable as exc:
                print(f"hsmfleet: {exc}", file=sys.stderr)
    return proofs


def _notices(path: Path | None) -> list[LoggedNotice]:
    """The notices in a file: one notice or a JSON list of them."""
    if path is None:
        return []
    try:
        raw = load_json(path.read_bytes())
    except (OSError, DocumentError) as exc:
        raise HsmfleetError(f"cannot read the notices: {exc}", path=str(path)) from exc
    return [parse_notice(item) for item in (raw if isinstance(raw, list) else [raw])]


def _walked(steps: tuple[KeyRotation, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    rows = [
        {"signer": r.signer, "version": r.version, "old": r.old.kid, "new": r.new.kid, "at": r.at}
        for r in steps
    ]
    lines = [
        f"  walked {r['signer']} key v{r['version'] - 1} {r['old']} -> v{r['version']} {r['new']}"
        f" ({r['at']})"
        for r in rows
    ]
    return rows, lines


def _ingest(
    args: argparse.Namespace, pins: Pins, state: VerifierState, now: int
) -> tuple[VerifierState, list[dict[str, Any]], list[str]]:
    """Ingest the retirement notices given (each after the rotation chain)."""
    chain = _notices(args.rotations)
    rows, lines = [], []
    for path in args.retirement:
        for notice in _notices(path):
            state = ingest_retirement(notice, pins, state, now, chain)
            retired = notice.logged
            rows.append({"fleet": retired.fleet, "last_epoch": retired.last_epoch})
            lines.append(f"  fleet {retired.fleet} retired after epoch {retired.last_epoch}")
    return state, rows, lines


async def accept(
    bundle: ValidationBundle,
    pins: Pins,
    state: VerifierState,
    now: int,
    rotations: list[LoggedNotice] | None = None,
) -> Accepted:
    """:func:`verify_bundle` with the consistency proofs the bundle does not carry fetched from
    the pinned cosigners; raises :class:`VerificationError`."""
    proofs = await _fetch_proofs(needed_proofs(bundle, pins, state))
    return verify_bundle(bundle, pins, state, now, proofs, rotations)


async def verify_command(args: argparse.Namespace) -> int:
    try:
        pins, state = pins_and_state(args)
    except (PinsError, StateError) as exc:
        return _refusal(args, exc, UNUSABLE)
    now = _now_ms(args)
    try:
        bundle = parse_bundle(args.bundle.read_bytes())
        state, retired, retired_lines = _ingest(args, pins, state, now)
    except OSError as exc:
        raise HsmfleetError(f"cannot read the bundle: {exc}") from exc
    except VerificationError as exc:
        return _refusal(args, exc)
    if args.state and retired:
        save_state(args.state, state)
    rotations = _notices(args.rotations) if args.rotations else None
    try:
        accepted = await accept(bundle, pins, state, now, rotations)
    except VerificationError as exc:
        return _refusal(
            args,
            exc,
            fleet=bundle.artifact.fleet,
            epoch=bundle.artifact.epoch,
            retired=retired,
        )
    if args.state:
        save_state(args.state, accepted.state)
    artifact = accepted.artifact
    keys = [
        {
            "role": k.role,
            "alg": k.alg,
            "public_key": b64(k.public_key),
            "legacy_until": k.legacy_until,
        }
        for k in artifact.keys_usable_at(now)
    ]
    walked, walked_lines = _walked(accepted.rotations)
    result = {
        "accepted": True,
        "fleet": artifact.fleet,
        "epoch": artifact.epoch,
        "digest": accepted.digest,
        "vouchers": list(accepted.vouchers),
        "not_after": artifact.not_after,
        "keys": keys,
        "rotations": walked,
        "retired": retired,
    }
    lines = [
        f"ACCEPTED fleet {artifact.fleet} epoch {artifact.epoch} digest {accepted.digest}",
        *walked_lines,
        *retired_lines,
        f"  vouched by {', '.join(accepted.vouchers)}; valid until {artifact.not_after}",
        *(f"  key {k['role']} {k['alg']} {k['public_key']}" for k in keys),
    ]
    _emit(args, result, lines)
    return 0


async def _audit_log(
    reader: LogReader, pins: Pins, state: VerifierState
) -> tuple[LogAudit, TreeHead, list[str]]:
    """Audit one log; return the audit, its head, and the witnesses that cosigned it."""
    note = await reader.checkpoint()
    origin = note.split("\n", 1)[0]
    pin = pins.cosigner(origin)
    if pin is None:
        raise BadCheckpoint("the log at this URL is not pinned", log=origin, url=reader.url)
    claimed = Checkpoint.from_text(Note.parse(note).text).size
    entries = await reader.entries(0, claimed)
    try:
        documents = [parse_logged_bytes(entry) for entry in entries]
    except DocumentError as exc:
        raise BadLogEntry(f"an entry is not a logged document: {exc}") from exc
    keys = own_keys(origin, pinned_keys(pins, VerifierState(), origin)[0], documents)
    keyring = Keyring({**Keyring.of(pins, state).keys, origin: keys})
    witnesses = keyring.witnesses()
    signer = keyring.log_key(origin, claimed - 1) if claimed else keys[0]
    try:
        signed = open_checkpoint(
            note, origin, Ed25519NoteVerifier(origin, signer.public_key), witnesses
        )
    except (NoteError, CheckpointError) as exc:
        raise BadCheckpoint(f"checkpoint refused: {exc}", log=origin) from exc
    head = TreeHead(signed.checkpoint.size, signed.checkpoint.root)
    stored = state.checkpoints.get(origin)
    if stored is not None:
        proof = None
        if 0 < stored.size < head.size:
            proof = await reader.consistency(stored.size, head.size)
        check_extends(origin, stored, head, proof)
    audit = audit_entries(signed.checkpoint, entries)
    await _check_receipts(reader, pin, documents, keys)
    dated = keyring.in_force(cosignatures(signed, witnesses))
    return audit, head, sorted(witnesses_of(dated, origin))


async def _check_receipts(
    reader: LogReader, pin: CosignerPin, documents: list, keys: tuple[KeyInForce, ...]
) -> None:
    """Every entry's signed statement names it at its index and proves its inclusion, signed
    by the log's key in force at that index."""
    gate = asyncio.Semaphore(RECEIPT_CONCURRENCY)

    async def check(index: int, document: Any) -> None:
        async with gate:
            answer = await reader.receipt(document.digest)
        if answer.statement.index != index:
            raise StatementMismatch("statement names another index", index=index)
        check_logged(
            pin,
            document,
            answer.statement,
            answer.signature,
            answer.inclusion,
            answer.checkpoint,
            keys=keys,
        )

    await asyncio.gather(*(check(i, d) for i, d in enumerate(documents)))


def _report(audit: LogAudit, witnesses: list[str]) -> tuple[dict[str, Any], list[str]]:
    fleets = {}
    lines = [f"log {audit.origin}: {audit.size} entries, cosigned by {', '.join(witnesses) or '-'}"]
    for name, record in sorted(audit.fleets.items()):
        fleets[name] = {
            "bundles": [
                {"index": i, "serial": b.serial, "stage": b.stage, "digest": b.digest}
                for i, b in record.bundles
            ],
            "artifacts": [
                {"index": i, "epoch": a.epoch, "digest": a.digest} for i, a in record.artifacts
            ],
            "changes": record.changes(),
        }
        stages = " -> ".join(b.stage for _, b in record.bundles) or "-"
        epochs = ", ".join(str(a.epoch) for _, a in record.artifacts) or "-"
        lines.append(f"  fleet {name}: stages {stages}; epochs {epochs}")
        lines += [f"    {change}" for change in record.changes()]
    rotations = [
        {"index": i, "signer": r.signer, "version": r.version, "new": r.new.kid}
        for i, r in audit.rotations
    ]
    lines += [
        f"  rotation at {r['index']}: {r['signer']} key v{r['version']} {r['new']}"
        for r in rotations
    ]
    for name, record in sorted(audit.fleets.items()):
        if record.retirement is not None:
            index, retired = record.retirement
            fleets[name]["retired"] = {"index": index, "last_epoch": retired.last_epoch}
            lines.append(f"  fleet {name} retired at {index} after epoch {retired.last_epoch}")
    result = {
        "log": audit.origin,
        "size": audit.size,
        "witnesses": witnesses,
        "fleets": fleets,
        "rotations": rotations,
    }
    return result, lines


async def audit_command(args: argparse.Namespace) -> int:
    try:
        pins, state = pins_and_state(args)
    except (PinsError, StateError) as exc:
        return _refusal(args, exc, UNUSABLE)
    if args.rotations:
        state, _ = ingest_rotations(_notices(args.rotations), pins, state, time.time_ns() // 10**6)
    urls = args.url or [c.url for c in pins.cosigners if c.url]
    if not urls:
        raise PinsError("no log to audit: give --url or pin cosigners with a url")
    reports, lines, heads = [], [], {}
    async with aiohttp.ClientSession() as http:
        evidence = None
        if args.orchestrator:
            evidence = await fetch_evidence(http, args.orchestrator, args.token)
        for url in urls:
            try:
                audit, head, witnesses = await _audit_log(LogReader(http, url), pins, state)
                crossed = cross_check(evidence, audit) if evidence is not None else []
            except (VerificationError, AuditError, DocumentError, LogUnreachable) as exc:
                return _refusal(args, exc, url=url)
            report, text = _report(audit, witnesses)
            report["orchestrator"] = crossed
            reports.append(report)
            lines += text + crossed
            heads[audit.origin] = head
    if args.state:
        save_state(args.state, replace(state, checkpoints=dict(state.checkpoints) | heads))
    _emit(args, {"accepted": True, "logs": reports}, ["AUDIT PASSED", *lines])
    return 0


def _operator(path: Path) -> OperatorPin:
    try:
        return OperatorPin.parse(path.read_text())
    except (DocumentError, MessageError) as exc:
        raise PinsError(f"cannot read the operator key: {exc}", path=str(path)) from exc


def pins_command(args: argparse.Namespace) -> int:
    cosigners = []
    for path in args.cosigner:
        try:
            cosigners.append(CosignerPin.from_json(load_json(path.read_bytes())))
        except (OSError, DocumentError, MessageError) as exc:
            raise PinsError(f"cannot read cosigner pin: {exc}", path=str(path)) from exc
    try:
        pins = Pins(
            cosigners=tuple(cosigners),
            threshold=args.threshold,
            operator=_operator(args.operator_key),
            floor=QuorumFloor(
                args.min_members, args.min_threshold, args.min_domains, args.survive_domain_loss
            ),
            vouching=args.vouching,
        )
    except DocumentError as exc:
        raise PinsError(f"bad pins: {exc}") from exc
    save_pins(args.out, pins)
    print(args.out)
    return 0
