"""Quorum bodies on the wire: columns packed into one base64 string each, decoded strictly."""

import base64
import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages.canonical import canonical, loads_strict
from messages.envelope import Envelope
from messages.errors import SchemaViolation
from messages.quorum import Accept, Accepted, Committed, Promise, Refusal, Snapshot
from messages.schema import REGISTRY
from transport.outbox import Outbox

keys = st.text(min_size=0, max_size=20)
ballot = st.integers(0, 2**64 - 1)
values = st.one_of(st.none(), st.binary(max_size=50))


@st.composite
def promises(draw):
    n = draw(st.integers(0, 12))
    refused = draw(st.lists(st.integers(0, max(n - 1, 0)), unique=True, max_size=n)) if n else []
    return Promise(
        fleet=draw(st.text(max_size=5)),
        epoch=draw(st.integers(1, 9)),
        proposer=draw(st.text(max_size=5)),
        keys=tuple(draw(st.lists(keys, min_size=n, max_size=n))),
        ballots=tuple(draw(st.lists(ballot, min_size=n, max_size=n))),
        accepteds=tuple(draw(st.lists(ballot, min_size=n, max_size=n))),
        accepted_bys=tuple(draw(st.lists(keys, min_size=n, max_size=n))),
        values=tuple(draw(st.lists(values, min_size=n, max_size=n))),
        justifications=tuple(draw(st.lists(values, min_size=n, max_size=n))),
        refusals=tuple(
            Refusal(index=i, seen=1, seen_by="", accepted=0, accepted_by="") for i in refused
        ),
    )


@given(promises())
def test_bodies_survive_the_wire_exactly(body):
    env = Outbox("m1").envelope(body)
    data = env.encode()
    again = REGISTRY.parse(Envelope.decode(data))
    assert again == body
    assert canonical(again.to_json()) == canonical(body.to_json()), "one encoding per batch"


def accept_json(**changes):
    body = Accept(
        fleet="f",
        epoch=1,
        keys=("a", "b"),
        ballots=(5, 6),
        next_ballots=(7, 0),
        values=(b"x", None),
        justifications=(b"why", None),
    )
    return {**body.to_json(), **changes}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"keys": b64(b"\x00\x00\x00")}, "inside an entry's length"),
        ({"keys": b64(b"\x00\x00\x00\x05ab")}, "inside an entry"),
        ({"keys": b64(b"\xff\xff\xff\xff")}, "without empty entries"),
        ({"keys": b64(b"\x00\x00\x00\x01\xff")}, "not UTF-8"),
        ({"ballots": b64(b"\x00" * 12)}, "whole number"),
        ({"ballots": "AAAAAAAAAAU="[:-2] + "V="}, "not valid base64"),
        ({"ballots": [5, 6]}, "must be a base64 string"),
        ({"epoch": "1"}, "epoch must be int"),
        ({"fleet": None}, "fleet must be str"),
        ({"values": b64(struct.pack(">I", 1) + b"x")}, "columns differ in length"),
    ],
)
def test_malformed_columns_are_schema_violations(changes, message):
    with pytest.raises(SchemaViolation, match=message):
        Accept.from_json(accept_json(**changes))


def test_missing_fields_and_unknown_fields():
    raw = accept_json()
    del raw["values"]
    with pytest.raises(SchemaViolation, match="values must be"):
        Accept.from_json(raw)
    raw = accept_json()
    del raw["epoch"]
    with pytest.raises(SchemaViolation, match="epoch is missing"):
        Accept.from_json(raw)
    kept = Accept.from_json(accept_json(hint="later"))
    assert kept.extra == {"hint": "later"} and kept.to_json()["hint"] == "later"


def test_entries_that_cannot_be_packed_are_refused():
    with pytest.raises(SchemaViolation, match="unsigned 64-bit"):
        Accept(
            fleet="f",
            epoch=1,
            keys=("a",),
            ballots=(-1,),
            next_ballots=(0,),
            values=(b"",),
            justifications=(None,),
        ).to_json()


def test_votes_and_pages_keep_their_optional_fields():
    vote = Accepted(fleet="f", proposer="m1", keys=("k",), ballots=(3,), digests=(b"d" * 32,))
    assert Accepted.from_json(vote.to_json()) == vote and vote.epoch == 1
    raw = vote.to_json()
    del raw["refusals"], raw["epoch"]
    assert Accepted.from_json(raw).refusals == ()
    page = Snapshot(
        fleet="f",
        keys=("a",),
        accepteds=(1,),
        accepted_bys=("m1",),
        values=(None,),
        justifications=(None,),
        more=True,
    )
    assert Snapshot.from_json(loads_strict(canonical(page.to_json()))) == page
    with pytest.raises(SchemaViolation, match="more must be bool"):
        Snapshot.from_json({**page.to_json(), "more": 1})


def test_a_commit_notice_names_each_record_once_with_its_ballot_and_value():
    notice = Committed(
        fleet="f", epoch=2, proposer="m1", keys=("vault-a", "vault-b"), ballots=(5, 6),
        values=(b"x", b"y"), votes=(b"vote-1", b"vote-2"),
    )  # fmt: skip
    assert Committed.from_json(notice.to_json()) == notice
    with pytest.raises(SchemaViolation, match="a ballot and a value"):
        replace(notice, values=(b"x",))
    with pytest.raises(SchemaViolation, match="once"):
        replace(notice, keys=("vault-a", "vault-a"))
