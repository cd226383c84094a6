"""Tolerant field readers of the event views: every field has a defined default, taken when
the payload's value is absent or of the wrong type; a view is built from its fields'
declared types (`build`)."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from projections.model.metadata import Metadata, metadata_of

Obj = dict[str, Any]
V = TypeVar("V")


def ref(value: Any) -> str | None:
    """An id field that may be expanded into an object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Obj]:
    """The dicts of a Stripe list object (`{"data": [...]}`) or of a plain list."""
    if isinstance(value, dict):
        value = value.get("data")
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _reader(tp: Any, default: Any) -> Callable[[Any], Any]:
    """How to read a field of type `tp` from a payload value, `default` when unusable."""
    if tp == Metadata:
        return metadata_of
    if tp is bool:
        return lambda v: v if isinstance(v, bool) else default
    if tp is int:
        return lambda v: v if isinstance(v, int) and not isinstance(v, bool) else default
    if tp is str:
        return lambda v: v if isinstance(v, str) else default
    if tp == str | None:
        return ref
    if tp == int | None:
        return as_int
    raise TypeError(f"no reader for {tp}: build the field explicitly")


@functools.cache
def _readers(cls: type) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, Callable[[Any], Any] | None]] = []
    for f in dataclasses.fields(cls):
        default = None if f.default is dataclasses.MISSING else f.default
        try:
            out.append((f.name, _reader(hints[f.name], default)))
        except TypeError:
            out.append((f.name, None))  # a nested field: the builder passes it
    return tuple(out)


def build(cls: Callable[..., V], o: Obj, **given: Any) -> V:
    """`cls` from payload `o`: each field read by its declared type, `given` ones as given."""
    values = dict(given)
    for name, read in _readers(cls):
        if name not in values and read is not None:
            values[name] = read(o.get(name))
    return cls(**values)
