"""The envelope of crypto-shredding: AES-GCM data keys, wrapped by a master key.

Every value written to the event log is sealed with a data key of its subject (the message
key: a customer, or an object's own id); the key id travels in the `entitled-key` header.
Data keys are kept wrapped (AES-GCM under the master key, the record key as associated data,
so a wrapped key cannot be moved to another subject) in a compacted topic (`entitled.keyring`).
Forgetting a subject deletes its data keys: its events stay in the log, unreadable for ever.

Pure: no I/O. Formats (all bytes):
- sealed value: nonce (12) + AES-GCM ciphertext and tag of the raw value;
- wrapped key: version (1) + master fingerprint (8) + nonce (12) + ciphertext and tag.
The fingerprint names which master key wrapped a data key, so several master keys can be
configured while rotating (`entitled keys rotate-master`), and a wrong one is named as such.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_HEADER",
    "CryptoError",
    "KeyCache",
    "MasterKeys",
    "WrongMasterKey",
    "key_id_of",
    "new_data_key",
    "new_key_material",
    "new_master_key",
    "open_value",
    "parse_master_keys",
    "seal_value",
]

KEY_HEADER = "entitled-key"  # the id of the data key a value is sealed with
_NONCE = 12
_WRAP_VERSION = b"\x01"
_FINGERPRINT = 8


class CryptoError(Exception):
    """A master key that cannot be used (missing, malformed) or a value that does not open."""


class WrongMasterKey(CryptoError):
    """A wrapped data key that no configured master key opens: a misconfiguration, never a
    reason to treat events as forgotten."""


def new_master_key() -> str:
    """A fresh master key as ENTITLED_MASTER_KEY takes it: 32 random bytes, URL-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def parse_master_keys(text: str | None) -> tuple[bytes, ...]:
    """ENTITLED_MASTER_KEY: one or more base64 keys of 32 bytes, comma-separated, the one to
    wrap with first (the others only unwrap, while rotating). Raises `CryptoError`, naming
    the variable and the position, never the value."""
    keys = []
    for n, part in enumerate((p.strip() for p in (text or "").split(",") if p.strip()), 1):
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise CryptoError(
                f"ENTITLED_MASTER_KEY: key {n} is not 32 bytes of base64"
                " (make one with `entitled keys new-master`)"
            )
        keys.append(raw)
    return tuple(keys)


def fingerprint(master: bytes) -> bytes:
    """Names a master key without revealing it."""
    return hashlib.sha256(b"entitled master key\x00" + master).digest()[:_FINGERPRINT]


class MasterKeys:
    """The configured master keys: the first wraps, any of them unwraps."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise CryptoError(
                "ENTITLED_MASTER_KEY is not set: it wraps the data keys of the log"
                " (make one with `entitled keys new-master`; `entitled dev` makes its own)"
            )
        self._aead = {fingerprint(k): AESGCM(k) for k in keys}
        self.current = fingerprint(keys[0])

    def wrap(self, data_key: bytes, record_key: bytes, nonce: bytes | None = None) -> bytes:
        """`data_key` wrapped for the record `record_key`; `nonce`: 12 random bytes the
        caller drew already (`new_key_material`), else drawn here."""
        nonce = os.urandom(_NONCE) if nonce is None else nonce
        sealed = self._aead[self.current].encrypt(nonce, data_key, record_key)
        return _WRAP_VERSION + self.current + nonce + sealed

    def unwrap(self, wrapped: bytes, record_key: bytes) -> bytes:
        """The data key; `WrongMasterKey` when no configured master key opens it."""
        if wrapped[:1] != _WRAP_VERSION or len(wrapped) < 1 + _FINGERPRINT + _NONCE + 16:
            raise WrongMasterKey(f"key record {record_key!r} is not a wrapped key")
        print_ = wrapped[1 : 1 + _FINGERPRINT]
        aead = self._aead.get(print_)
        if aead is None:
            known = ", ".join(sorted(k.hex() for k in self._aead))
            raise WrongMasterKey(
                f"key record {record_key!r} is wrapped by master key {print_.hex()}, which"
                f" ENTITLED_MASTER_KEY does not hold (it holds {known}): wrong master key"
            )
        nonce = wrapped[1 + _FINGERPRINT : 1 + _FINGERPRINT + _NONCE]
        try:
            return aead.decrypt(nonce, wrapped[1 + _FINGERPRINT + _NONCE :], record_key)
        except InvalidTag:
            raise WrongMasterKey(
                f"key record {record_key!r} does not unwrap: wrong master key"
            ) from None

    @property
    def prefix(self) -> bytes:
        """What every key wrapped by the current master key begins with."""
        return _WRAP_VERSION + self.current

    def is_current(self, wrapped: bytes) -> bool:
        """True when `wrapped` is wrapped by the first (current) master key."""
        return wrapped[1 : 1 + _FINGERPRINT] == self.current


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


KEY_ID_BYTES = 12  # a key id is their hex (24 characters)


def new_key_material() -> tuple[str, bytes, bytes]:
    """A new data key's id, the key, and a nonce to wrap it with, from one read of the OS's
    random source: on a busy machine each call into the OS or OpenSSL costs a brand-new
    subject's webhook several microseconds (its code and data are out of the CPU's caches
    by the time the next webhook comes), and a key took three."""
    material = os.urandom(KEY_ID_BYTES + 32 + _NONCE)
    return material[:KEY_ID_BYTES].hex(), material[KEY_ID_BYTES:-_NONCE], material[-_NONCE:]


def seal_value(aead: AESGCM, raw: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + aead.encrypt(nonce, raw, None)


def open_value(aead: AESGCM, sealed: bytes) -> bytes:
    """The raw value; `CryptoError` when it does not open with this key (tampered)."""
    try:
        return aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], None)
    except InvalidTag:
        raise CryptoError("a sealed value does not open with its key") from None


def key_id_of(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> str | None:
    """The `entitled-key` header (None: the value is not sealed, e.g. a record written before
    encryption, read as it is)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == KEY_HEADER:
            return value.decode("ascii", "replace") if value else None
    return None


class KeyCache:
    """The unwrapped data keys most used lately (AES-GCM contexts), at most `size` of them:
    a key is unwrapped again on a miss, which costs one AES-GCM decryption."""

    def __init__(self, size: int) -> None:
        self.size = max(size, 1)
        self._keys: OrderedDict[str, AESGCM] = OrderedDict()

    def get(self, key_id: str) -> AESGCM | None:
        aead = self._keys.get(key_id)
        if aead is not None:
            self._keys.move_to_end(key_id)
        return aead

    def put(self, key_id: str, data_key: bytes) -> AESGCM:
        aead = AESGCM(data_key)
        self._keys[key_id] = aead
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return aead

    def drop(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def __len__(self) -> int:
        return len(self._keys)
