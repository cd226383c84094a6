"""Stripe metadata, read one way everywhere: by the event views, the rows, `derive` and the API.

Stripe metadata is a flat map of string keys to string values; what a product sells is named
there (`subscription_group`: one group or several comma-separated; `movie_id`: one movie).
Payloads are not always that tidy (a list, nested values, numbers in test data), so
`metadata_of` keeps only what a string map could hold and never fails.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["Metadata", "groups_in", "metadata_of", "movies_in", "split_groups"]

Metadata = tuple[tuple[str, str], ...]  # sorted (key, value) pairs: hashable, one order


def metadata_of(value: object) -> Metadata:
    """Sorted (key, value) pairs of a metadata map; anything but a map is empty.

    Numbers become text (Stripe stores text); null, nested objects and lists are dropped (a
    key set to null in `previous_attributes` means it was absent).
    """
    if not isinstance(value, Mapping):
        return ()
    pairs = []
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            continue
        pairs.append((str(k), v if isinstance(v, str) else str(v)))
    return tuple(sorted(pairs))


def _get(meta: Metadata | Mapping[str, object], key: str) -> object:
    if isinstance(meta, Mapping):
        return meta.get(key)
    for k, v in meta:
        if k == key:
            return v
    return None


def split_groups(value: object) -> tuple[str, ...]:
    """ "action, animated" -> ("action", "animated"): one or comma-separated, trimmed."""
    if not isinstance(value, str):
        return ()
    return tuple(g.strip() for g in value.split(",") if g.strip())


def groups_in(meta: Metadata | Mapping[str, object], key: str) -> tuple[str, ...]:
    """The subscription groups a product's metadata names under `key`."""
    return split_groups(_get(meta, key))


def movies_in(meta: Metadata | Mapping[str, object], key: str) -> tuple[str, ...]:
    """The movie a product's or purchase's metadata names under `key` (the whole value: a
    movie id may contain a comma), as a tuple so a caller unions it like groups."""
    value = _get(meta, key)
    return (value,) if isinstance(value, str) and value else ()
