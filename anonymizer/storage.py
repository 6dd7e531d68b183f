"""One storage layer for every location (source, staging, release, quarantine), over pyarrow's filesystems.

Keys are data, not paths: a key is a relative, '/'-separated name that must stay inside its location.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
import unicodedata
import uuid
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


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


@dataclass(frozen=True)
class Location:
    """A folder or bucket prefix; picklable, so Ray workers can take it."""

    fs: pafs.FileSystem
    base: str
    uri: str

    @classmethod
    def parse(cls, uri: str) -> "Location":
        if "://" in uri:
            fs, path = pafs.FileSystem.from_uri(uri)
        else:
            fs, path = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
        return cls(fs, path.rstrip("/"), uri)

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
        """Write to a temporary name and rename: a reader never sees a half-written object."""
        final = self.path(key)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        if not self.is_local:
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)

    def exists(self, key: str = "") -> bool:
        target = self.path(key) if key else self.base
        return self.fs.get_file_info(target).type != pafs.FileType.NotFound

    def list(self) -> Iterator[tuple[str, int]]:
        """(key, size) of every file below this location, streamed."""
        if not self.exists():
            return
        selector = pafs.FileSelector(self.base, recursive=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                yield posixpath.relpath(info.path, self.base), info.size

    def write_table(self, key: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(key, sink.getvalue().to_pybytes())

    def read_table(self, key: str) -> pa.Table:
        return pq.read_table(self.path(key), filesystem=self.fs)

    def delete(self, key: str = "") -> None:
        if key:
            self.fs.delete_file(self.path(key))
        elif self.exists():
            self.fs.delete_dir(self.base)
