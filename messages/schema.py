"""Typed message bodies, their registry, and the upcasters that lift old versions.

A body type is a frozen dataclass registered under a message ``type`` and its current ``v``.
Decoding is open-world: fields the dataclass does not declare are kept in ``extra`` and written
back on encoding. A body recorded under an older ``v`` is lifted one version at a time by the
registered upcasters before it is decoded, so stored logs are never rewritten.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from messages.canonical import b64, unb64
from messages.envelope import Envelope
from messages.errors import SchemaViolation, UnknownMessageType, UnsupportedVersion

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
B = TypeVar("B", bound="Body")


@dataclass(frozen=True)
class Body:
    """Base of every typed body; ``extra`` keeps the fields this build does not know."""

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, compare=False, repr=False)

    TYPE: typing.ClassVar[str] = ""
    VERSION: typing.ClassVar[int] = 1

    def to_json(self) -> dict[str, Any]:
        """The body as JSON-ready values, unknown fields included."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = _encode(getattr(self, f.name))
        return out

    @classmethod
    def from_json(cls: type[B], raw: Any, path: str = "body") -> B:
        """Check ``raw`` against this schema and build the body, keeping unknown fields."""
        if type(raw) is not dict:
            raise SchemaViolation(f"{path} must be an object")
        fields, names = _schema(cls)
        values: dict[str, Any] = {}
        for name, convert, required in fields:
            if name in raw:
                values[name] = convert(raw[name], path, name)
            elif required:
                raise SchemaViolation(f"{path}.{name} is missing")
        extra = {k: v for k, v in raw.items() if k not in names} if len(raw) > len(values) else {}
        return cls(**values, extra=extra)


# A converter checks one JSON value against one declared type and returns the Python value.
# It gets the path of the enclosing object and the field's key, and joins them only to name
# the field in an error, so the common case builds no strings.
Converter = Callable[[Any, str, Any], Any]


Schema = tuple[tuple[tuple[str, Converter, bool], ...], frozenset[str]]


