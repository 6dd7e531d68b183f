"""The identity linker's failures. They are vault errors (the linker's state is kept like the vault's
records: encrypted, under the user's key), so callers and the CLI report them the same way."""

from __future__ import annotations

from anonymizer.vault.errors import VaultError


class IdentityStateError(VaultError):
    """An identity state that cannot be used: not one, a newer format, or made for another recognizer."""


class WrongIdentityKeyError(IdentityStateError):
    """The identity key given is not the one the state was saved under."""


class TamperedIdentityStateError(IdentityStateError):
    """The state's bytes are not those that were saved under this key (the AES-GCM tag did not verify)."""
