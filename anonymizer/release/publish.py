"""Release only on pass; otherwise quarantine. Fail closed: this module is the only writer to DEST.

A release is a versioned prefix DEST/<run_id>/ (images/, report.json, report.html, manifest.parquet);
its manifest is written last and DEST/LATEST after it, so a reader that follows LATEST or waits for the
manifest never sees half a release. Locally the folder is built under a hidden name and renamed. A
published release is never rewritten: publishing a run id that already has a manifest does nothing.

A publish holds DEST's publish lock (release/lock.py) from its first check to LATEST, so publishes never
interleave, and LATEST only moves forward: from the release the run was planned against (the manifest's
`previous_release`) to this run, by compare-and-swap (on S3 also a conditional PUT). A run planned against a
release that is no longer LATEST publishes nothing (StaleRunError). Nothing is deleted that this module did
not write: DEST/.<run id>.publishing is written before any file of a release, and only a partial release
with that marker is ever cleared; anything else in the run's place is refused (ReleaseConflictError).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pyarrow as pa

from anonymizer.exit_codes import UsageError
from anonymizer.release import verify
from anonymizer.release.layout import LATEST, MANIFEST, check_run_id
from anonymizer.release.lock import publish_lock
from anonymizer.storage import Location

_COPIES = 16  # object copies in flight: S3 copies are server-side, so this bounds requests, not bytes


class ReleaseVerificationError(RuntimeError):
    pass


class StaleRunError(RuntimeError):
    """LATEST moved on since the run was planned: publishing it would move LATEST back to an older view."""


class ReleaseConflictError(UsageError):
    """The run's place in DEST holds something this tool did not write."""


def latest(dest: Location) -> str | None:
    return dest.read_bytes(LATEST).decode().strip() if dest.exists(LATEST) else None


def base_release(manifest: pa.Table) -> str | None:
    """The release a manifest's run was planned against (LATEST then), which LATEST must still name."""
    return ((manifest.schema.metadata or {}).get(b"previous_release") or b"").decode() or None


def _marker(run_id: str) -> str:
    return f".{run_id}.publishing"


def _partial(dest: Location, run_id: str) -> Location:
    return dest.child(f".{run_id}.partial")


def check_free(dest: Location, run_id: str) -> None:
    """Refuse a run id whose place in DEST holds anything this tool did not write (a release, or a partial
    release with the tool's marker, is fine)."""
    final = dest.child(run_id)
    if final.exists(MANIFEST):
        return
    ours = dest.exists(_marker(run_id))
    if dest.is_local:
        found = [loc for loc in (final, _partial(dest, run_id)) if loc.exists() and (loc is final or not ours)]
    else:
        found = [final] if not ours and next(iter(final.list()), None) is not None else []
    if found:
        raise ReleaseConflictError(f"{found[0].uri} exists and this tool did not write it (no {MANIFEST}, no "
                                   f"{_marker(run_id)} marker): refusing to publish run {run_id} there; nothing was "
                                   "deleted. Move it away or use another run id")


def _advance_latest(dest: Location, expected: str | None, run_id: str) -> bool:
    """LATEST := run_id if it still names `expected`; under the publish lock, and on S3 a conditional PUT too."""
    if dest.is_local:
        if latest(dest) != expected:
            return False
        dest.write_bytes(LATEST, run_id.encode())
        return True
    held = dest.read_versioned(LATEST)
    if (held[0].decode().strip() if held else None) != expected:
        return False
    return dest.write_conditional(LATEST, run_id.encode(), held[1] if held else None) is not None


def publish(staging: Location, dest: Location, run_id: str, manifest: pa.Table, report_files: dict[str, bytes],
            previous: Location | None = None, staged: dict[str, str] | None = None) -> Location:
    """Copy processed outputs from staging and carried ones from the previous release, then the manifest.
    `staged`: published key -> its key in staging's outputs, where the two differ (pseudonymised keys).
    The manifest records the sha256 of every report file, and is signed when $ANONYMIZER_SIGNING_KEY_FILE
    names an Ed25519 key (verify.SIGNATURE, written just before it)."""
    check_run_id(run_id)
    signer = verify.signing_key()  # a bad key fails before anything is copied
    manifest = verify.with_file_hashes(manifest, report_files)
    final = dest.child(run_id)
    base = base_release(manifest)
    with publish_lock(dest) as still_held:
        if final.exists(MANIFEST):  # published by an earlier attempt of this run: exactly once
            # An attempt that died between the manifest and LATEST left LATEST at this release's base: move it
            # on. A release LATEST has gone past stays where it is.
            _advance_latest(dest, base_release(final.read_table(MANIFEST)), run_id)
            if dest.exists(_marker(run_id)):
                dest.discard(_marker(run_id))
            return final
        current = latest(dest)
        if current != base:
            raise StaleRunError(f"LATEST is {current} now; run {run_id} was planned against {base or 'no release'}: "
                                "publishing it would move LATEST back to an older view of the source. Nothing was "
                                f"published; start a new run (without --run-id) to release from {current}")
        check_free(dest, run_id)
        target = _partial(dest, run_id) if dest.is_local else final
        if dest.exists(_marker(run_id)):
            target.delete()  # this tool's partial release, left by an attempt that died
        else:
            dest.write_bytes(_marker(run_id), json.dumps(
                {"run_id": run_id, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode())
        outputs = staging.child("outputs")

        def copy(row: dict) -> None:
            src = outputs if row["origin"] == "processed" else previous
            src_key = (staged or {}).get(row["key"], row["key"]) if row["origin"] == "processed" else row["output_key"]
            src.copy_to(src_key, target, row["output_key"])

        with ThreadPoolExecutor(_COPIES) as pool:
            list(pool.map(copy, manifest.select(["key", "output_key", "origin"]).to_pylist()))
        for name, data in report_files.items():
            target.write_bytes(name, data)
        # The leak checker (`anonymizer verify`) on what was copied, before the manifest makes it a release.
        checked = verify.check_contents(target, manifest, report_files.get("report.json"))
        if not checked.passed:
            target.delete()  # never became a release: no manifest, no LATEST
            dest.discard(_marker(run_id))
            raise ReleaseVerificationError("; ".join(f"{f.check}: {f.key}: {f.detail}" for f in checked.findings[:20]))
        still_held()
        data = verify.manifest_bytes(manifest)
        if signer is not None:
            target.write_bytes(verify.SIGNATURE, signer.sign(data))
        target.write_bytes(MANIFEST, data)
        if dest.is_local:
            dest.fs.move(target.base, final.base)
        still_held()
        if not _advance_latest(dest, base, run_id):
            raise StaleRunError(f"LATEST changed while run {run_id} was published (not by this tool's publish): "
                                f"{final.uri} is complete, but LATEST was left as it is")
        dest.discard(_marker(run_id))
    return final


def quarantine_run(staging: Location, quarantine: Location, report_files: dict[str, bytes]) -> Location:
    """Keep the failed run's anonymized outputs and evidence where only reviewers look, never in DEST."""
    outputs = staging.child("outputs")
    for entry in outputs.list():
        outputs.copy_to(entry.key, quarantine.child("outputs"), entry.key)
    for name, data in report_files.items():
        quarantine.write_bytes(name, data)
    return quarantine
