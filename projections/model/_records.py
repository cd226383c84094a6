"""Rows <-> plain JSON records, generated from the dataclass fields.

One encoder and one decoder per row class, built once from its type hints: nested dataclasses
(`Stamp`, `ItemRow`, rival rows) become objects, tuples become lists, `Metadata` becomes a
JSON object (as Stripe shows it, and as the API and SQL read it), and `Changes` (a row's
`previous` values) an object whose values are coded by the type of the field they belong to.
A field missing from a stored record takes its default, so records written before a field was
added still load.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from projections.model.metadata import Metadata, metadata_of

__all__ = ["Changes", "Record", "decode", "encode"]

Record = dict[str, Any]
# (field name, value before this snapshot) for the fields a snapshot changed, sorted by name
Changes = tuple[tuple[str, Any], ...]

T = TypeVar("T")
Codec = Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def _optional(inner: Codec) -> Codec:
    if inner is _same:
        return _same
    return lambda v: None if v is None else inner(v)


def _optional_of(tp: Any) -> Any:
    """`X` for a field typed `X | None` (None for any other type)."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _encoder(tp: Any, owner: type) -> Codec:
    if tp == Metadata:
        return dict
    if tp == Changes:
        return lambda v: {name: _field_encoder(owner, name)(x) for name, x in v}
    if (inner := _optional_of(tp)) is not None:
        return _optional(_encoder(inner, owner))
    if typing.get_origin(tp) is tuple:
        item = _encoder(typing.get_args(tp)[0], owner)
        return lambda v: [item(x) for x in v]
    if dataclasses.is_dataclass(tp):
        return encode
    return _same


def _decoder(tp: Any, owner: type) -> Codec:
    if tp == Metadata:
        return metadata_of
    if tp == Changes:
        # a field dropped from the class since the record was written is dropped here too
        return lambda v: tuple(
            sorted(
                (name, _field_decoder(owner, name)(x))
                for name, x in v.items()
                if name in _hints(owner)
            )
        )
    if (inner := _optional_of(tp)) is not None:
        return _optional(_decoder(inner, owner))
    if typing.get_origin(tp) is tuple:
        item = _decoder(typing.get_args(tp)[0], owner)
        return lambda v: tuple(item(x) for x in v)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        nested: type = tp
        return lambda v: decode(nested, v)
    return _same


@functools.cache
def _field_encoder(owner: type, name: str) -> Codec:
    return _encoder(_hints(owner)[name], owner)


@functools.cache
def _field_decoder(owner: type, name: str) -> Codec:
    return _decoder(_hints(owner)[name], owner)


Plan = tuple[tuple[str, Codec, Codec, Any], ...]
_PLANS: dict[type, Plan] = {}


def _plan(cls: type) -> Plan:
    """(name, encoder, decoder, default) per field of `cls`, built once."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = tuple(
            (f.name, _field_encoder(cls, f.name), _field_decoder(cls, f.name), f.default)
            for f in dataclasses.fields(cls)
        )
    return plan


def encode(obj: Any) -> Record:
    """The JSON record of a dataclass instance (a row or a part of one)."""
    return {name: enc(getattr(obj, name)) for name, enc, _dec, _default in _plan(type(obj))}


def decode(cls: type[T], rec: Record) -> T:
    """The `cls` instance stored as `rec` (the inverse of `encode`)."""
    values = {}
    for name, _enc, dec, default in _plan(cls):
        if name in rec:
            values[name] = dec(rec[name])
        elif default is not dataclasses.MISSING:
            values[name] = default
        else:
            raise KeyError(f"{cls.__name__} record without {name!r}")
    return cls(**values)
