"""The run, step by step: plan → anonymize shards → collect → validate → report → release or quarantine.

Each step is a plain function of a RunContext; `run_pipeline` chains them without Prefect, and the
Prefect flow in flows/ wraps the same functions as tasks. Re-running a run id resumes it: the plan is
re-used, completed shards are skipped, and a release that was already published is not published again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from anonymizer import exit_codes
from anonymizer import report as reporting
from anonymizer.components import model_inventory
from anonymizer.logs import event
from anonymizer.pipeline import plan as listing
from anonymizer.pipeline.executors import EXECUTORS
from anonymizer.pipeline.shard import FACE_SCHEMA, IMAGE_SCHEMA, shard_dir
from anonymizer.policy import Policy, load_policy
from anonymizer.release import publish as release
from anonymizer.release.layout import MANIFEST
from anonymizer.storage import Location
from anonymizer.validate import Verdict, validate

_SAMPLE = 6  # anonymized outputs shown in the report's sample grid


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class RunContext:
    run_id: str
    source: Location
    dest: Location
    staging: Location     # this run's staging folder
    quarantine: Location  # this run's quarantine folder
    policy: Policy
    full: bool = False    # ignore the previous release: process everything
    engine: str = "ray"   # the executor of the shards: "ray" or "local" (see pipeline/executors.py)
    ray_address: str | None = None
    started: str = field(default_factory=_now)

    @classmethod
    def create(cls, source: str, dest: str, policy: str | None = None, run_id: str | None = None,
               staging: str | None = None, quarantine: str | None = None, full: bool = False,
               engine: str = "ray", ray_address: str | None = None) -> "RunContext":
        if engine not in EXECUTORS:
            raise ValueError(f"unknown engine {engine!r}; known: {', '.join(EXECUTORS)}")
        run_id = run_id or new_run_id()
        dest_root = dest.rstrip("/")
        return cls(
            run_id=run_id,
            source=Location.parse(source),
            dest=Location.parse(dest),
            staging=Location.parse(staging or dest_root + ".staging").child(run_id),
            quarantine=Location.parse(quarantine or dest_root + ".quarantine").child(run_id),
            policy=load_policy(policy),
            full=full,
            engine=engine,
            ray_address=ray_address,
        )

    @property
    def plan_dir(self) -> Location:
        return self.staging.child("plan")


@dataclass
class Outcome:
    run_id: str
    released: bool
    verdict: Verdict
    report: dict
    location: str

    @property
    def exit_code(self) -> int:
        return exit_codes.RELEASED if self.released else exit_codes.QUARANTINED

    def summary(self) -> dict:
        """What the command line prints and the Prefect flow returns."""
        return {"run_id": self.run_id, "released": self.released, "reason": self.verdict.reason,
                "location": self.location, "exit_code": self.exit_code, "counts": self.report["counts"],
                "metrics": self.report["metrics"]}


def plan(ctx: RunContext) -> listing.Plan:
    model_inventory(ctx.policy)  # a missing or tampered model fails the run here, before any work
    resumed = listing.load_plan(ctx.plan_dir)
    if resumed:
        event("plan.resumed", run_id=ctx.run_id, **resumed.__dict__)
        return resumed
    previous_id = None if ctx.full else release.latest(ctx.dest)
    previous = ctx.dest.child(previous_id).read_table(MANIFEST) if previous_id else None
    ctx.staging.write_bytes("policy.yaml", ctx.policy.text.encode())
    p = listing.plan(ctx.source, ctx.plan_dir, ctx.policy.execution.shard_size, previous, previous_id)
    event("plan", run_id=ctx.run_id, **p.__dict__)
    return p


def anonymize_shards(ctx: RunContext, p: listing.Plan, workers: int | None = None) -> list[dict]:
    if not p.shards:
        return []
    return EXECUTORS[ctx.engine](ctx.policy, ctx.source, ctx.staging, listing.iter_shards(ctx.plan_dir), p.shards,
                                 workers=workers, ray_address=ctx.ray_address)


def collect(ctx: RunContext, p: listing.Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge the shards' tables into the run's metrics tables and source manifest (Parquet)."""
    images = pa.concat_tables([shard_dir(ctx.staging, i).read_table("images.parquet") for i in range(p.shards)]
                              or [IMAGE_SCHEMA.empty_table()])
    faces = pa.concat_tables([shard_dir(ctx.staging, i).read_table("faces.parquet") for i in range(p.shards)]
                             or [FACE_SCHEMA.empty_table()])
    versions = ctx.plan_dir.read_table("listing.parquet").select(["key", "version"])
    images = images.join(versions, "key").sort_by("key")
    ctx.staging.write_table("metrics/images.parquet", images)
    ctx.staging.write_table("metrics/faces.parquet", faces)
    ctx.staging.write_table("manifest.parquet", images.select(
        ["key", "size", "version", "sha256", "width", "height", "format", "shard", "error"]))
    return images.to_pandas(), faces.to_pandas()


