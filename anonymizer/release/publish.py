"""Release only on pass; otherwise quarantine. Fail closed: this module is the only writer to DEST.

A release is a versioned prefix DEST/<run_id>/ (images/, report.json, report.html, manifest.parquet);
its manifest is written last and DEST/LATEST after it, so a reader that follows LATEST or waits for the
manifest never sees half a release. Locally the folder is built under a hidden name and renamed. A
published release is never rewritten: publishing a run id that already has a manifest does nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from anonymizer.release import verify
from anonymizer.release.layout import LATEST, MANIFEST
from anonymizer.storage import Location

_COPIES = 16  # object copies in flight: S3 copies are server-side, so this bounds requests, not bytes


class ReleaseVerificationError(RuntimeError):
    pass


def latest(dest: Location) -> str | None:
    return dest.read_bytes(LATEST).decode().strip() if dest.exists(LATEST) else None


def publish(staging: Location, dest: Location, run_id: str, manifest: pa.Table, report_files: dict[str, bytes],
            previous: Location | None = None) -> Location:
    """Copy processed outputs from staging and carried ones from the previous release, then the manifest."""
    final = dest.child(run_id)
    if final.exists(MANIFEST):  # published by an earlier attempt of this run: exactly once
        dest.write_bytes(LATEST, run_id.encode())
        return final
    target = dest.child(f".{run_id}.partial") if dest.is_local else final
    if dest.is_local:
        target.delete()
    outputs = staging.child("outputs")

    def copy(row: dict) -> None:
        src = outputs if row["origin"] == "processed" else previous
        src_key = row["key"] if row["origin"] == "processed" else row["output_key"]
        src.copy_to(src_key, target, row["output_key"])

    with ThreadPoolExecutor(_COPIES) as pool:
        list(pool.map(copy, manifest.select(["key", "output_key", "origin"]).to_pylist()))
    for name, data in report_files.items():
        target.write_bytes(name, data)
    # The leak checker (`anonymizer verify`) on what was copied, before the manifest makes it a release.
    checked = verify.check_contents(target, manifest, report_files.get("report.json"))
    if not checked.passed:
        target.delete()  # never became a release: no manifest, no LATEST
        raise ReleaseVerificationError("; ".join(f"{f.check}: {f.key}: {f.detail}" for f in checked.findings[:20]))
    target.write_table(MANIFEST, manifest)
    if dest.is_local:
        if final.exists():
            final.delete()  # an unfinished earlier attempt: it has no manifest
        dest.fs.move(target.base, final.base)
    dest.write_bytes(LATEST, run_id.encode())
    return final


def quarantine_run(staging: Location, quarantine: Location, report_files: dict[str, bytes]) -> Location:
    """Keep the failed run's anonymized outputs and evidence where only reviewers look, never in DEST."""
    outputs = staging.child("outputs")
    for entry in outputs.list():
        outputs.copy_to(entry.key, quarantine.child("outputs"), entry.key)
    for name, data in report_files.items():
        quarantine.write_bytes(name, data)
    return quarantine
