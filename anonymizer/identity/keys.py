"""The identity key: one secret per user (or per dataset) from which everything keyed is derived.

The key is 32 random bytes from the same places as the vault's key-encryption keys (`file:PATH`, raw or
base64; `env:VAR`, base64; `anonymizer vault keygen` makes a file). It is never used directly: HKDF-SHA256
derives one sub-key per purpose, so that the state's encryption key, the virtual-identity MAC key and the
key's public fingerprint cannot be computed from one another. KMS keys are refused: a MAC needs the key's
bytes, and a KMS key never leaves KMS.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from anonymizer.vault.errors import KeySpecError
from anonymizer.vault.keys import KEY_BYTES, key_provider_from

VIRTUAL_IDENTITY_INFO = b"anonymizer identity: virtual identity v1"
STATE_KEY_INFO = b"anonymizer identity: state encryption v1"
KEY_ID_INFO = b"anonymizer identity: key id v1"


def identity_key_from(spec: str) -> bytes:
    """The 32-byte identity key named by `file:PATH` or `env:VAR` (the vault's key spec syntax)."""
    provider = key_provider_from(spec)
    if provider.kind == "kms":
        raise KeySpecError(f"identity key {spec!r}: a KMS key cannot key a MAC (its bytes never leave KMS); "
                           "use file:PATH or env:VAR")
    return provider._kek()  # the vault's local key reader: same formats, same error messages


def check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise KeySpecError(f"identity key: expected {KEY_BYTES} bytes, got {size}")
    return bytes(key)


def derive(key: bytes, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    """A sub-key of the identity key for one purpose (`info`), HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(check_key(key))


def key_id(key: bytes) -> str:
    """Names a key without revealing it: a wrong key is reported as such, apart from a damaged state."""
    return derive(key, KEY_ID_INFO, length=8).hex()


def virtual_identity(key: bytes, person_id: str, n_identities: int) -> int:
    """The index, in [0, n_identities), of the virtual identity shown for `person_id` under `key`.

    HMAC-SHA256 (keyed by a sub-key of `key`) of the person id, its first 8 bytes as an integer modulo
    `n_identities` (bias below 2^-40 for any bank size). Another key gives an unrelated mapping; two people
    get the same virtual identity by chance with probability 1/n_identities.
    """
    if isinstance(n_identities, bool) or not isinstance(n_identities, int) or n_identities < 1:
        raise ValueError(f"virtual_identity: n_identities must be a positive integer, got {n_identities!r}")
    if not isinstance(person_id, str) or not person_id:
        raise ValueError(f"virtual_identity: person_id must be a non-empty string, got {person_id!r}")
    mac = hmac.new(derive(key, VIRTUAL_IDENTITY_INFO), person_id.encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") % n_identities