def check(ctx: RunContext, p: listing.Plan, images: pd.DataFrame, faces: pd.DataFrame) -> Verdict:
    if not p.candidates and p.previous_release:
        # Every object was validated when its release was made; this release only carries or drops them.
        return Verdict(True, note=f"nothing new to validate: {p.carried} objects carried from release "
                                  f"{p.previous_release}, {p.deleted} deleted")
    verdict = validate(ctx.policy, images, faces)
    event("validate", run_id=ctx.run_id, passed=verdict.passed, reason=verdict.reason)
    return verdict


def object_outcomes(ctx: RunContext, p: listing.Plan, images: pd.DataFrame, verdict: Verdict) -> list[dict]:
    """Every listed key, with what happened to it: released, carried, quarantined, skipped or deleted."""
    plan_table = ctx.plan_dir.read_table
    out = [{"key": k, "status": "skipped", "reason": r} for k, r in
           zip(*plan_table("skipped.parquet").select(["key", "reason"]).to_pydict().values())]
    carried = f"unchanged since release {p.previous_release}: carried over"
    if not verdict.passed:
        carried = f"unchanged since release {p.previous_release}: stays in that release"
    out += [{"key": k, "status": "carried", "reason": carried} for k in plan_table("carried.parquet").column("key").to_pylist()]
    out += [{"key": k, "status": "deleted", "reason": f"in release {p.previous_release}, gone from the source"}
            for k in plan_table("deleted.parquet").column("key").to_pylist()]
    for row in images.itertuples():
        if isinstance(row.error, str):
            out.append({"key": row.key, "status": "quarantined", "reason": row.error})
        elif verdict.passed:
            out.append({"key": row.key, "status": "released", "reason": None})
        else:
            out.append({"key": row.key, "status": "quarantined", "reason": "run failed validation"})
    return sorted(out, key=lambda o: o["key"])


def build_report(ctx: RunContext, p: listing.Plan, summaries: list[dict], images: pd.DataFrame,
                 faces: pd.DataFrame, verdict: Verdict) -> tuple[dict, dict[str, bytes]]:
    objects = object_outcomes(ctx, p, images, verdict)
    counts = {s: sum(o["status"] == s for o in objects) for s in ("released", "carried", "quarantined", "skipped", "deleted")}
    counts["listed"] = len(objects) - counts["deleted"]
    same = ctx.policy.thresholds.same_person_distance
    where = ctx.dest.child(ctx.run_id).uri if verdict.passed else ctx.quarantine.uri
    report = {
        "run_id": ctx.run_id,
        "started": ctx.started,
        "finished": _now(),
        "released": verdict.passed,
        "verdict": verdict.to_dict(),
        "source": ctx.source.uri,
        "destination": where,
        "destination_note": f"released to {where}" if verdict.passed else f"nothing released; run quarantined at {where}",
        "lineage": {
            "previous_release": p.previous_release,
            "source_manifest_sha256": hashlib.sha256(ctx.staging.read_bytes("manifest.parquet")).hexdigest(),
            "processed": p.candidates, "carried": p.carried, "deleted": p.deleted,
        },
        "counts": counts,
        "metrics": reporting.summary_metrics(images, faces, same),
        "objects": objects,
        "shards": summaries,
        "retried_shards": [s["shard"] for s in summaries if s.get("attempts", 1) > 1],
        "models": model_inventory(ctx.policy),
        "software": reporting.package_versions(),
        "policy": {"name": ctx.policy.name, "sha256": ctx.policy.sha256, "text": ctx.policy.text},
    }
    report["thresholds"] = ctx.policy.thresholds.model_dump()
    figures = reporting.plots(images, faces, same)
    sample = images[images["error"].isna()].nlargest(_SAMPLE, "faces_anonymized")["key"] if len(images) else []
    outputs = ctx.staging.child("outputs")
    figures.update(reporting.sample_grid([(k, outputs.read_bytes(k)) for k in sample]))
    html = reporting.render_html(report, figures).encode()
    files = {"report.json": reporting.to_json(report), "report.html": html, **verdict.docs}
    pdf = reporting.render_pdf(html)
    if pdf:
        files["report.pdf"] = pdf
    for name, data in files.items():
        ctx.staging.write_bytes(name, data)
    return report, files


