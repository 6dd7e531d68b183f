"""One storage layer for every location (source, staging, release, quarantine): local folders and
s3://bucket/prefix, over pyarrow's filesystems, with boto3 for streamed, paginated S3 listings.

S3 settings come from the standard AWS chain (credentials, AWS_REGION) and AWS_ENDPOINT_URL(_S3) for
MinIO, Ceph or a test server. Keys are data, not paths: a key is a relative, '/'-separated name that
must stay inside its location.
"""

from __future__ import annotations

import os
import posixpath
import stat
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

S3_MAX_ATTEMPTS = 10  # throttling (503 SlowDown) and 5xx are retried with backoff, by pyarrow and botocore
# A request that hangs (a stalled connection, a half-open socket) is abandoned after these many seconds and
# retried like any other transient failure. ANONYMIZER_S3_CONNECT_TIMEOUT / ANONYMIZER_S3_REQUEST_TIMEOUT
# override them; the driver's values travel to the workers inside the pickled filesystem.
S3_CONNECT_TIMEOUT = 10.0
S3_REQUEST_TIMEOUT = 60.0


class UnsafeKeyError(ValueError):
    pass


def check_key(key: str) -> str:
    """Refuse keys that could escape their location or be read two ways."""
    if not key or key.startswith("/") or "\\" in key:
        raise UnsafeKeyError(f"unsafe key {key!r}: must be a relative '/'-separated name")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeKeyError(f"unsafe key {key!r}: empty, '.' or '..' path segment")
    if any(unicodedata.category(c).startswith("C") for c in key):
        raise UnsafeKeyError(f"unsafe key {key!r}: control or invisible characters")
    if unicodedata.normalize("NFC", key) != key:
        raise UnsafeKeyError(f"unsafe key {key!r}: not in Unicode NFC form (two keys could name one object)")
    return key


def overlaps(a: "Location", b: "Location") -> bool:
    """Whether one location is the other or lies below it (local paths resolved; S3 on '/' boundaries)."""
    if a.is_local != b.is_local:
        return False
    x, y = (a.base.rstrip("/") + "/", b.base.rstrip("/") + "/")
    return x.startswith(y) or y.startswith(x)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


# Failures the AWS SDK does not retry by itself although they are transient: a connection dropped while a
# response is read, an S3 error body that poisons the SDK's fixed-size buffer for a small ranged read
# ("Failed to flush response stream"). Reads, writes (PUTs) and copies are idempotent: tried again here.
# (An S3 500 InternalError or 503 SlowDown was already retried by the SDK: not retried again here.)
_TRANSIENT = ("Failed to flush response stream", "AWS Error NETWORK_CONNECTION", "curlCode", "Connection reset")
APP_ATTEMPTS = 4


def _retrying(fn, *args):
    for attempt in range(APP_ATTEMPTS):
        try:
            return fn(*args)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or attempt == APP_ATTEMPTS - 1 or not any(t in str(exc) for t in _TRANSIENT):
                raise
            time.sleep(0.2 * 2 ** attempt)


def _timeouts() -> tuple[float, float]:
    return (float(os.environ.get("ANONYMIZER_S3_CONNECT_TIMEOUT") or S3_CONNECT_TIMEOUT),
            float(os.environ.get("ANONYMIZER_S3_REQUEST_TIMEOUT") or S3_REQUEST_TIMEOUT))


def s3_filesystem() -> pafs.S3FileSystem:
    connect, request = _timeouts()
    kwargs = {"region": _region(), "retry_strategy": pafs.AwsDefaultS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
              "connect_timeout": connect, "request_timeout": request}
    if _endpoint():
        kwargs["endpoint_override"] = _endpoint()
    return pafs.S3FileSystem(**kwargs)


def s3_client():
    import boto3
    from botocore.config import Config

    connect, request = _timeouts()
    return boto3.client("s3", endpoint_url=_endpoint(), region_name=_region(),
                        config=Config(retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "adaptive"},
                                      connect_timeout=connect, read_timeout=request))


_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()


def _client(fs: pafs.FileSystem):
    """A boto3 client with the settings of `fs` (an S3FileSystem, made where the Location was, possibly in
    another process: its endpoint and timeouts travel inside it, not in this process's environment); one per
    settings in this process (clients are thread-safe; making one is slow)."""
    try:
        kw = fs.__reduce__()[1][0]
    except Exception:  # noqa: BLE001 - settings not exposed: this process's environment
        kw = {}
    endpoint = kw.get("endpoint_override") or _endpoint()
    if endpoint and "://" not in endpoint:
        endpoint = f"{kw.get('scheme') or 'https'}://{endpoint}"
    connect, request = _timeouts()
    settings = (endpoint, kw.get("region") or _region(), kw.get("connect_timeout") or connect,
                kw.get("request_timeout") or request)
    with _CLIENTS_LOCK:
        if settings not in _CLIENTS:
            import boto3
            from botocore.config import Config

            _CLIENTS[settings] = boto3.session.Session().client(
                "s3", endpoint_url=settings[0], region_name=settings[1],
                config=Config(retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "adaptive"},
                              connect_timeout=settings[2], read_timeout=settings[3]))
        return _CLIENTS[settings]


