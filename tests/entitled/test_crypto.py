"""The envelope of crypto-shredding, on plain bytes: no broker."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from entitled.crypto import (
    CryptoError,
    KeyCache,
    MasterKeys,
    WrongMasterKey,
    key_id_of,
    new_data_key,
    new_master_key,
    open_value,
    parse_master_keys,
    seal_value,
)


def test_a_sealed_value_opens_to_the_same_bytes_and_only_with_its_key() -> None:
    raw = b'{"id": "evt_1", "data": {"object": {"email": "jenny@example.com"}}}'
    key = AESGCM(new_data_key())
    sealed = seal_value(key, raw)
    assert b"jenny" not in sealed
    assert open_value(key, sealed) == raw
    with pytest.raises(CryptoError):
        open_value(AESGCM(new_data_key()), sealed)


def test_master_keys_parse_and_refuse_what_is_not_a_key() -> None:
    one, two = new_master_key(), new_master_key()
    assert len(parse_master_keys(f"{one}, {two}")) == 2
    assert parse_master_keys(None) == ()
    with pytest.raises(CryptoError, match="key 2 is not 32 bytes") as caught:
        parse_master_keys(f"{one},not-a-key")
    assert one not in str(caught.value)  # never the secret in a message
    with pytest.raises(CryptoError, match="ENTITLED_MASTER_KEY is not set"):
        MasterKeys(())


def test_a_wrapped_key_unwraps_only_with_its_master_and_its_record_key() -> None:
    (a,) = parse_master_keys(new_master_key())
    (b,) = parse_master_keys(new_master_key())
    data_key = new_data_key()
    wrapped = MasterKeys([a]).wrap(data_key, b"cus_1/k1")
    assert MasterKeys([a]).unwrap(wrapped, b"cus_1/k1") == data_key
    with pytest.raises(WrongMasterKey, match="wrong master key"):
        MasterKeys([b]).unwrap(wrapped, b"cus_1/k1")
    with pytest.raises(WrongMasterKey):  # moved to another subject
        MasterKeys([a]).unwrap(wrapped, b"cus_2/k1")


def test_rotation_keeps_the_old_master_for_unwrapping_only() -> None:
    (old,) = parse_master_keys(new_master_key())
    (new,) = parse_master_keys(new_master_key())
    wrapped = MasterKeys([old]).wrap(b"k" * 32, b"s/1")
    both = MasterKeys([new, old])
    assert both.unwrap(wrapped, b"s/1") == b"k" * 32
    assert not both.is_current(wrapped)
    assert both.is_current(both.wrap(b"k" * 32, b"s/1"))


def test_the_key_header_is_read_from_pairs_or_a_mapping() -> None:
    assert key_id_of([("source", b"webhook"), ("entitled-key", b"abc")]) == "abc"
    assert key_id_of({"entitled-key": b"abc"}) == "abc"
    assert key_id_of([("source", b"webhook")]) is None
    assert key_id_of(None) is None


def test_the_key_cache_keeps_the_most_recently_used() -> None:
    cache = KeyCache(2)
    cache.put("a", new_data_key())
    cache.put("b", new_data_key())
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", new_data_key())
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2
