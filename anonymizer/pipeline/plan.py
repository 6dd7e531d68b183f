"""List and plan: find the images under the source, say why anything else is skipped, cut shards.

The plan is streamed into Parquet files in the run's staging folder (never a whole-dataset list in
memory) and marked complete last, so a resumed run re-uses exactly the same shards. Against a previous
release, unchanged objects (same key, size and version: S3 ETag or local mtime) are carried over, not
processed again, and keys that disappeared from the source are recorded as deleted.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from anonymizer.imageio import EXTENSIONS, UNSUPPORTED
from anonymizer.storage import Location, UnsafeKeyError, check_key

LISTING = pa.schema([("key", pa.string()), ("size", pa.int64()), ("version", pa.string()), ("shard", pa.int32())])
SKIPPED = pa.schema([("key", pa.string()), ("size", pa.int64()), ("reason", pa.string())])
CARRIED = pa.schema([("key", pa.string()), ("size", pa.int64()), ("version", pa.string())])
DELETED = pa.schema([("key", pa.string())])
_BATCH = 10_000


@dataclass
class Plan:
    shards: int = 0
    candidates: int = 0
    skipped: int = 0
    carried: int = 0
    deleted: int = 0
    previous_release: str | None = None  # the release unchanged objects are carried from (None: a full run)
    supersedes: str | None = None        # LATEST when the run was planned: the release it must replace
    binding: str | None = None           # the policy and model files the run is made under (run.run_binding)


def skip_reason(key: str) -> str | None:
    try:
        check_key(key)
    except UnsafeKeyError as exc:
        return str(exc)
    name = posixpath.basename(key)
    if name.startswith("."):
        return "hidden file"
    ext = posixpath.splitext(name)[1].lower()
    if ext in UNSUPPORTED:
        return UNSUPPORTED[ext]
    if ext not in EXTENSIONS:
        return f"not a supported image type ({ext or 'no extension'}; supported: {', '.join(sorted(set(EXTENSIONS)))})"
    return None


class _Writer:
    """Buffers rows and streams them into one Parquet file in the plan folder."""

    def __init__(self, plan_dir: Location, name: str, schema: pa.Schema) -> None:
        plan_dir.fs.create_dir(plan_dir.base, recursive=True)
        self._sink = plan_dir.fs.open_output_stream(plan_dir.path(name))
        self._writer = pq.ParquetWriter(self._sink, schema)
        self._schema, self._rows, self.count = schema, [], 0

    def add(self, **row) -> None:
        self._rows.append(row)
        self.count += 1
        if len(self._rows) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        self.flush()
        self._writer.close()
        self._sink.close()


def plan(source: Location, plan_dir: Location, shard_size: int, previous: pa.Table | None = None,
         previous_release: str | None = None, max_size: int | None = None, supersedes: str | None = None,
         binding: str | None = None) -> Plan:
    """`max_size`: objects the listing says are larger are skipped, never read (a read is bounded too)."""
    if not source.exists():
        raise FileNotFoundError(f"source {source.uri} does not exist")
    before = {}
    if previous is not None:
        before = dict(zip(previous.column("key").to_pylist(),
                          zip(previous.column("source_size").to_pylist(), previous.column("source_version").to_pylist())))
    writers = {name: _Writer(plan_dir, f"{name}.parquet", schema)
               for name, schema in (("listing", LISTING), ("skipped", SKIPPED), ("carried", CARRIED), ("deleted", DELETED))}
    in_shard = shard = 0
    for entry in source.list(refused=True):
        reason = entry.refused or skip_reason(entry.key)
        if not reason and max_size is not None and entry.size > max_size:
            reason = (f"refused from its listed size: {entry.size} bytes, over the {max_size} bytes output.max_pixels "
                      "allows; never read")
        if reason:
            writers["skipped"].add(key=entry.key, size=entry.size, reason=reason)
            continue
        old = before.pop(entry.key, None)
        if old == (entry.size, entry.version):
            writers["carried"].add(key=entry.key, size=entry.size, version=entry.version)
            continue
        if in_shard == shard_size:
            shard, in_shard = shard + 1, 0
        writers["listing"].add(key=entry.key, size=entry.size, version=entry.version, shard=shard)
        in_shard += 1
    for key in before:  # released before, gone from the source now
        writers["deleted"].add(key=key)
    for w in writers.values():
        w.close()
    result = Plan(shard + 1 if writers["listing"].count else 0, writers["listing"].count, writers["skipped"].count,
                  writers["carried"].count, writers["deleted"].count, previous_release, supersedes, binding)
    plan_dir.write_bytes("_SUCCESS", json.dumps(asdict(result)).encode())
    return result


def load_plan(plan_dir: Location) -> Plan | None:
    """The plan of an interrupted run, if its planning finished."""
    return Plan(**json.loads(plan_dir.read_bytes("_SUCCESS"))) if plan_dir.exists("_SUCCESS") else None


def iter_shards(plan_dir: Location) -> Iterator[tuple[int, list[str]]]:
    """(shard id, keys), read from the plan batch by batch."""
    current, keys = None, []
    for batch in pq.ParquetFile(plan_dir.fs.open_input_file(plan_dir.path("listing.parquet"))).iter_batches(columns=["key", "shard"]):
        for key, shard in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if shard != current and keys:
                yield current, keys
                keys = []
            current = shard
            keys.append(key)
    if keys:
        yield current, keys
