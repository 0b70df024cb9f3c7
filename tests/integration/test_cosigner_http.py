"""A cosigner's HTTP API: the log for auditors (checkpoint, entries, proofs, receipts) and the
C2SP tlog-witness ``add-checkpoint`` endpoint, with every refusal typed, counted and harmless."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cosigner.engine import Cosigner
from cosigner.http import Server, make_app
from cosigner.testbed import Testbed, sample_artifact, sample_chain
from messages.canonical import b64, unb64
from messages.checkpoint import Checkpoint, open_checkpoint
from messages.cosignature import cosignatures
from messages.cosigning import Signed
from messages.merkle import leaf_hash, verify_consistency, verify_inclusion
from messages.note import Ed25519NoteSigner
from messages.signing import Ed25519Signer
from messages.validation import with_cosignatures
from transport.httpguard import Limits
from transport.log_reader import LogReader, LogUnreachable

A, B = "cosigner-a.example/log", "cosigner-b.example/log"


@dataclasses.dataclass
class Site:
    url: str
    http: aiohttp.ClientSession
    server: Server
    bed_dir: Path
    pins: dict

    async def get(self, path: str, status: int = 200, **params: object) -> dict | str:
        async with self.http.get(self.url + path, params=params) as response:
            assert response.status == status, await response.text()
            if response.content_type == "application/json":
                return await response.json()
            return await response.text()

    async def add_checkpoint(self, body: str) -> tuple[int, str, str]:
        async with self.http.post(self.url + "/add-checkpoint", data=body.encode()) as response:
            return response.status, response.content_type, await response.text()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """Cosigner A served over HTTP after both cosigners logged a chain of four bundles."""
    bed = Testbed.create(tmp_path)
    for bundle in sample_chain():
        await bed.client.log(bundle)
    pins = {p.name: p.pin for p in bed.peers}
    await bed.close()
    server = Server(make_app(tmp_path / "cosigner-a"))
    url = await server.start()
    async with aiohttp.ClientSession() as http:
        yield Site(url, http, server, tmp_path, pins)
    await server.stop()


async def test_checkpoint_entries_and_proofs(site: Site) -> None:
    note = await site.get("/checkpoint")
    checkpoint = open_checkpoint(note, A, site.pins[A].log_verifier).checkpoint
    assert checkpoint.size == 4
    chain = sample_chain()
    page = await site.get("/entries", start=0, end=4)
    assert [unb64(e) for e in page["entries"]] == [b.to_bytes() for b in chain]
    by_index = await site.get("/inclusion", index=2)
    # The log re-signs its checkpoint with a timestamped cosignature on a schedule (starting
    # when it opens), so the signatures may differ between reads; the checkpoint may not.
    served = open_checkpoint(by_index["checkpoint"], A, site.pins[A].log_verifier).checkpoint
    assert served == checkpoint and by_index["size"] == 4
    proof = [unb64(h) for h in by_index["proof"]]
    verify_inclusion(2, 4, leaf_hash(chain[2].to_bytes()), proof, checkpoint.root)
    by_digest = await site.get("/inclusion", digest=chain[2].digest, size=3)
    assert by_digest["index"] == 2 and by_digest["checkpoint"] is None
    old = Checkpoint(A, 1, leaf_hash(chain[0].to_bytes()))
    consistent = await site.get("/consistency", old=1)
    verify_consistency(1, 4, old.root, checkpoint.root, [unb64(h) for h in consistent["proof"]])


async def test_receipt_repeats_the_signed_statement(site: Site) -> None:
    bundle = sample_chain()[1]
    answer = Signed.from_json(await site.get("/receipt", digest=bundle.digest))
    assert answer.statement.describes(bundle)
    assert answer.statement.index == 1
    assert answer.statement.verify(site.pins[A].public_key, answer.signature)


@pytest.mark.parametrize(
    ("path", "params", "status", "kind"),
    [
        ("/entries", {"start": 3, "end": 1}, 400, "bad_query"),
        ("/entries", {"start": 0, "end": 9}, 400, "bad_query"),
        ("/entries", {"start": "01"}, 400, "bad_query"),
        ("/entries", {"start": "\u00b2"}, 400, "bad_query"),  # isdigit(), but int() refuses it
        ("/entries", {"start": "\u0661"}, 400, "bad_query"),  # an Arabic-Indic 1
        ("/inclusion", {"index": 0, "size": str(2**64)}, 400, "bad_query"),
        ("/entries", {}, 400, "bad_query"),
        ("/inclusion", {"index": 4}, 400, "index_out_of_range"),
        ("/inclusion", {"index": 0, "size": 5}, 400, "size_out_of_range"),
        ("/inclusion", {"digest": "AB" * 32}, 400, "bad_query"),
        ("/inclusion", {"digest": "ab" * 32}, 404, "not_found"),
        ("/consistency", {"old": 5}, 400, "tree_shrank"),
        ("/consistency", {"old": "-1"}, 400, "bad_query"),
        ("/receipt", {"digest": "ab" * 32}, 404, "not_found"),
        ("/receipt", {}, 400, "bad_query"),
    ],
)
async def test_bad_queries_are_typed_counted_and_harmless(
    site: Site, path: str, params: dict, status: int, kind: str
) -> None:
    answer = await site.get(path, status, **params)
    assert answer["kind"] == kind
    stats = await site.get("/stats")
    assert stats["http_rejects"] == {kind: 1}
    assert stats["size"] == 4


async def _grow_b(site: Site, *documents: object) -> tuple[str, Cosigner]:
    """Log ``documents`` at cosigner B (opened in this process) and return its checkpoint."""
    b = Cosigner.open(site.bed_dir / "cosigner-b")
    for document in documents:
        await b.sign(document.to_json())
    return b.notary.checkpoint(), b


def _body(old: int, proof: list[bytes], note: str) -> str:
    return f"old {old}\n" + "".join(b64(h) + "\n" for h in proof) + "\n" + note


async def test_witness_cosigns_what_extends_what_it_saw(site: Site) -> None:
    note, b = await _grow_b(site, sample_artifact())
    try:
        assert site.server.cosigner.witness.latest(B).size == 4
        status, kind, text = await site.add_checkpoint(_body(0, [], note))
        assert (status, kind, text) == (409, "text/x.tlog.size", "4\n")
        proof = b.notary.consistency_proof(4, 5)
        status, _, line = await site.add_checkpoint(_body(4, proof, note))
        assert status == 200, line
        signed = open_checkpoint(
            with_cosignatures(note, [line]),
            B,
            site.pins[B].log_verifier,
            [site.pins[A].witness_verifier],
        )
        assert [c.name for c in cosignatures(signed, [site.pins[A].witness_verifier])] == [A]
        # Idempotent at the same size; the witness keeps what it saw.
        status, _, _ = await site.add_checkpoint(_body(5, [], note))
        assert status == 200
        history = await site.get("/witnessed", origin=B)
        assert [c["size"] for c in history["checkpoints"]] == [1, 2, 3, 4, 5]
        assert history["equivocations"] == []
    finally:
        await b.close()


async def test_witness_refusals(site: Site) -> None:
    note, b = await _grow_b(site, sample_artifact(), sample_artifact(epoch=2))
    try:
        good = b.notary.consistency_proof(4, 6)
        bad = [bytes([good[0][0] ^ 1]) + good[0][1:], *good[1:]]
        assert (await site.add_checkpoint(_body(4, bad, note)))[0] == 422
        assert (await site.add_checkpoint(_body(7, [], note)))[0] == 400
        assert (await site.add_checkpoint("old 4\n" + note))[0] == 400
        assert (await site.add_checkpoint(_body(4, good, "no note\n")))[0] == 400
        stranger = Ed25519NoteSigner("stranger.example/log", Ed25519Signer.generate())
        alien = Checkpoint("stranger.example/log", 1, bytes(32)).sign(stranger)
        assert (await site.add_checkpoint(_body(0, [], alien.encode().decode())))[0] == 404
        impostor = Ed25519NoteSigner(B, Ed25519Signer.generate())
        forged = Checkpoint(B, 6, bytes(32)).sign(impostor).encode().decode()
        assert (await site.add_checkpoint(_body(4, good, forged)))[0] == 403
        arabic_four = _body(4, good, note).replace("old 4", "old \u0664")
        assert (await site.add_checkpoint(arabic_four))[0] == 400
        assert (await site.add_checkpoint("old \u00b2\n\n" + note))[0] == 400
        async with site.http.post(
            site.url + "/add-checkpoint", data=b"old 4\n\n\xff" + note.encode()
        ) as response:
            assert response.status == 400
            assert (await response.json())["kind"] == "malformed_witness_request"
        async with site.http.post(site.url + "/add-checkpoint", data=b"x" * 70_000) as response:
            assert response.status == 413
        stats = await site.get("/stats")
        assert stats["http_rejects"] == {
            "bad_witness_proof": 1,
            "malformed_witness_request": 6,
            "unknown_log": 1,
            "bad_witness_checkpoint": 1,
            "request_too_large": 1,
        }
        assert site.server.cosigner.witness.latest(B).size == 4
        assert (await site.add_checkpoint(_body(4, good, note)))[0] == 200
    finally:
        await b.close()


@pytest.mark.parametrize(
    "answer",
    [
        {"start": 0, "entries": [1, 2]},
        {"start": 0, "entries": "AAAA"},
        {"start": 0, "entries": ["not base64!"]},
        {"start": 0},
        ["a list"],
    ],
)
async def test_the_log_reader_refuses_nonsense_as_a_typed_error(answer: object) -> None:
    """A log that answers garbage gets a LogUnreachable, not an exception from deep inside."""

    body = answer | {"proof": answer.get("entries")} if isinstance(answer, dict) else answer

    async def nonsense(request: web.Request) -> web.Response:
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/entries", nonsense)
    app.router.add_get("/consistency", nonsense)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            reader = LogReader(http, url)
            with pytest.raises(LogUnreachable):
                await reader.entries(0, 2)
            with pytest.raises(LogUnreachable):
                await reader.consistency(1, 2)
    finally:
        await runner.cleanup()


async def test_a_checkpoint_not_signed_by_the_log_changes_nothing(site: Site) -> None:
    """The log's signature is what authenticates add-checkpoint: a forged checkpoint of a size
    the witness cosigned, with another root, is refused before anything is stored; the same
    fork signed by the log itself is kept as evidence."""
    _, b = await _grow_b(site, sample_artifact())
    try:
        before = await site.get("/witnessed", origin=B)
        impostor = Ed25519NoteSigner(B, Ed25519Signer.generate())
        forged = Checkpoint(B, 4, bytes(32)).sign(impostor).encode().decode()
        assert (await site.add_checkpoint(_body(4, [], forged)))[0] == 403
        assert await site.get("/witnessed", origin=B) == before
        fork = Checkpoint(B, 4, bytes(32)).sign(Ed25519NoteSigner(B, b.signer)).encode().decode()
        status, _, _ = await site.add_checkpoint(_body(4, [], fork))
        assert status == 409
        after = await site.get("/witnessed", origin=B)
        assert after["checkpoints"] == before["checkpoints"]
        assert [e["note"] for e in after["equivocations"]] == [fork]
    finally:
        await b.close()


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """Cosigner A with tight limits and a slow route added after ``make_app``; yields its URL
    and an event set when the slow route is cancelled."""
    bed = Testbed.create(tmp_path)
    await bed.close()
    cancelled = asyncio.Event()
    app = make_app(tmp_path / "cosigner-a", limits=Limits(handler_s=0.5, idle_s=0.5))

    async def slow(_: web.Request) -> web.Response:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.json_response({})

    app.router.add_get("/slow", slow)
    server = Server(app)
    url = await server.start()
    yield url, cancelled
    await server.stop()


async def test_a_request_not_answered_in_time_gets_a_typed_error(guarded) -> None:
    url, cancelled = guarded
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/slow") as response:
            assert response.status == 503
            assert (await response.json())["kind"] == "handler_timeout"
        await asyncio.wait_for(cancelled.wait(), 10)
        async with http.get(url + "/stats") as response:
            assert (await response.json())["http_rejects"] == {"handler_timeout": 1}


@pytest.mark.parametrize("sent", [b"", b"GET /checkpoint HTTP/1.1\r\nHost: x\r\n"])
async def test_a_client_that_never_finishes_its_request_head_is_disconnected(guarded, sent):
    url, _ = guarded
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(sent)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing answered
    finally:
        writer.close()
