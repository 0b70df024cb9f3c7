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
        if not isinstance(raw, dict):
            raise SchemaViolation(f"{path} must be an object")
        values: dict[str, Any] = {}
        for name, hint, required in _schema(cls):
            if name not in raw:
                if required:
                    raise SchemaViolation(f"{path}.{name} is missing")
                continue
            values[name] = _decode(hint, raw[name], f"{path}.{name}")
        extra = {k: v for k, v in raw.items() if k not in values and k not in _field_names(cls)}
        return cls(**values, extra=extra)


@functools.cache
def _schema(cls: type[Body]) -> tuple[tuple[str, Any, bool], ...]:
    """Each declared field of ``cls``: its name, its resolved type, and whether it is required.

    Resolving postponed annotations is costly, so it is done once per class.
    """
    hints = typing.get_type_hints(cls)
    return tuple(
        (
            f.name,
            hints[f.name],
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
        if f.name != "extra"
    )


@functools.cache
def _field_names(cls: type[Body]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


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


def _decode(hint: Any, raw: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _decode(option, raw, path)
            except SchemaViolation as exc:
                errors.append(str(exc))
        raise SchemaViolation(f"{path} fits none of its types: {'; '.join(errors)}")
    if origin is typing.Literal:
        if raw not in args:
            raise SchemaViolation(f"{path} must be one of {list(args)}, got {raw!r}")
        return raw
    if origin is tuple:
        if not isinstance(raw, list):
            raise SchemaViolation(f"{path} must be a list")
        item = args[0] if args else Any
        return tuple(_decode(item, v, f"{path}[{i}]") for i, v in enumerate(raw))
    if origin is dict:
        if not isinstance(raw, dict):
            raise SchemaViolation(f"{path} must be an object")
        item = args[1] if len(args) == 2 else Any
        return {k: _decode(item, v, f"{path}.{k}") for k, v in raw.items()}
    if hint is Any:
        return raw
    if isinstance(hint, type) and issubclass(hint, Body):
        return hint.from_json(raw, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(raw)
        except ValueError as exc:
            raise SchemaViolation(f"{path}: {raw!r} is not a {hint.__name__}") from exc
    if hint is bytes:
        if not isinstance(raw, str):
            raise SchemaViolation(f"{path} must be a base64 string")
        try:
            return unb64(raw)
        except ValueError as exc:
            raise SchemaViolation(f"{path} is not valid base64") from exc
    if hint is bool:
        if not isinstance(raw, bool):
            raise SchemaViolation(f"{path} must be a boolean")
        return raw
    if hint is int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise SchemaViolation(f"{path} must be an integer")
        return raw
    if hint is float:
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            raise SchemaViolation(f"{path} must be a number")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise SchemaViolation(f"{path} must be a string")
        return raw
    raise TypeError(f"schema type {hint!r} at {path} is not supported")


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
        body, v = dict(env.body), env.v
        while v < cls.VERSION:
            step = self._upcasters.get((env.type, v))
            if step is None:
                raise UnsupportedVersion("no upcaster from this version", type=env.type, v=v)
            body, v = step(body), v + 1
        return env if v == env.v else replace(env, v=v, body=body)

    def parse(self, env: Envelope) -> Body:
        """The typed body of ``env``, upcast to the current version."""
        current = self.upcast(env)
        return self.body_class(env.type).from_json(current.body)

    def types(self) -> list[str]:
        return sorted(self._bodies)


REGISTRY = Registry()
message = REGISTRY.register
upcaster = REGISTRY.upcaster
