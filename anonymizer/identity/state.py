"""The linker's state at rest: one object, AES-256-GCM under a key derived from the identity key.

Layout: MAGIC, a 4-byte big-endian header length, a JSON header in the clear (format version, cipher,
HKDF salt, GCM nonce, the identity key's fingerprint), then the ciphertext with its 16-byte tag. The
header is the GCM associated data, so neither part can be altered unnoticed. Each save draws a fresh salt
(hence a fresh data key) and nonce. The plaintext exists only in memory.
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from anonymizer.identity.errors import IdentityStateError, TamperedIdentityStateError, WrongIdentityKeyError
from anonymizer.identity.keys import STATE_KEY_INFO, derive, key_id

MAGIC = b"ANONYMIZER-IDENTITY-STATE\n"
FORMAT_VERSION = 1
MAX_HEADER = 4096


def seal(plaintext: bytes, key: bytes) -> bytes:
    salt, nonce = os.urandom(16), os.urandom(12)
    header = json.dumps({"version": FORMAT_VERSION, "cipher": "AES-256-GCM", "kdf": "HKDF-SHA256",
                         "key_id": key_id(key), "salt": base64.b64encode(salt).decode(),
                         "nonce": base64.b64encode(nonce).decode()}, sort_keys=True).encode()
    aad = MAGIC + len(header).to_bytes(4, "big") + header
    return aad + AESGCM(derive(key, STATE_KEY_INFO, salt=salt)).encrypt(nonce, plaintext, aad)


def unseal(blob: bytes, key: bytes, where: str) -> bytes:
    """The plaintext; IdentityStateError (WrongIdentityKeyError, TamperedIdentityStateError) naming `where`."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise IdentityStateError(f"{where}: not an identity state (no {MAGIC.strip().decode()} header)")
    n = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 4], "big")
    end = len(MAGIC) + 4 + n
    if n > MAX_HEADER or end > len(blob):
        raise IdentityStateError(f"{where}: damaged identity state (header length {n})")
    try:
        header = json.loads(blob[len(MAGIC) + 4:end])
        version, salt, nonce = header["version"], base64.b64decode(header["salt"]), base64.b64decode(header["nonce"])
    except (ValueError, KeyError, TypeError):
        raise IdentityStateError(f"{where}: damaged identity state (unreadable header)") from None
    if version != FORMAT_VERSION:
        raise IdentityStateError(f"{where}: identity state format {version!r}; this version reads {FORMAT_VERSION}")
    given = key_id(key)
    if header.get("key_id") != given:
        raise WrongIdentityKeyError(f"{where}: saved under identity key {header.get('key_id')}, but the key given "
                                    f"is {given}: wrong identity key")
    try:
        return AESGCM(derive(key, STATE_KEY_INFO, salt=salt)).decrypt(nonce, blob[end:], blob[:end])
    except (InvalidTag, ValueError):
        raise TamperedIdentityStateError(f"{where}: the identity state does not verify under key {given} "
                                         "(altered or truncated since it was saved)") from None
