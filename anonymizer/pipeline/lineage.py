"""What each release was made from, kept for the operator only.

A public manifest names outputs, never their sources: a source's sha256 (or its S3 ETag, often an MD5 of the
bytes, or its exact size) lets anyone holding a photo confirm it is in the dataset. Source key, sha256, size
and version per released object are written to the run's staging folder as lineage.parquet, with the name
the release published for it (a pseudonym under `output.pseudonymize_keys`). The next incremental run reads
it to carry unchanged objects over; `anonymizer staging clean` keeps it for released runs.
"""

from __future__ import annotations

import posixpath

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from anonymizer.logs import event
from anonymizer.release.layout import MANIFEST
from anonymizer.release.pseudonyms import Names
from anonymizer.storage import Location

LINEAGE = "lineage.parquet"
COLUMNS = ["key", "public_key", "output_key", "source_sha256", "source_size", "source_version", "output_sha256",
           "run_id"]
NAMES_META = "names"  # manifest metadata: the names it publishes ("source" or the pseudonym scheme)


def parent(location: Location) -> Location:
    """The folder holding `location` (a run's staging folder: the staging root)."""
    return Location(location.fs, posixpath.dirname(location.base), posixpath.dirname(location.uri))


def sibling(location: Location, name: str) -> Location:
    """Another run's folder beside `location`."""
    return parent(location).child(name)


def lineage_of(staging: Location, dest: Location, release_id: str, names: Names) -> pa.Table | None:
    """The lineage of release `release_id` (COLUMNS), or None when it cannot be matched to this run: its
    lineage removed or under another staging root, or it published names under another scheme or secret."""
    manifest = dest.child(release_id).read_table(MANIFEST)
    meta = {k.decode(): v.decode() for k, v in (manifest.schema.metadata or {}).items()}
    if meta.get(NAMES_META, "source") != names.scheme:
        event("lineage.unmatched", release=release_id, reason="the release publishes names under another scheme")
        return None
    folder = sibling(staging, release_id)
    if folder.exists(LINEAGE):
        return folder.read_table(LINEAGE).select(COLUMNS)
    if {"source_sha256", "source_size", "source_version"} <= set(manifest.column_names):
        # A manifest that publishes its sources' hashes and versions itself.
        m = manifest
        return pa.table({"key": m["key"], "public_key": m["key"], "output_key": m["output_key"],
                         "source_sha256": m["source_sha256"], "source_size": m["source_size"],
                         "source_version": m["source_version"], "output_sha256": m["output_sha256"],
                         "run_id": m["run_id"]})
    event("lineage.unmatched", release=release_id, reason=f"no {LINEAGE} in {folder.uri}")
    return None


def build(staging: Location, plan_dir: Location, run_id: str, names: Names, previous: pa.Table | None) -> pa.Table:
    """This release's lineage: the objects it processed (from the run's metrics table) and those it carried."""
    staged = staging.read_table("metrics/images.parquet")
    ok = staged.filter(pc.is_null(staged["error"]))
    public = [names.public(k) for k in ok["key"].to_pylist()]
    processed = pa.table({
        "key": ok["key"], "public_key": pa.array(public, pa.string()),
        "output_key": pa.array(["images/" + k for k in public], pa.string()),
        "source_sha256": ok["sha256"], "source_size": ok["size"].cast(pa.int64()),
        "source_version": ok["version"], "output_sha256": ok["output_sha256"],
        "run_id": pa.array([run_id] * len(ok), pa.string()),
    })
    tables = [processed]
    if previous is not None:
        keep = plan_dir.read_table("carried.parquet").column("key")
        tables.append(previous.filter(pc.is_in(previous["key"], value_set=keep)).cast(processed.schema))
    return pa.concat_tables(tables).sort_by("key")


def published_frames(names: Names, images: pd.DataFrame, faces: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The metrics tables as the release may show them (validation, report, manifest): keys replaced by the
    names the release publishes, and errors that name a key naming its published name instead."""
    if not names.pseudonymized:
        return images, faces
    images, faces = images.copy(), faces.copy()
    images["error"] = [names.redact(k, e) for k, e in zip(images["key"], images["error"])]
    images["key"] = images["key"].map(names.public)
    faces["key"] = faces["key"].map(names.public)
    return images, faces


def staged_keys(staging: Location, names: Names) -> dict[str, str]:
    """Published name -> the key its output has in staging (empty when names are the keys)."""
    if not names.pseudonymized:
        return {}
    return {names.public(k): k for k in staging.read_table("metrics/images.parquet").column("key").to_pylist()}
