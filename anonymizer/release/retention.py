"""Retention of derived data: `anonymizer staging clean DEST [--older-than DAYS] [--dry-run]`, and the policy's
`execution.staging_retention_days` at the end of every run.

A run leaves DEST.staging/<run id>/ (its plan, shard tables, every anonymized output, reports, lineage) and,
when it fails, DEST.quarantine/<run id>/ (outputs that failed the gate, which may still show faces). Those
untouched for longer than the retention are removed. A released run keeps only lineage.parquet: its sources'
keys and hashes, which the next incremental run and the operator need (the release itself holds none).
Only folders that look like a run's are touched (a plan, a policy, shard tables, a report...): anything else
under the roots, and anything outside them, is never deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from anonymizer.release.layout import MANIFEST
from anonymizer.storage import Location

DAY = 86400.0
KEEP_WHEN_RELEASED = ("lineage.parquet",)
# What a run writes first into each kind of folder: a folder with none of these is not a run's.
_RUN_MARKS = {"staging": {"policy.yaml", "plan"}, "quarantine": {"report.json", "validation.json", "objects.parquet",
                                                                 "outputs"}}


@dataclass
class Removal:
    folder: str
    kind: str            # staging | quarantine
    age_days: float
    released: bool
    removed: list[str]   # files removed (or that would be, with dry_run)
    kept: list[str]


def _children(root: Location) -> list[pafs.FileInfo]:
    if not root.exists():
        return []
    return [i for i in root.fs.get_file_info(pafs.FileSelector(root.base, recursive=False))
            if i.type == pafs.FileType.Directory]


def _files(folder: Location) -> list[pafs.FileInfo]:
    return [i for i in folder.fs.get_file_info(pafs.FileSelector(folder.base, recursive=True))
            if i.type == pafs.FileType.File]


def _is_run(kind: str, folder: Location, files: list[pafs.FileInfo]) -> bool:
    return bool({os.path.relpath(i.path, folder.base).split("/")[0] for i in files} & _RUN_MARKS[kind])


def clean(dest: Location, staging_root: Location, quarantine_root: Location, older_than_days: float,
          dry_run: bool = False, keep: set[str] = frozenset()) -> list[Removal]:
    """Remove run folders under the staging and quarantine roots whose newest file is older than the retention."""
    cutoff = time.time() - older_than_days * DAY
    out = []
    for kind, root in (("staging", staging_root), ("quarantine", quarantine_root)):
        for info in _children(root):
            run_id = os.path.basename(info.path)
            if run_id in keep:
                continue
            folder = root.child(run_id)
            files = _files(folder)
            if not _is_run(kind, folder, files):
                continue
            newest = max(i.mtime.timestamp() for i in files)
            if newest > cutoff:
                continue
            released = kind == "staging" and dest.child(run_id).exists(MANIFEST)
            keys = sorted(os.path.relpath(i.path, folder.base) for i in files)
            kept = [k for k in keys if released and k in KEEP_WHEN_RELEASED]
            removed = [k for k in keys if k not in kept]
            if not dry_run:
                if kept:
                    for k in removed:
                        folder.delete(k)
                    if folder.is_local:  # empty folders left by the files removed
                        for path, dirs, names in sorted(os.walk(folder.base), reverse=True):
                            if path != folder.base and not dirs and not names:
                                os.rmdir(path)
                else:
                    folder.delete()
            out.append(Removal(folder.uri, kind, round((time.time() - newest) / DAY, 1), released, removed, kept))
    return out


# ---- command line ---------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["clean"])
    p.add_argument("dest", help="the release location the runs were made for (local or s3://)")
    p.add_argument("--older-than", type=float, default=30.0, metavar="DAYS",
                   help="remove run folders nothing was written to for this many days (default 30)")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    p.add_argument("--staging", help="staging root (default: DEST.staging)")
    p.add_argument("--quarantine", help="quarantine root (default: DEST.quarantine)")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS)")


def run(args: argparse.Namespace) -> int:
    from anonymizer import exit_codes

    if args.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
    if args.older_than < 0:
        print("anonymizer: error: --older-than must be 0 or more days", file=sys.stderr)
        return exit_codes.USAGE
    root = args.dest.rstrip("/")
    removals = clean(Location.parse(args.dest), Location.parse(args.staging or root + ".staging"),
                     Location.parse(args.quarantine or root + ".quarantine"), args.older_than, args.dry_run)
    for r in removals:
        print(json.dumps({**asdict(r), "removed": len(r.removed), "dry_run": args.dry_run}))
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {sum(len(r.removed) for r in removals)} files in {len(removals)} run folders older than "
          f"{args.older_than:g} days", file=sys.stderr)
    return exit_codes.RELEASED
