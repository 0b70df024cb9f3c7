from dataclasses import dataclass

import pytest

from messages import Body, Envelope, Registry
from messages.errors import SchemaViolation, UnknownMessageType, UnsupportedVersion
from tests.unit.sample_messages import Ping, registry


def envelope(v: int, body: dict, type_: str = "test.ping") -> Envelope:
    return Envelope(type=type_, v=v, id="01", at="2026-01-01T00:00:00.000Z", source="a", body=body)


def test_unknown_fields_are_kept_and_written_back():
    ping = registry.parse(envelope(3, {"count": 1, "label": "x", "future": {"k": [1]}}))
    assert ping == Ping(count=1, label="x")
    assert ping.extra == {"future": {"k": [1]}}
    assert ping.to_json() == {"count": 1, "label": "x", "note": None, "future": {"k": [1]}}


def test_old_versions_are_upcast_through_the_chain():
    old = envelope(1, {"n": 7})
    assert registry.parse(old) == Ping(count=7, label="legacy")
    lifted = registry.upcast(old)
    assert (lifted.v, lifted.body) == (3, {"count": 7, "label": "legacy"})
    assert old.body == {"n": 7}, "the stored message is never rewritten"


def test_newer_version_than_known_is_refused():
    with pytest.raises(UnsupportedVersion):
        registry.parse(envelope(4, {"count": 1, "label": "x"}))


def test_missing_upcaster_is_refused():
    reg = Registry()

    @reg.register
    @dataclass(frozen=True)
    class Thing(Body):
        TYPE = "thing"
        VERSION = 2

    with pytest.raises(UnsupportedVersion):
        reg.parse(envelope(1, {}, "thing"))


def test_unknown_type_is_refused():
    with pytest.raises(UnknownMessageType):
        registry.parse(envelope(1, {}, "test.nothing"))


@pytest.mark.parametrize(
    "body, where",
    [
        ({"label": "x"}, "body.count is missing"),
        ({"count": "1", "label": "x"}, "body.count must be an integer"),
        ({"count": True, "label": "x"}, "body.count must be an integer"),
        ({"count": 1, "label": 5}, "body.label must be a string"),
        ({"count": 1, "label": "x", "note": 3}, "body.note fits none"),
    ],
)
def test_body_outside_schema_names_the_field(body, where):
    with pytest.raises(SchemaViolation, match=where):
        registry.parse(envelope(3, body))


def test_nested_bodies_bytes_and_tuples():
    reg = Registry()

    @dataclass(frozen=True)
    class Key(Body):
        role: str
        public: bytes

    @reg.register
    @dataclass(frozen=True)
    class Keys(Body):
        TYPE = "keys"
        keys: tuple[Key, ...]
        meta: dict[str, int]

    value = Keys(keys=(Key(role="fleet", public=b"\x00\xff"),), meta={"n": 1})
    raw = value.to_json()
    assert raw == {"keys": [{"role": "fleet", "public": "AP8="}], "meta": {"n": 1}}
    assert reg.parse(envelope(1, raw, "keys")) == value
    with pytest.raises(SchemaViolation, match=r"body.keys\[0\].public is not valid base64"):
        reg.parse(envelope(1, {"keys": [{"role": "r", "public": "!!"}], "meta": {}}, "keys"))


def test_registering_twice_is_an_error():
    with pytest.raises(TypeError):
        registry.register(Ping)
