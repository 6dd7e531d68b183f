"""The recovery vault: the original pixels of every anonymized face region, encrypted, kept apart from the
release, so that a data controller holding the key can restore the originals, or destroy the key and make
the anonymization permanent.

Each run gets a random AES-256 data key; its records (one per face region: window box, image key, face
index, released output's sha256, the window's original pixels) are sealed with AES-256-GCM under it, and
the data key is kept only wrapped by a key-encryption key (a key file, an environment variable, or AWS
KMS). Deleting the wrapped key (`destroy`) crypto-shreds the run. While it exists, the release is
pseudonymised, not anonymous: `vault_status` says which, for the report.

    provider = key_provider_from("kms:alias/anonymizer")      # or file:PATH, env:VAR
    writer = VaultWriter("s3://vault/prefix", run_id, provider)
    writer.add(image_key, face_index, (x0, y0, w, h), source_rgb[y0:y0+h, x0:x0+w], output_sha256)
    writer.stage("shard-00012")                               # per shard: re-staging on resume replaces it
    writer.commit()                                           # once, at the end; again: a no-op
    recover("s3://rel/releases/<run_id>", "s3://vault/prefix", provider, "/secure/originals")
    destroy("s3://vault/prefix", run_id)
"""

from anonymizer.vault.errors import (KeySpecError, ReleaseMismatchError, TamperedRecordError, VaultDestroyedError,
                                     VaultError, VaultLocationError, WrongKeyError)
from anonymizer.vault.keys import EnvKey, FileKey, KeyProvider, KmsKey, key_provider_from, new_key_file
from anonymizer.vault.records import Box
from anonymizer.vault.recover import RecoverResult, recover
from anonymizer.vault.vault import (CommitInfo, RunVault, Status, VaultWriter, check_vault_location, destroy,
                                    open_run, runs, vault_status)

__all__ = [
    "Box", "CommitInfo", "EnvKey", "FileKey", "KeyProvider", "KeySpecError", "KmsKey", "RecoverResult",
    "ReleaseMismatchError", "RunVault", "Status", "TamperedRecordError", "VaultDestroyedError", "VaultError",
    "VaultLocationError", "VaultWriter", "WrongKeyError", "check_vault_location", "destroy", "key_provider_from",
    "new_key_file", "open_run", "recover", "runs", "vault_status",
]
