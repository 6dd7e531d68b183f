"""The vault's layout, its writer, and the run-level operations (status, destroy, the location guard).

At a vault LOCATION (local folder or s3://bucket/prefix, through anonymizer.storage.Location):

    runs/<run_id>/key.json          the run's data key, wrapped by the KEK (kind and id named; never plain)
    runs/<run_id>/staged/<unit>.parquet   records staged by a shard (or image) while the run works
    runs/<run_id>/records.parquet   every record of the run, written once at commit
    runs/<run_id>/_COMMITTED        the commit point: record count and the set's seal
    runs/<run_id>/DESTROYED         tombstone left by destroy() in place of key.json
    identities/identities.state     a keyed run's people (anonymizer.pipeline.link), sealed under the identity key

One Parquet per run rather than one object per image: a run's vault is written exactly once (one object
and its marker, whatever the number of images), it is read back with one GET, and destroying a run is one
delete. Staging per unit is what makes a kill-and-resume safe: a unit that is produced again overwrites its
own staged object, and commit keeps one record per (image, face) in any case.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from anonymizer.storage import Location, check_key, s3_client
from anonymizer.vault.errors import VaultDestroyedError, VaultError, VaultLocationError
from anonymizer.vault.keys import KeyProvider
from anonymizer.vault.records import FORMAT, SCHEMA, check_set, seal_record, seal_set

KEY, RECORDS, COMMITTED, DESTROYED, STAGED = "key.json", "records.parquet", "_COMMITTED", "DESTROYED", "staged"
IDENTITIES = "identities"  # the folder of the keyed runs' linker state (anonymizer.identity.STATE_NAME)
Status = Literal["pseudonymised", "destroyed", "absent"]


def _loc(location: Location | str) -> Location:
    return Location.parse(location) if isinstance(location, str) else location


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_location(vault: Location | str, run_id: str) -> Location:
    if not run_id or "/" in run_id:
        raise ValueError(f"run id {run_id!r}: must be one non-empty path segment")
    check_key(run_id)
    return _loc(vault).child("runs", run_id)


def _context(run_id: str) -> dict[str, str]:
    return {"anonymizer-vault": FORMAT, "run_id": run_id}


def _read_json(loc: Location, key: str) -> dict:
    try:
        return json.loads(loc.read_bytes(key))
    except ValueError:
        raise VaultError(f"{loc.uri}/{key} is not valid JSON") from None


def _refuse_destroyed(run: Location, run_id: str) -> None:
    if run.exists(DESTROYED):
        when = _read_json(run, DESTROYED).get("destroyed_at", "?")
        raise VaultDestroyedError(f"run {run_id}: the vault was destroyed at {when} (its data key was deleted): "
                                  "the original faces can no longer be recovered")


def _data_key(run: Location, run_id: str, provider: KeyProvider, create: bool) -> bytes:
    """The run's data key: unwrapped from key.json, or (create) made, wrapped and written first."""
    _refuse_destroyed(run, run_id)
    if run.exists(KEY):
        doc = _read_json(run, KEY)
        if doc.get("run_id") != run_id or doc.get("format") != FORMAT:
            raise VaultError(f"run {run_id}: {run.uri}/{KEY} belongs to run {doc.get('run_id')!r} "
                             f"({doc.get('format')!r}), not to this run")
        key = provider.unwrap(doc["kek"], _context(run_id))
        if len(key) != 32:
            raise VaultError(f"run {run_id}: the unwrapped data key is {len(key)} bytes, not 32")
        return key
    if not create:
        raise VaultError(f"run {run_id}: no vault at {run.uri} (no {KEY}); the driver creates it before the workers")
    key = AESGCM.generate_key(bit_length=256)
    doc = {"format": FORMAT, "run_id": run_id, "cipher": "AES-256-GCM", "created_at": _now(),
           "kek": provider.wrap(key, _context(run_id))}
    run.write_bytes(KEY, json.dumps(doc, indent=2).encode())
    return key


@dataclass(frozen=True)
class CommitInfo:
    run_id: str
    records: int
    images: int
    committed_at: str
    already: bool = False  # True when the run had been committed: nothing was written


