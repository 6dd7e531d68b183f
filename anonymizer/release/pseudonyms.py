"""Names a release publishes for its objects. Keys can identify people (LFW's keys are their names), so with
`output.pseudonymize_keys` every published name (output keys, manifest, report, Data Docs) is
HMAC-SHA256(secret, key), the extension kept. Only the holder of the secret can map a name back; the
mapping itself is the run's lineage.parquet in staging, for the operator, never in the release.

The secret: $ANONYMIZER_PSEUDONYM_KEY, or the file $ANONYMIZER_PSEUDONYM_KEY_FILE names. Keep it as long as
the releases: a run under another secret names every object differently and processes everything again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import posixpath
import re
from dataclasses import dataclass

from anonymizer.policy import Policy, PolicyError

ENV = "ANONYMIZER_PSEUDONYM_KEY"
ENV_FILE = "ANONYMIZER_PSEUDONYM_KEY_FILE"
MIN_SECRET_BYTES = 16
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")
_NAME_CHARS = 32  # hex digits of the HMAC kept: 128 bits, no collision in any dataset


def load_secret() -> bytes:
    if os.environ.get(ENV_FILE):
        try:
            secret = open(os.environ[ENV_FILE], "rb").read().strip()
        except OSError as exc:
            raise PolicyError(f"output.pseudonymize_keys: cannot read ${ENV_FILE} ({os.environ[ENV_FILE]}): "
                              f"{exc.strerror}") from None
    else:
        secret = os.environ.get(ENV, "").encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise PolicyError(f"output.pseudonymize_keys is on, but no secret of at least {MIN_SECRET_BYTES} bytes is "
                          f"given: set ${ENV} or ${ENV_FILE} (a file holding it)")
    return secret


@dataclass(frozen=True)
class Names:
    """Source key -> published name; the identity when pseudonymisation is off."""

    secret: bytes | None = None

    @classmethod
    def for_policy(cls, policy: Policy) -> "Names":
        return cls(load_secret() if policy.output.pseudonymize_keys else None)

    @property
    def pseudonymized(self) -> bool:
        return self.secret is not None

    @property
    def scheme(self) -> str:
        """What the manifest records: which names it holds, and under which secret (a fingerprint of it)."""
        if self.secret is None:
            return "source"
        return "hmac-sha256:" + hmac.new(self.secret, b"anonymizer key id", hashlib.sha256).hexdigest()[:16]

    def public(self, key: str) -> str:
        if self.secret is None:
            return key
        ext = posixpath.splitext(key)[1]
        digest = hmac.new(self.secret, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
        return digest[:_NAME_CHARS] + (ext.lower() if _EXTENSION.fullmatch(ext) else "")

    def redact(self, key: str, text: str | None) -> str | None:
        """A message about `key` (an error naming its path) with the key replaced by its published name."""
        if self.secret is None or not isinstance(text, str):
            return text
        return text.replace(key, self.public(key)).replace(repr(key)[1:-1], self.public(key))