class ObjectTooLargeError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    version: str  # S3 ETag or local mtime: changes when the object does
    refused: str | None = None  # set (listing with refused=True) for what is listed but must not be read


def _printable(name: str) -> str:
    """A local name that is not valid UTF-8, made printable (its bytes escaped) so that it can be reported."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Location:
    """A folder or bucket prefix; picklable, so Ray workers can take it."""

    fs: pafs.FileSystem
    base: str
    uri: str

    @classmethod
    def parse(cls, uri: str) -> "Location":
        if uri.startswith("s3://"):
            return cls(s3_filesystem(), uri[len("s3://"):].rstrip("/"), uri.rstrip("/"))
        if "://" in uri:
            raise ValueError(f"unsupported location {uri!r}: use a local path or s3://bucket/prefix")
        return cls(pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve()), uri.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> "Location":
        return Location(self.fs, posixpath.join(self.base, *parts), posixpath.join(self.uri, *parts))

    def path(self, key: str) -> str:
        return posixpath.join(self.base, check_key(key))

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; more than max_bytes is refused without holding them all in memory. Locally a
        symbolic link is never followed, and a path that resolves outside the location is refused."""
        path = self.path(key)
        if self.is_local:
            return self._read_local(path, max_bytes)
        data = _retrying(self._read_remote, path, max_bytes)
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLargeError(f"object larger than the limit of {max_bytes} bytes")
        return data

    def _read_remote(self, path: str, max_bytes: int | None) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read() if max_bytes is None else f.read(max_bytes + 1)

    def _read_local(self, path: str, max_bytes: int | None) -> bytes:
        return self._read_local_versioned(path, max_bytes)[0]

    def _read_local_versioned(self, path: str, max_bytes: int | None) -> tuple[bytes, str]:
        if os.path.realpath(path) != os.path.join(os.path.realpath(self.base), os.path.relpath(path, self.base)):
            raise UnsafeKeyError(f"{path!r} goes through a symbolic link: never followed")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeKeyError(f"{path!r} is not a regular file")
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLargeError(f"object larger than the limit of {max_bytes} bytes")
        return data, str(st.st_mtime_ns)

    def read_with_version(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """The object's bytes (as read_bytes) and the version of exactly those bytes: locally the mtime of the
        file that was read, on S3 the ETag of the one GET that returned them. An object replaced after it was
        listed is recorded as what was read, never with the listing's version."""
        path = self.path(key)
        if self.is_local:
            return self._read_local_versioned(path, max_bytes)
        from botocore.exceptions import BotoCoreError

        for attempt in range(APP_ATTEMPTS):
            try:
                return self._get_object(path, max_bytes)
            except BotoCoreError as exc:  # a connection dropped or stalled mid-body: the SDK does not retry those
                if attempt == APP_ATTEMPTS - 1:
                    raise OSError(f"{self.uri}/{key}: {type(exc).__name__}: {exc}") from exc
                time.sleep(0.2 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _get_object(self, path: str, max_bytes: int | None) -> tuple[bytes, str]:
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        try:
            got = _client(self.fs).get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"s3://{path}: no such object") from None
            raise
        body = got["Body"]
        try:
            if max_bytes is not None and got.get("ContentLength", 0) > max_bytes:
                raise ObjectTooLargeError(f"object of {got['ContentLength']} bytes is larger than the limit of "
                                          f"{max_bytes} bytes")
            data = body.read() if max_bytes is None else body.read(max_bytes + 1)
        finally:
            body.close()
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLargeError(f"object larger than the limit of {max_bytes} bytes")
        return data, got["ETag"].strip('"')

    def write_bytes(self, key: str, data: bytes) -> None:
        """A reader never sees a half-written object: S3 PUTs are atomic; local writes go through a rename."""
        final = self.path(key)
        if not self.is_local:
            _retrying(self._write_remote, final, data)
            return
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        # Short whatever the key: a name at the file system's limit (255 bytes) plus a suffix would not fit.
        tmp = posixpath.join(posixpath.dirname(final), f".tmp-{uuid.uuid4().hex[:16]}")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, final)
        except BaseException:
            try:  # a failed write (a full disk) leaves nothing behind to fill it further
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _write_remote(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:  # multipart above pyarrow's part size
            f.write(data)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """S3 only: the object's bytes and ETag (None when absent), for a conditional write after it."""
        bucket, _, path = self.path(key).partition("/")
        client = s3_client()
        try:
            got = client.get_object(Bucket=bucket, Key=path)
        except client.exceptions.NoSuchKey:
            return None
        return got["Body"].read(), got["ETag"]

    def write_conditional(self, key: str, data: bytes, etag: str | None) -> str | None:
        """S3 only: write the object if it is still the version `etag` names (If-Match), or, with etag None,
        if it does not exist (If-None-Match: *); the new ETag, or None when another writer got there first."""
        from botocore.exceptions import ClientError

        bucket, _, path = self.path(key).partition("/")
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            return s3_client().put_object(Bucket=bucket, Key=path, Body=data, **condition)["ETag"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (409, 412):
                return None
            raise

    def discard(self, key: str) -> None:
        """Delete one object. On S3 by a plain DeleteObject: pyarrow's delete_file would leave an empty folder
        marker for the parent behind, an object nobody wrote."""
        if self.is_local:
            self.delete(key)
            return
        bucket, _, path = self.path(key).partition("/")
        s3_client().delete_object(Bucket=bucket, Key=path)

    def copy_to(self, key: str, other: "Location", other_key: str) -> None:
        """Server-side copy when both sides are on one S3 endpoint; a stream copy otherwise."""
        if not self.is_local and not other.is_local:
            _retrying(self.fs.copy_file, self.path(key), other.path(other_key))
        else:
            other.write_bytes(other_key, self.read_bytes(key))

    def exists(self, key: str = "") -> bool:
        target = self.path(key) if key else self.base
        return self.fs.get_file_info(target).type != pafs.FileType.NotFound

    def list(self, refused: bool = False) -> Iterator[Entry]:
        """Every object below this location, streamed page by page (never the whole listing in memory).

        Locally only regular files are objects: symbolic links (to files or folders, inside the location or
        not) are never followed, and sockets, FIFOs and devices are never opened. With refused=True they
        are listed too, with the reason in Entry.refused, so that a plan can account for them."""
        if not self.is_local:
            yield from self._s3_pages()
            return
        if not self.exists():
            return
        yield from self._walk(self.base, refused)

    def _walk(self, folder: str, refused: bool) -> Iterator[Entry]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if refused:
                yield Entry(_printable(posixpath.relpath(folder, self.base)) + "/", 0, "",
                            f"folder cannot be listed: {exc.strerror}")
            return
        for e in entries:
            key = posixpath.relpath(e.path, self.base)
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                if refused:
                    yield Entry(_printable(key), 0, "", f"cannot stat: {exc.strerror}")
                continue
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk(e.path, refused)
                continue
            if stat.S_ISREG(st.st_mode):
                if _printable(key) != key:
                    if refused:
                        yield Entry(_printable(key), st.st_size, str(st.st_mtime_ns),
                                    "file name is not valid UTF-8: it cannot be a key")
                    continue
                yield Entry(key, st.st_size, str(st.st_mtime_ns))
            elif refused:
                yield Entry(_printable(key), 0, str(st.st_mtime_ns), self._why_not_a_file(e.path, st))

    def _why_not_a_file(self, path: str, st: os.stat_result) -> str:
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(path)
            base = os.path.realpath(self.base)
            where = "inside" if target == base or target.startswith(base + os.sep) else "outside"
            return f"symbolic link (pointing {where} the source): never followed"
        kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special file")
        return f"not a regular file ({kind}): never opened"

    def _s3_pages(self) -> Iterator[Entry]:
        bucket, _, prefix = self.base.partition("/")
        prefix = prefix + "/" if prefix else ""
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/") and obj["Size"] == 0:
                    continue  # a "folder" marker, not an object
                yield Entry(obj["Key"][len(prefix):], obj["Size"], obj["ETag"].strip('"'))

    def write_table(self, key: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(key, sink.getvalue().to_pybytes())

    def read_table(self, key: str) -> pa.Table:
        if self.is_local:
            return pq.read_table(self.path(key), filesystem=self.fs)
        return pq.read_table(pa.BufferReader(self.read_bytes(key)))  # one GET, retried as a whole

    def delete(self, key: str = "") -> None:
        if key:
            self.fs.delete_file(self.path(key))
        elif self.is_local and self.exists():
            self.fs.delete_dir(self.base)
        elif not self.is_local:
            self.fs.delete_dir_contents(self.base, missing_dir_ok=True)
