"""The vault's failures, each a distinct type so a caller (the CLI, the pipeline) can tell them apart."""

from __future__ import annotations


class VaultError(RuntimeError):
    """The vault cannot do what was asked; the message says which run, image or key and why."""


class KeySpecError(ValueError):
    """A key-encryption key specification (file:PATH, env:VAR, kms:KEY_ID) that cannot be used."""


class WrongKeyError(VaultError):
    """The key-encryption key given is not the one that wrapped the run's data key."""


class TamperedRecordError(VaultError):
    """A record, or the set of records, is not what was committed (an AES-GCM tag did not verify)."""


class ReleaseMismatchError(VaultError):
    """The release's bytes or manifest are not the outputs the vault's records were made for."""


class VaultDestroyedError(VaultError):
    """The run's wrapped data key was deleted: its records can never be decrypted again."""


class VaultLocationError(ValueError):
    """A vault location that would be published with the release (inside DEST), or overlaps it."""