def _dedup(table: pa.Table, run_id: str, outputs: Mapping[str, str] | None) -> pa.Table:
    if outputs is not None:
        keep = [outputs.get(k) == s for k, s in zip(table.column("image_key").to_pylist(),
                                                    table.column("output_sha256").to_pylist())]
        table = table.filter(pa.array(keep, pa.bool_()))
    rows = table.select(["image_key", "face_index", "output_sha256"]).to_pylist()
    first: dict[tuple[str, int], int] = {}
    sha_of: dict[str, str] = {}
    for i, r in enumerate(rows):
        if sha_of.setdefault(r["image_key"], r["output_sha256"]) != r["output_sha256"]:
            raise VaultError(f"run {run_id}: {r['image_key']} was staged for two different outputs (sha256 "
                             f"{sha_of[r['image_key']][:16]}… and {r['output_sha256'][:16]}…): pass the released "
                             "outputs to commit() so that only their records are kept")
        first.setdefault((r["image_key"], r["face_index"]), i)
    table = table.take(pa.array(sorted(first.values()), pa.int64()))
    order = pc.sort_indices(table, [("image_key", "ascending"), ("face_index", "ascending")])
    return table.take(order)


class VaultWriter:
    """Seals face records for one run, stages them per unit, and commits the run once.

    The driver makes it with create=True (the run's data key is generated, wrapped and written before any
    record); a worker with create=False, or gets it pickled, and unwraps the same data key from key.json. A
    resumed run finds key.json and reuses its data key, so records staged before a kill stay readable.
    """

    def __init__(self, location: Location | str, run_id: str, provider: KeyProvider, create: bool = True) -> None:
        self.location = _loc(location)
        self.run_id = run_id
        self.provider = provider
        self.run = run_location(self.location, run_id)
        self._aead = AESGCM(_data_key(self.run, run_id, provider, create))
        self._pending: list[dict] = []

    def __reduce__(self):
        if self._pending:
            raise VaultError(f"run {self.run_id}: stage() the {len(self._pending)} pending records before the "
                             "writer is sent elsewhere")
        return (VaultWriter, (self.location, self.run_id, self.provider, False))

    @property
    def committed(self) -> bool:
        return self.run.exists(COMMITTED)

    def add(self, image_key: str, face_index: int, box, pixels: np.ndarray, output_sha256: str) -> None:
        """One face region: box = (x0, y0, w, h) of its window, pixels = the source's H×W×C uint8 there."""
        self._pending.append(seal_record(self._aead, self.run_id, image_key, face_index, box, pixels, output_sha256))

    def stage(self, unit: str) -> int:
        """Write the pending records as this unit's staged object (a unit produced again replaces it).
        After the run is committed nothing more is written: its vault is the one committed."""
        check_key(unit)
        rows, self._pending = self._pending, []
        if self.committed:
            return 0
        self.run.write_table(f"{STAGED}/{unit}.parquet", pa.Table.from_pylist(rows, SCHEMA))
        return len(rows)

    def commit(self, outputs: Mapping[str, str] | None = None) -> CommitInfo:
        """Gather every staged unit into records.parquet, one record per (image, face), then the marker.

        outputs (image key → the released output's sha256), when given, keeps only the records of the
        outputs that were released: an image re-processed into another output, or never released, leaves
        nothing behind. Committing a committed run does nothing."""
        if self.committed:
            self._pending = []
            return self._info(already=True)
        if self._pending:
            self.stage("_writer")
        staged = self.run.child(STAGED)
        names = sorted(e.key for e in staged.list() if e.key.endswith(".parquet"))
        tables = [staged.read_table(n).cast(SCHEMA) for n in names]
        table = _dedup(pa.concat_tables(tables) if tables else SCHEMA.empty_table(), self.run_id, outputs)
        self.run.write_table(RECORDS, table)
        marker = {"format": FORMAT, "run_id": self.run_id, "records": len(table),
                  "images": len(set(table.column("image_key").to_pylist())), "committed_at": _now(),
                  **seal_set(self._aead, self.run_id, table)}
        self.run.write_bytes(COMMITTED, json.dumps(marker, indent=2).encode())
        staged.delete()
        return self._info()

    def _info(self, already: bool = False) -> CommitInfo:
        m = _read_json(self.run, COMMITTED)
        return CommitInfo(self.run_id, m["records"], m["images"], m["committed_at"], already)


@dataclass
class RunVault:
    """A committed run, opened: its records (still encrypted) and the cipher to open them."""

    run_id: str
    aead: AESGCM
    records: pa.Table
    marker: dict

    def check(self) -> None:
        """The record set is the one committed (nothing removed, added or altered)."""
        check_set(self.aead, self.run_id, self.records, self.marker)