def release_manifest(ctx: RunContext, p: listing.Plan, images: pd.DataFrame, report: dict,
                     files: dict[str, bytes]) -> pa.Table:
    """Lineage per object: source key + hash → output key + hash, the run that made it, the policy."""
    ok = images[images["error"].isna()]
    processed = pa.table({
        "key": ok["key"].tolist(),
        "output_key": ["images/" + k for k in ok["key"]],
        "source_sha256": ok["sha256"].tolist(),
        "source_size": ok["size"].astype("int64").tolist(),
        "source_version": ok["version"].tolist(),
        "output_sha256": ok["output_sha256"].tolist(),
        "output_size": ok["output_size"].astype("int64").tolist(),
        "width": ok["width"].astype("int32").tolist(),
        "height": ok["height"].astype("int32").tolist(),
        "format": ok["format"].tolist(),
        "run_id": [ctx.run_id] * len(ok),
        "policy_sha256": [ctx.policy.sha256] * len(ok),
        "origin": ["processed"] * len(ok),
        "faces": pa.array(ok["faces_detected"].fillna(0).astype("int64").tolist(), pa.int32()),
    })
    tables = [processed]
    if p.carried:
        before = ctx.dest.child(p.previous_release).read_table(MANIFEST)
        keep = ctx.plan_dir.read_table("carried.parquet").column("key")
        carried = before.filter(pc.is_in(before.column("key"), value_set=keep))
        if "faces" not in carried.column_names:  # releases made before the column existed
            carried = carried.append_column("faces", pa.nulls(len(carried), pa.int32()))
        tables.append(carried.set_column(carried.schema.get_field_index("origin"), "origin",
                                         pa.array(["carried"] * len(carried))).select(processed.column_names))
    manifest = pa.concat_tables(tables).sort_by("key")
    return manifest.replace_schema_metadata({
        "run_id": ctx.run_id,
        "previous_release": p.previous_release or "",
        "policy_sha256": ctx.policy.sha256,
        "models": json.dumps(report["models"]),
        "deleted_keys": json.dumps(ctx.plan_dir.read_table("deleted.parquet").column("key").to_pylist()),
        "report_sha256": hashlib.sha256(files["report.json"]).hexdigest(),
        "source_manifest_sha256": report["lineage"]["source_manifest_sha256"],
    })


def finish(ctx: RunContext, p: listing.Plan, verdict: Verdict, images: pd.DataFrame, report: dict,
           files: dict[str, bytes]) -> Outcome:
    failed = images[images["error"].notna()][["key", "sha256", "error"]]
    if len(failed):
        ctx.quarantine.write_table("objects.parquet", pa.Table.from_pandas(failed, preserve_index=False))
    if verdict.passed:
        previous = ctx.dest.child(p.previous_release) if p.previous_release else None
        try:
            where = release.publish(ctx.staging, ctx.dest, ctx.run_id, release_manifest(ctx, p, images, report, files),
                                    files, previous)
        except release.ReleaseVerificationError as exc:
            # The checker found a leak or a mismatch in the copied release: fail closed, nothing published.
            verdict = Verdict(False, verdict.checks, error=f"release verification: {exc}")
    if not verdict.passed:
        ctx.quarantine.write_bytes("validation.json", reporting.to_json(verdict.to_dict()))
        where = release.quarantine_run(ctx.staging, ctx.quarantine, files)
    event("finish", run_id=ctx.run_id, released=verdict.passed, location=where.uri)
    return Outcome(ctx.run_id, verdict.passed, verdict, report, where.uri)


def run_pipeline(source: str, dest: str, policy: str | None = None, workers: int | None = None,
                 run_id: str | None = None, staging: str | None = None, quarantine: str | None = None,
                 full: bool = False, engine: str = "ray", ray_address: str | None = None) -> Outcome:
    """The whole run without Prefect: shards on Ray (`engine="ray"`) or in this process (`"local"`)."""
    ctx = RunContext.create(source, dest, policy, run_id, staging, quarantine, full, engine, ray_address)
    p = plan(ctx)
    summaries = anonymize_shards(ctx, p, workers)
    images, faces = collect(ctx, p)
    verdict = check(ctx, p, images, faces)
    report, files = build_report(ctx, p, summaries, images, faces, verdict)
    return finish(ctx, p, verdict, images, report, files)
