"""The keyring's directory (pure): what goes in comes out, whatever the key id looks like."""

from __future__ import annotations

import secrets

from entitled.keydirectory import KeyDirectory

# ids as the keyring makes them, and ids it must keep as they are: near misses of that form
# (an int would format them back differently) and ids of other forms
IDS = [
    secrets.token_hex(12),
    "000000000000000000000abc",  # leading zeros
    "ABCDEF0123456789ABCDEF01",  # capitals
    "0x" + "1" * 22,
    "1_" + "2" * 22,
    " " + "3" * 23,
    "-" + "4" * 23,
    "abc",
    "shredded-" + secrets.token_hex(12),
    "k-\u00e9",
]


def test_every_kind_of_key_id_comes_back_as_it_went_in() -> None:
    directory = KeyDirectory()
    for n, key_id in enumerate(IDS):
        directory.put(key_id, f"cus_{n}/x\u00e9", bytes([n]) * 69)
    assert len(directory) == len(IDS)
    for n, key_id in enumerate(IDS):
        assert key_id in directory
        assert directory.get(key_id) == (f"cus_{n}/x\u00e9", bytes([n]) * 69)
    assert [k for k, _, _ in directory.items()] == IDS
    assert "1" * 24 not in directory and directory.get("f" * 24) is None
    assert directory.pop(IDS[3]) == ("cus_3/x\u00e9", bytes([3]) * 69)
    assert IDS[3] not in directory and directory.pop(IDS[3]) is None


def test_the_newest_key_of_a_subject_is_indexed_once_something_seals() -> None:
    directory = KeyDirectory()
    older, newer, other = (secrets.token_hex(12) for _ in range(3))
    directory.put(older, "cus_a", b"w1")
    directory.put(newer, "cus_a", b"w2")
    directory.put(other, "cus_b", b"w3")
    assert directory._newest is None  # a reader never builds the index
    assert directory.newest("cus_a") == newer
    assert directory.newest("cus_b") == other and directory.newest("cus_c") is None
    latest = secrets.token_hex(12)
    directory.put(latest, "cus_b", b"w4")
    directory.put(older, "cus_a", b"w5", newest=False)  # rewrapped (rotation): not newer
    assert directory.newest("cus_b") == latest and directory.newest("cus_a") == newer
    directory.pop(older)  # not the newest: the newest stays
    assert directory.newest("cus_a") == newer
    directory.pop(newer)  # the newest: the subject's next event starts a new key
    assert directory.newest("cus_a") is None


def test_a_value_too_long_to_be_a_wrapped_key_is_held_as_none() -> None:
    directory = KeyDirectory()
    directory.put("k", "cus_1", b"x" * 70_000)
    assert directory.get("k") == ("cus_1", b"")


def test_keys_wrapped_by_the_current_master_key_or_another_come_back_whole() -> None:
    prefix = b"\x01" + b"P" * 8
    directory = KeyDirectory(prefix)
    wrapped = {
        "current": prefix + secrets.token_bytes(60),  # kept without its prefix
        "other master": b"\x01" + b"Q" * 8 + secrets.token_bytes(60),
        "current, odd length": prefix + secrets.token_bytes(61),
        "short": prefix[:5],
        "empty": b"",
    }
    for n, (name, value) in enumerate(wrapped.items()):
        directory.put(f"{n:024x}", f"cus_{name}", value)
    assert directory.get(f"{0:024x}") == ("cus_current", wrapped["current"])
    assert [(s, w) for _, s, w in directory.items()] == [
        (f"cus_{name}", value) for name, value in wrapped.items()
    ]
    assert directory._entries[0] == b"\x00" + wrapped["current"][9:] + b"cus_current"