def open_run(location: Location | str, run_id: str, provider: KeyProvider) -> RunVault:
    run = run_location(location, run_id)
    _refuse_destroyed(run, run_id)
    if not run.exists(KEY):
        raise VaultError(f"run {run_id}: no vault at {run.uri}")
    if not run.exists(COMMITTED):
        raise VaultError(f"run {run_id}: its vault at {run.uri} was never committed (the run did not finish)")
    aead = AESGCM(_data_key(run, run_id, provider, create=False))
    return RunVault(run_id, aead, run.read_table(RECORDS).cast(SCHEMA), _read_json(run, COMMITTED))


def vault_status(location: Location | str, run_id: str) -> Status:
    """For the report: "pseudonymised" while a wrapped data key exists (the originals can be recovered by
    whoever holds the KEK), "destroyed" once it was deleted, "absent" when the run kept no vault."""
    run = run_location(location, run_id)
    if run.exists(KEY):
        return "pseudonymised"
    return "destroyed" if run.exists(DESTROYED) else "absent"


def runs(location: Location | str) -> list[str]:
    """The run ids present in the vault (with a key, records, or a tombstone)."""
    return sorted({e.key.split("/", 1)[0] for e in _loc(location).child("runs").list() if "/" in e.key})


def _delete_every_version(loc: Location, key: str) -> None:
    """On S3, every version of the object (a versioned bucket keeps deleted keys as old versions)."""
    if loc.is_local:
        loc.delete(key)
        return
    bucket, _, rest = loc.path(key).partition("/")
    client = s3_client()
    found = False
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=rest):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if v["Key"] == rest:
                found = True
                client.delete_object(Bucket=bucket, Key=rest, VersionId=v["VersionId"])
    if not found:
        loc.delete(key)
    if loc.exists(key):
        raise VaultError(f"{loc.uri}/{key} is still there after its deletion")


def destroy(location: Location | str, run_id: str | None = None) -> list[str]:
    """Crypto-shred one run (or every run): delete its wrapped data key (every version on S3), leave a
    tombstone, then drop the now unreadable records. Returns the run ids destroyed.

    Copies of the KEK or of key.json made elsewhere (backups) are out of its reach; with a KMS KEK,
    scheduling the KMS key's deletion shreds every run it wrapped. Destroying every run also deletes the
    keyed runs' people (the linker state under `identities/`): no later run can link a face to them."""
    vault = _loc(location)
    if run_id is None:
        people = vault.child(IDENTITIES)
        for entry in list(people.list()):
            _delete_every_version(people, entry.key)
    ids = [run_id] if run_id is not None else runs(vault)
    done = []
    for rid in ids:
        run = run_location(vault, rid)
        if not run.exists(KEY) and not run.exists(DESTROYED):
            if run_id is not None:
                raise VaultError(f"run {rid}: no vault at {run.uri} to destroy")
            continue
        if run.exists(KEY):
            _delete_every_version(run, KEY)
        if not run.exists(DESTROYED):
            run.write_bytes(DESTROYED, json.dumps({"run_id": rid, "destroyed_at": _now()}).encode())
        run.child(STAGED).delete()
        for key in (RECORDS, COMMITTED):
            if run.exists(key):
                run.delete(key)
        done.append(rid)
    return done


def _norm(loc: Location) -> tuple[str, str]:
    if loc.is_local:
        return "file", os.path.realpath(loc.base).rstrip(os.sep) + os.sep
    return "s3", posixpath.normpath(loc.base).strip("/") + "/"


def inside(inner: Location | str, outer: Location | str) -> bool:
    """Whether `inner` is `outer` or below it (symbolic links resolved; S3 on '/' boundaries)."""
    (ik, ip), (ok, op) = _norm(_loc(inner)), _norm(_loc(outer))
    return ik == ok and ip.startswith(op)


def check_vault_location(vault: Location | str, dest: Location | str) -> None:
    """Refuse a vault inside DEST (it would be published with the release, or listed as unlisted objects)
    or a DEST inside the vault: the two must not overlap."""
    if inside(vault, dest):
        raise VaultLocationError(f"vault {_loc(vault).uri} is inside DEST {_loc(dest).uri}: the original faces "
                                 "would sit with the release; keep the vault in a separate location")
    if inside(dest, vault):
        raise VaultLocationError(f"DEST {_loc(dest).uri} is inside the vault {_loc(vault).uri}: keep them apart")
