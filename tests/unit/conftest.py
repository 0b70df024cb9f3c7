"""Signers, a trust store, an outbox and a gate for the pure tests."""

from __future__ import annotations

import pytest

from messages import Ed25519Signer, TrustStore
from tests.unit.sample_messages import registry
from transport import logs
from transport.gate import Gate
from transport.outbox import Outbox


@pytest.fixture
def alice() -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
def trust(alice: Ed25519Signer) -> TrustStore:
    store = TrustStore()
    store.trust("alice", alice, "tester")
    return store


@pytest.fixture
def outbox(alice: Ed25519Signer) -> Outbox:
    return Outbox("alice", alice)


@pytest.fixture
def gate(trust: TrustStore) -> Gate:
    return Gate(trust, registry=registry)


@pytest.fixture
def keep_logging(monkeypatch):
    """``cli.main`` would point structlog at this test's captured stderr for good."""
    monkeypatch.setattr(logs, "configure", lambda **_: None)
