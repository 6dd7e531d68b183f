"""Key-encryption keys (KEKs): they wrap each run's random data key and never touch a record.

A KEK comes from one of three places, named by a spec string (`key_provider_from`):

- `file:PATH`  a file holding 32 random bytes, raw or base64 (`new_key_file` makes one, mode 0600);
- `env:VAR`    an environment variable holding 32 bytes, base64;
- `kms:KEY_ID` an AWS KMS key (id, ARN or alias): KMS encrypts and decrypts the data key, the KEK never
               leaves KMS. AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL point it at another endpoint.

Local KEKs wrap with AES key wrap (RFC 3394, `cryptography`'s keywrap): its integrity check makes a wrong
KEK fail loudly instead of yielding a wrong data key. KMS binds the wrap to the run through its encryption
context. Providers hold the spec, not the secret (it is read at each use), so they pickle to workers
without carrying key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Mapping, Protocol, runtime_checkable

from cryptography.hazmat.primitives import keywrap

from anonymizer.vault.errors import KeySpecError, VaultError, WrongKeyError

KEY_BYTES = 32  # AES-256


@runtime_checkable
class KeyProvider(Protocol):
    kind: str  # "file" | "env" | "kms": stored in key.json, so a mismatch is reported by name

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> dict:
        """The data key encrypted under the KEK, as JSON-able fields (never the plain key)."""

    def unwrap(self, wrapped: Mapping, context: Mapping[str, str]) -> bytes:
        """The data key back; WrongKeyError when this KEK did not wrap it."""


def fingerprint(kek: bytes) -> str:
    """Names a local KEK without revealing it, so a wrong key is reported as such before any unwrap."""
    return hashlib.sha256(b"anonymizer-vault-kek\0" + kek).hexdigest()[:16]


def _b64_key(text: str | bytes, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeySpecError(f"{where}: not base64 (expected {KEY_BYTES} random bytes, base64-encoded)") from None
    if len(key) != KEY_BYTES:
        raise KeySpecError(f"{where}: holds {len(key)} bytes once base64-decoded; a KEK is {KEY_BYTES} bytes")
    return key


class _LocalKek:
    """AES key wrap under a 32-byte KEK held by the operator."""

    kind = "local"

    def _kek(self) -> bytes:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> dict:
        kek = self._kek()
        return {"kind": self.kind, "kek_id": fingerprint(kek), "alg": "AES-256-KW",
                "wrapped": base64.b64encode(keywrap.aes_key_wrap(kek, data_key)).decode()}

    def unwrap(self, wrapped: Mapping, context: Mapping[str, str]) -> bytes:
        kek = self._kek()
        run = context.get("run_id", "?")
        if wrapped.get("kind") != self.kind:
            raise WrongKeyError(f"run {run}: its data key was wrapped by a {wrapped.get('kind')} KEK "
                                f"({wrapped.get('kek_id')}), not by {self.describe()}")
        if wrapped.get("kek_id") != fingerprint(kek):
            raise WrongKeyError(f"run {run}: wrong key: {self.describe()} is KEK {fingerprint(kek)}, but the run's "
                                f"data key was wrapped by KEK {wrapped.get('kek_id')}")
        try:
            return keywrap.aes_key_unwrap(kek, base64.b64decode(wrapped["wrapped"]))
        except keywrap.InvalidUnwrap:
            raise WrongKeyError(f"run {run}: {self.describe()} does not unwrap the run's data key (wrong key, or "
                                "key.json was altered)") from None


class FileKey(_LocalKek):
    kind = "file"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()

    def describe(self) -> str:
        return f"key file {self.path}"

    def _kek(self) -> bytes:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise KeySpecError(f"key file {self.path} does not exist") from None
        except OSError as exc:
            raise KeySpecError(f"key file {self.path} cannot be read: {exc.strerror}") from None
        return data if len(data) == KEY_BYTES else _b64_key(data, f"key file {self.path}")

    def __repr__(self) -> str:
        return f"FileKey({str(self.path)!r})"


class EnvKey(_LocalKek):
    kind = "env"

    def __init__(self, var: str) -> None:
        if not var:
            raise KeySpecError("env: needs a variable name (env:VAR)")
        self.var = var

    def describe(self) -> str:
        return f"environment variable {self.var}"

    def _kek(self) -> bytes:
        value = os.environ.get(self.var)
        if not value:
            raise KeySpecError(f"environment variable {self.var} is not set (it must hold a base64 KEK)")
        return _b64_key(value, f"environment variable {self.var}")

    def __repr__(self) -> str:
        return f"EnvKey({self.var!r})"


def _kms_client():
    import boto3
    from botocore.config import Config

    from anonymizer.storage import S3_MAX_ATTEMPTS, _region, _timeouts

    connect, request = _timeouts()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_KMS") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("kms", endpoint_url=endpoint, region_name=_region(),
                        config=Config(retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "adaptive"},
                                      connect_timeout=connect, read_timeout=request))


_KMS_WRONG_KEY = {"IncorrectKeyException", "InvalidCiphertextException"}


class KmsKey:
    """AWS KMS Encrypt/Decrypt of the data key, with the run id as encryption context. Deleting (or
    disabling) the KMS key is a second way to shred every run it wrapped."""

    kind = "kms"

    def __init__(self, key_id: str) -> None:
        if not key_id:
            raise KeySpecError("kms: needs a key id, ARN or alias (kms:KEY_ID)")
        self.key_id = key_id
        self._client = None

    def __getstate__(self) -> dict:
        return {"key_id": self.key_id, "_client": None}  # a boto3 client does not pickle

    def client(self):
        if self._client is None:
            self._client = _kms_client()
        return self._client

    def _call(self, op: str, run: str, **kwargs) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client(), op)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            msg = exc.response.get("Error", {}).get("Message", "")
            if op == "decrypt" and code in _KMS_WRONG_KEY:
                raise WrongKeyError(f"run {run}: KMS key {self.key_id} does not decrypt the run's data key "
                                    f"(wrong key, or key.json was altered): {code}") from None
            if op == "decrypt" and code == "AccessDeniedException":
                raise WrongKeyError(f"run {run}: KMS refused to decrypt the run's data key with key {self.key_id}: "
                                    "not the key that wrapped it, or no kms:Decrypt permission on it") from None
            raise VaultError(f"run {run}: KMS {op} with key {self.key_id} failed: {code}: {msg}") from None
        except BotoCoreError as exc:
            raise VaultError(f"run {run}: KMS {op} with key {self.key_id} failed: {exc}") from None

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> dict:
        run = context.get("run_id", "?")
        out = self._call("encrypt", run, KeyId=self.key_id, Plaintext=data_key, EncryptionContext=dict(context))
        return {"kind": self.kind, "kek_id": out["KeyId"], "alg": "aws-kms",
                "wrapped": base64.b64encode(out["CiphertextBlob"]).decode()}

    def unwrap(self, wrapped: Mapping, context: Mapping[str, str]) -> bytes:
        run = context.get("run_id", "?")
        if wrapped.get("kind") != self.kind:
            raise WrongKeyError(f"run {run}: its data key was wrapped by a {wrapped.get('kind')} KEK "
                                f"({wrapped.get('kek_id')}), not by KMS key {self.key_id}")
        out = self._call("decrypt", run, KeyId=self.key_id, EncryptionContext=dict(context),
                         CiphertextBlob=base64.b64decode(wrapped["wrapped"]))
        return out["Plaintext"]

    def __repr__(self) -> str:
        return f"KmsKey({self.key_id!r})"


def key_provider_from(spec: str) -> KeyProvider:
    """`file:PATH`, `env:VAR` or `kms:KEY_ID` (a KMS ARN keeps its own colons)."""
    kind, sep, rest = (spec or "").partition(":")
    if not sep:
        raise KeySpecError(f"key spec {spec!r}: use file:PATH, env:VAR or kms:KEY_ID")
    if kind == "file":
        if not rest:
            raise KeySpecError("file: needs a path (file:PATH)")
        return FileKey(rest)
    if kind == "env":
        return EnvKey(rest)
    if kind == "kms":
        return KmsKey(rest)
    raise KeySpecError(f"key spec {spec!r}: unknown kind {kind!r}; use file:PATH, env:VAR or kms:KEY_ID")


def new_key_file(path: str | os.PathLike) -> Path:
    """A fresh random KEK, base64, readable by its owner only; an existing file is never overwritten."""
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeySpecError(f"key file {path} already exists: not overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(os.urandom(KEY_BYTES)) + b"\n")
    return path
