"""Release only on pass; otherwise quarantine. Fail closed: this module is the only writer to DEST.

A release is a versioned folder DEST/<run_id>/ (images/, report.json, report.html, manifest.parquet);
its manifest is written last and the LATEST pointer after it, so a reader that follows LATEST or waits
for the manifest never sees half a release. Locally the folder is built under a hidden name and renamed.
"""

from __future__ import annotations

import pyarrow as pa

from anonymizer.storage import Location

MANIFEST = "manifest.parquet"


def publish(staging: Location, dest: Location, run_id: str, manifest: pa.Table, report_files: dict[str, bytes]) -> Location:
    final = dest.child(run_id)
    if final.exists(MANIFEST):
        raise FileExistsError(f"release {final.uri} already exists: a published release is never overwritten")
    target = dest.child(f".{run_id}.partial") if dest.is_local else final
    target.delete()
    outputs = staging.child("outputs")
    for key in manifest.column("key").to_pylist():
        target.child("images").write_bytes(key, outputs.read_bytes(key))
    for name, data in report_files.items():
        target.write_bytes(name, data)
    target.write_table(MANIFEST, manifest)
    if dest.is_local:
        if final.exists():
            final.delete()  # an unfinished earlier attempt: it has no manifest
        dest.fs.move(target.base, final.base)
    dest.write_bytes("LATEST", run_id.encode())
    return final


def quarantine_run(staging: Location, quarantine: Location, report_files: dict[str, bytes]) -> Location:
    """Keep the failed run's anonymized outputs and evidence where only reviewers look, never in DEST."""
    outputs = staging.child("outputs")
    for key, _ in outputs.list():
        quarantine.child("outputs").write_bytes(key, outputs.read_bytes(key))
    for name, data in report_files.items():
        quarantine.write_bytes(name, data)
    return quarantine
