"""The keyring's directory: every live data key of the keys topic, wrapped, by key id.

Every process holds the whole directory (`entitled.keyring`): a reader of a log of 229,000
subjects holds 229,000 entries, a million at 1M subjects. So an entry is kept small:
- one bytes object per key: the wrapped key and the subject (UTF-8), instead of a tuple of
  a str and a bytes (docs/erasure.md "What the keys cost"). A wrapped key begins with the
  wrap format's version and the fingerprint of the master key that wrapped it
  (`entitled.crypto`): for those wrapped by the current master key (all of them, but while
  rotating) that prefix is not repeated in every entry: a flag byte 0, then the rest (60
  bytes); any other value: a flag byte 1, its length (2 bytes), then it whole;
- the key id as an int when it is as the keyring makes them (24 lowercase hex digits: an
  int of 40 bytes, the str 73), any other id (an older or hand-made one) as its str;
- the subject -> newest key index (which key a writer seals with) only once something
  seals: readers never do.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = ["KeyDirectory"]

_ID_DIGITS = 24  # the hex digits of a key id the keyring makes (`new_key_material`)
_made_id = re.compile(f"[0-9a-f]{{{_ID_DIGITS}}}").fullmatch
_MAX_WRAPPED = 0xFFFF  # the length prefix's range; a larger value is no wrapped key
_REST = 12 + 32 + 16  # a wrapped 32-byte key after its prefix: nonce, ciphertext, tag


class KeyDirectory:
    """Key id -> (subject, wrapped key) of every live key, and each subject's newest key."""

    __slots__ = ("_entries", "_newest", "_prefix")

    def __init__(self, prefix: bytes = b"") -> None:
        """`prefix`: what every key wrapped by the current master key begins with (format
        version and fingerprint), kept once here rather than in every entry."""
        self._prefix = prefix
        self._entries: dict[int | str, bytes] = {}
        # subject -> the key id its writer seals with; None until the first `newest`
        self._newest: dict[str, str] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key_id: str) -> bool:
        return _slot(key_id) in self._entries

    def get(self, key_id: str) -> tuple[str, bytes] | None:
        """(subject, wrapped key) of `key_id`; None when it is not live."""
        entry = self._entries.get(_slot(key_id))
        return None if entry is None else self._split(entry)

    def sealed(self, key_id: str) -> tuple[bytes, bytes] | None:
        """The wrapped key of `key_id` and its record key (`<subject>/<key id>`, what it is
        wrapped for): what unwrapping it takes, without decoding the subject; None when it
        is not live."""
        entry = self._entries.get(_slot(key_id))
        if entry is None:
            return None
        if entry[0] == 0:
            wrapped, subject = self._prefix + entry[1 : 1 + _REST], entry[1 + _REST :]
        else:
            size = int.from_bytes(entry[1:3], "big")
            wrapped, subject = entry[3 : 3 + size], entry[3 + size :]
        return wrapped, subject + b"/" + key_id.encode("utf-8", "replace")

    def put(self, key_id: str, subject: str, wrapped: bytes, *, newest: bool = True) -> None:
        """Hold `key_id`; with `newest`, as the key `subject`'s next events are sealed with."""
        prefix = self._prefix
        if prefix and len(wrapped) == len(prefix) + _REST and wrapped.startswith(prefix):
            head = b"\x00" + wrapped[len(prefix) :]
        else:
            if len(wrapped) > _MAX_WRAPPED:
                wrapped = b""  # unwraps as what it is: no wrapped key (`WrongMasterKey`)
            head = b"\x01" + len(wrapped).to_bytes(2, "big") + wrapped
        self._entries[_slot(key_id)] = head + subject.encode("utf-8", "replace")
        if newest and self._newest is not None:
            self._newest[subject] = key_id

    def pop(self, key_id: str) -> tuple[str, bytes] | None:
        """Forget `key_id` (its subject's next event then starts a new key if it was the
        newest); what it held, None when it was not live."""
        entry = self._entries.pop(_slot(key_id), None)
        if entry is None:
            return None
        subject, wrapped = self._split(entry)
        if self._newest is not None and self._newest.get(subject) == key_id:
            del self._newest[subject]
        return subject, wrapped

    def newest(self, subject: str) -> str | None:
        """The key id `subject`'s events are sealed with (the latest one held); the index
        is made at the first call (readers never make it)."""
        if self._newest is None:
            self.index_newest()
            assert self._newest is not None
        return self._newest.get(subject)

    def index_newest(self) -> None:
        """Make the subject -> newest key index now (a writer, at start: about 3 us a key,
        which the first event sealed would wait for otherwise)."""
        if self._newest is None:
            self._newest = {subject: key_id for key_id, subject, _ in self.items()}

    def _split(self, entry: bytes) -> tuple[str, bytes]:
        """(subject, wrapped key) of an entry."""
        if entry[0] == 0:
            return entry[1 + _REST :].decode("utf-8", "replace"), self._prefix + entry[
                1 : 1 + _REST
            ]
        size = int.from_bytes(entry[1:3], "big")
        return entry[3 + size :].decode("utf-8", "replace"), entry[3 : 3 + size]

    def items(self) -> Iterator[tuple[str, str, bytes]]:
        """(key id, subject, wrapped key) of every live key, in the order they came."""
        for slot, entry in self._entries.items():
            subject, wrapped = self._split(entry)
            yield (f"{slot:0{_ID_DIGITS}x}" if isinstance(slot, int) else slot), subject, wrapped


def _slot(key_id: str) -> int | str:
    """The directory's key for `key_id`: an int for an id of 24 lowercase hex digits (it
    formats back to the same id), else the id itself."""
    return int(key_id, 16) if _made_id(key_id) is not None else key_id
