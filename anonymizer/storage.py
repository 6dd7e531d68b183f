"""One storage layer for every location (source, staging, release, quarantine): local folders and
s3://bucket/prefix, over pyarrow's filesystems, with boto3 for streamed, paginated S3 listings.

S3 settings come from the standard AWS chain (credentials, AWS_REGION) and AWS_ENDPOINT_URL(_S3) for
MinIO, Ceph or a test server. Keys are data, not paths: a key is a relative, '/'-separated name that
must stay inside its location.
"""

from __future__ import annotations

import os
import posixpath
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

S3_MAX_ATTEMPTS = 10  # throttling (503 SlowDown) and 5xx are retried with backoff, by pyarrow and botocore


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


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_filesystem() -> pafs.S3FileSystem:
    kwargs = {"region": _region(), "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS)}
    if _endpoint():
        kwargs["endpoint_override"] = _endpoint()
    return pafs.S3FileSystem(**kwargs)


def s3_client():
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=_endpoint(), region_name=_region(),
                        config=Config(retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "adaptive"}))


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    version: str  # S3 ETag or local mtime: changes when the object does


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

    def read_bytes(self, key: str) -> bytes:
        with self.fs.open_input_stream(self.path(key)) as f:
            return f.read()

    def write_bytes(self, key: str, data: bytes) -> None:
        """A reader never sees a half-written object: S3 PUTs are atomic; local writes go through a rename."""
        final = self.path(key)
        if not self.is_local:
            with self.fs.open_output_stream(final) as f:  # multipart above pyarrow's part size
                f.write(data)
            return
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)

    def copy_to(self, key: str, other: "Location", other_key: str) -> None:
        """Server-side copy when both sides are on one S3 endpoint; a stream copy otherwise."""
        if not self.is_local and not other.is_local:
            self.fs.copy_file(self.path(key), other.path(other_key))
        else:
            other.write_bytes(other_key, self.read_bytes(key))

    def exists(self, key: str = "") -> bool:
        target = self.path(key) if key else self.base
        return self.fs.get_file_info(target).type != pafs.FileType.NotFound

    def list(self) -> Iterator[Entry]:
        """Every object below this location, streamed page by page (never the whole listing in memory)."""
        if not self.is_local:
            yield from self._s3_pages()
            return
        if not self.exists():
            return
        for info in self.fs.get_file_info(pafs.FileSelector(self.base, recursive=True)):
            if info.type == pafs.FileType.File:
                yield Entry(posixpath.relpath(info.path, self.base), info.size, str(info.mtime_ns))

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
        return pq.read_table(self.path(key), filesystem=self.fs)

    def delete(self, key: str = "") -> None:
        if key:
            self.fs.delete_file(self.path(key))
        elif self.is_local and self.exists():
            self.fs.delete_dir(self.base)
        elif not self.is_local:
            self.fs.delete_dir_contents(self.base, missing_dir_ok=True)
