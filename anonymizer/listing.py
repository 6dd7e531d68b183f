"""List and plan: find the images under the source, say why anything else is skipped, cut shards."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import pyarrow as pa

from anonymizer.imageio import EXTENSIONS
from anonymizer.storage import Location, UnsafeKeyError, check_key


@dataclass
class Plan:
    shards: list[list[str]] = field(default_factory=list)
    candidates: int = 0
    skipped: list[dict] = field(default_factory=list)  # key, size, reason


def skip_reason(key: str) -> str | None:
    try:
        check_key(key)
    except UnsafeKeyError as exc:
        return str(exc)
    name = posixpath.basename(key)
    if name.startswith("."):
        return "hidden file"
    ext = posixpath.splitext(name)[1].lower()
    if ext not in EXTENSIONS:
        return f"not a supported image type ({ext or 'no extension'}; supported: {', '.join(sorted(set(EXTENSIONS)))})"
    return None


def plan(source: Location, shard_size: int) -> Plan:
    if not source.exists():
        raise FileNotFoundError(f"source {source.uri} does not exist")
    result = Plan()
    current: list[str] = []
    for key, size in sorted(source.list()):
        reason = skip_reason(key)
        if reason:
            result.skipped.append({"key": key, "size": size, "reason": reason})
            continue
        result.candidates += 1
        current.append(key)
        if len(current) == shard_size:
            result.shards.append(current)
            current = []
    if current:
        result.shards.append(current)
    return result


def plan_tables(p: Plan) -> tuple[pa.Table, pa.Table]:
    listing = pa.table({
        "key": [k for s in p.shards for k in s],
        "shard": [i for i, s in enumerate(p.shards) for _ in s],
    })
    skipped = pa.Table.from_pylist(p.skipped, schema=pa.schema([("key", pa.string()), ("size", pa.int64()), ("reason", pa.string())]))
    return listing, skipped
