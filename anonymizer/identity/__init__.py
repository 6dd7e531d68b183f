"""Keyed pseudonymisation: the same person gets the same virtual identity in every image, across runs.

    key = identity_key_from("file:/secure/identity.key")          # or env:VAR (32 bytes, base64)
    linker = Linker.open("s3://vault/identities", key, MEASURED_THRESHOLDS["mobilefacenet"], "mobilefacenet")
    ids = linker.add(embeddings)                                  # faces in the pipeline's sorted order
    bank_index = [virtual_identity(key, p, n_identities=len(bank)) for p in ids]
    linker.save("s3://vault/identities", key)                     # AES-256-GCM; new faces join next run

Real faces' embeddings (the linker's centroids) exist in plaintext only in memory: at rest they are
sealed under a key derived from the identity key, and a Linker refuses to be pickled. Another key gives
other virtual identities and cannot open the state.
"""

from anonymizer.identity.errors import IdentityStateError, TamperedIdentityStateError, WrongIdentityKeyError
from anonymizer.identity.keys import identity_key_from, key_id, virtual_identity
from anonymizer.identity.linker import MEASURED_THRESHOLDS, STATE_NAME, Linker

__all__ = ["IdentityStateError", "Linker", "MEASURED_THRESHOLDS", "STATE_NAME", "TamperedIdentityStateError",
           "WrongIdentityKeyError", "identity_key_from", "key_id", "virtual_identity"]