def _read_schema(cls: type[Body]) -> Schema:
    """Each declared field of ``cls`` (name, converter, required) and the set of their names.

    Resolving postponed annotations and building converters is costly, so it is done once per
    class.
    """
    hints = typing.get_type_hints(cls)
    fields = tuple(
        (
            f.name,
            _converter(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
        if f.name != "extra"
    )
    return fields, frozenset(name for name, _, _ in fields)


# Cached per class (a class object is hashable, which the cache's typing does not see).
_schema = typing.cast(Callable[[type[Body]], Schema], functools.cache(_read_schema))


def _encode(value: Any) -> Any:
    if isinstance(value, Body):
        return value.to_json()
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _where(path: str, key: Any) -> str:
    return f"{path}[{key}]" if type(key) is int else f"{path}.{key}"


def _scalar(kind: type, what: str) -> Converter:
    def convert(raw: Any, path: str, key: Any) -> Any:
        if type(raw) is not kind:
            raise SchemaViolation(f"{_where(path, key)} must be {what}")
        return raw

    return convert


def _as_float(raw: Any, path: str, key: Any) -> float:
    if type(raw) is not float and type(raw) is not int:
        raise SchemaViolation(f"{_where(path, key)} must be a number")
    return float(raw)


def _as_bytes(raw: Any, path: str, key: Any) -> bytes:
    if type(raw) is not str:
        raise SchemaViolation(f"{_where(path, key)} must be a base64 string")
    try:
        return unb64(raw)
    except ValueError as exc:
        raise SchemaViolation(f"{_where(path, key)} is not valid base64") from exc


def _as_any(raw: Any, path: str, key: Any) -> Any:
    return raw


@functools.cache
def _converter(hint: Any) -> Converter:
    """The converter for one declared type, built once per type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _union(args)
    if origin is typing.Literal:
        return _literal(args)
    if origin is tuple:
        return _tuple(_converter(args[0] if args else Any))
    if origin is dict:
        return _mapping(_converter(args[1] if len(args) == 2 else Any))
    if hint is Any:
        return _as_any
    if isinstance(hint, type) and issubclass(hint, Body):
        return lambda raw, path, key: hint.from_json(raw, _where(path, key))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    simple = {
        bytes: _as_bytes,
        float: _as_float,
        bool: _scalar(bool, "a boolean"),
        int: _scalar(int, "an integer"),
        str: _scalar(str, "a string"),
    }
    if hint in simple:
        return simple[hint]
    raise TypeError(f"schema type {hint!r} is not supported")


def _union(args: tuple[Any, ...]) -> Converter:
    nullable = type(None) in args
    options = [_converter(a) for a in args if a is not type(None)]

    def convert(raw: Any, path: str, key: Any) -> Any:
        if raw is None and nullable:
            return None
        errors = []
        for option in options:
            try:
                return option(raw, path, key)
            except SchemaViolation as exc:
                errors.append(str(exc))
        raise SchemaViolation(f"{_where(path, key)} fits none of its types: {'; '.join(errors)}")

    return convert


def _literal(allowed: tuple[Any, ...]) -> Converter:
    def convert(raw: Any, path: str, key: Any) -> Any:
        if raw not in allowed:
            where = _where(path, key)
            raise SchemaViolation(f"{where} must be one of {list(allowed)}, got {raw!r}")
        return raw

    return convert


def _tuple(item: Converter) -> Converter:
    def convert(raw: Any, path: str, key: Any) -> tuple[Any, ...]:
        if type(raw) is not list:
            raise SchemaViolation(f"{_where(path, key)} must be a list")
        where = _where(path, key)
        return tuple(item(v, where, i) for i, v in enumerate(raw))

    return convert


def _mapping(item: Converter) -> Converter:
    def convert(raw: Any, path: str, key: Any) -> dict[str, Any]:
        if type(raw) is not dict:
            raise SchemaViolation(f"{_where(path, key)} must be an object")
        if item is _as_any:
            return raw
        where = _where(path, key)
        return {k: item(v, where, k) for k, v in raw.items()}

    return convert


def _enum(kind: type[enum.Enum]) -> Converter:
    def convert(raw: Any, path: str, key: Any) -> enum.Enum:
        try:
            return kind(raw)
        except ValueError as exc:
            raise SchemaViolation(f"{_where(path, key)}: {raw!r} is not a {kind.__name__}") from exc

    return convert


class Registry:
    """Which body class decodes each message type, and how old versions are lifted."""

    def __init__(self) -> None:
        self._bodies: dict[str, type[Body]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: type[B]) -> type[B]:
        """Class decorator: register a body class under its ``TYPE`` at its ``VERSION``."""
        if not cls.TYPE:
            raise TypeError(f"{cls.__name__} has no TYPE")
        if cls.TYPE in self._bodies:
            raise TypeError(f"message type {cls.TYPE!r} is registered twice")
        self._bodies[cls.TYPE] = cls
        return cls

    def upcaster(self, type_name: str, from_v: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register a function lifting a ``type_name`` body from ``from_v`` to +1."""

        def add(fn: Upcaster) -> Upcaster:
            key = (type_name, from_v)
            if key in self._upcasters:
                raise TypeError(f"upcaster {type_name} v{from_v} is registered twice")
            self._upcasters[key] = fn
            return fn

        return add

    def body_class(self, type_name: str) -> type[Body]:
        try:
            return self._bodies[type_name]
        except KeyError:
            raise UnknownMessageType("no schema for message type", type=type_name) from None

    def upcast(self, env: Envelope) -> Envelope:
        """Lift ``env`` to the current version of its type; the original stays as it was."""
        cls = self.body_class(env.type)
        if env.v > cls.VERSION:
            raise UnsupportedVersion(
                "message is newer than this build", type=env.type, v=env.v, known=cls.VERSION
            )
        if env.v == cls.VERSION:
            return env
        body, v = dict(env.body), env.v
        while v < cls.VERSION:
            step = self._upcasters.get((env.type, v))
            if step is None:
                raise UnsupportedVersion("no upcaster from this version", type=env.type, v=v)
            try:
                body = step(body)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                # An upcaster is written for bodies that fitted their old schema; whatever it
                # trips over in one that did not is that body's defect, not the receiver's.
                raise SchemaViolation(
                    f"body does not fit version {v}: {exc!r}", type=env.type, v=v
                ) from None
            v += 1
        return replace(env, v=v, body=body)

    def parse(self, env: Envelope) -> Body:
        """The typed body of ``env``, upcast to the current version."""
        current = self.upcast(env)
        return self.body_class(env.type).from_json(current.body)

    def types(self) -> list[str]:
        return sorted(self._bodies)


REGISTRY = Registry()
message = REGISTRY.register
upcaster = REGISTRY.upcaster
