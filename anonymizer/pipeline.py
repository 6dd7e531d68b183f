"""The run, step by step: plan → process shards → collect → validate → report → release or quarantine.

Each step is a plain function of a RunContext; `run_pipeline` chains them without Prefect, and the
Prefect flow in flows/ wraps the same functions as tasks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa

from anonymizer import listing, release
from anonymizer import report as reporting
from anonymizer.execute import process_shards
from anonymizer.logs import event
from anonymizer.policy import Policy, load_policy
from anonymizer.process import model_inventory
from anonymizer.shard import FACE_SCHEMA, IMAGE_SCHEMA, shard_dir
from anonymizer.storage import Location
from anonymizer.validate import Verdict, validate

EXIT_RELEASED, EXIT_ERROR, EXIT_USAGE, EXIT_QUARANTINED = 0, 1, 2, 3


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
    started: str = field(default_factory=_now)

    @classmethod
    def create(cls, source: str, dest: str, policy: str | None = None, run_id: str | None = None,
               staging: str | None = None, quarantine: str | None = None) -> "RunContext":
        run_id = run_id or new_run_id()
        dest_root = dest.rstrip("/")
        return cls(
            run_id=run_id,
            source=Location.parse(source),
            dest=Location.parse(dest),
            staging=Location.parse(staging or dest_root + ".staging").child(run_id),
            quarantine=Location.parse(quarantine or dest_root + ".quarantine").child(run_id),
            policy=load_policy(policy),
        )


@dataclass
class Outcome:
    run_id: str
    released: bool
    verdict: Verdict
    report: dict
    location: str

    @property
    def exit_code(self) -> int:
        return EXIT_RELEASED if self.released else EXIT_QUARANTINED


def plan(ctx: RunContext) -> listing.Plan:
    model_inventory(ctx.policy)  # a missing or tampered model fails the run here, before any work
    p = listing.plan(ctx.source, ctx.policy.execution.shard_size)
    listing_table, skipped = listing.plan_tables(p)
    ctx.staging.write_table("plan/listing.parquet", listing_table)
    ctx.staging.write_table("plan/skipped.parquet", skipped)
    ctx.staging.write_bytes("policy.yaml", ctx.policy.text.encode())
    event("plan", run_id=ctx.run_id, images=p.candidates, skipped=len(p.skipped), shards=len(p.shards))
    return p


def process(ctx: RunContext, p: listing.Plan, workers: int | None = None) -> list[dict]:
    return process_shards(ctx.policy, ctx.source, ctx.staging, p.shards, workers)


def collect(ctx: RunContext, p: listing.Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge the shards' tables into the run's metrics tables (Parquet) and return them."""
    images = pa.concat_tables([shard_dir(ctx.staging, i).read_table("images.parquet") for i in range(len(p.shards))]
                              or [IMAGE_SCHEMA.empty_table()])
    faces = pa.concat_tables([shard_dir(ctx.staging, i).read_table("faces.parquet") for i in range(len(p.shards))]
                             or [FACE_SCHEMA.empty_table()])
    ctx.staging.write_table("metrics/images.parquet", images)
    ctx.staging.write_table("metrics/faces.parquet", faces)
    manifest = images.select(["key", "size", "sha256", "width", "height", "format", "shard", "error"])
    ctx.staging.write_table("manifest.parquet", manifest)
    return images.to_pandas(), faces.to_pandas()


def check(ctx: RunContext, images: pd.DataFrame, faces: pd.DataFrame) -> Verdict:
    verdict = validate(ctx.policy, images, faces)
    event("validate", run_id=ctx.run_id, passed=verdict.passed, reason=verdict.reason)
    return verdict


def object_outcomes(p: listing.Plan, images: pd.DataFrame, verdict: Verdict) -> list[dict]:
    """Every listed key, with what happened to it: released, quarantined or skipped, and why."""
    out = [{"key": s["key"], "status": "skipped", "reason": s["reason"]} for s in p.skipped]
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
    objects = object_outcomes(p, images, verdict)
    counts = {s: sum(o["status"] == s for o in objects) for s in ("released", "quarantined", "skipped")}
    counts["listed"] = len(objects)
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
        "counts": counts,
        "metrics": reporting.summary_metrics(images, faces, same),
        "objects": objects,
        "shards": summaries,
        "models": model_inventory(ctx.policy),
        "software": reporting.package_versions(),
        "policy": {"name": ctx.policy.name, "sha256": ctx.policy.sha256, "text": ctx.policy.text},
    }
    figures = reporting.plots(images, faces, same)
    files = {"report.json": reporting.to_json(report), "report.html": reporting.render_html(report, figures).encode()}
    for name, data in files.items():
        ctx.staging.write_bytes(name, data)
    return report, files


def release_manifest(ctx: RunContext, images: pd.DataFrame) -> pa.Table:
    ok = images[images["error"].isna()]
    return pa.table({
        "key": ok["key"].tolist(),
        "output_key": ["images/" + k for k in ok["key"]],
        "source_sha256": ok["sha256"].tolist(),
        "output_sha256": ok["output_sha256"].tolist(),
        "output_size": ok["output_size"].astype("int64").tolist(),
        "width": ok["width"].astype("int32").tolist(),
        "height": ok["height"].astype("int32").tolist(),
        "format": ok["format"].tolist(),
        "run_id": [ctx.run_id] * len(ok),
        "policy_sha256": [ctx.policy.sha256] * len(ok),
    })


def finish(ctx: RunContext, verdict: Verdict, images: pd.DataFrame, report: dict, files: dict[str, bytes]) -> Outcome:
    failed = images[images["error"].notna()][["key", "sha256", "error"]]
    if len(failed):
        ctx.quarantine.write_table("objects.parquet", pa.Table.from_pandas(failed, preserve_index=False))
    if verdict.passed:
        where = release.publish(ctx.staging, ctx.dest, ctx.run_id, release_manifest(ctx, images), files)
    else:
        ctx.quarantine.write_bytes("validation.json", reporting.to_json(verdict.to_dict()))
        where = release.quarantine_run(ctx.staging, ctx.quarantine, files)
    event("finish", run_id=ctx.run_id, released=verdict.passed, location=where.uri)
    return Outcome(ctx.run_id, verdict.passed, verdict, report, where.uri)


def run_pipeline(source: str, dest: str, policy: str | None = None, workers: int | None = None,
                 run_id: str | None = None, staging: str | None = None, quarantine: str | None = None) -> Outcome:
    ctx = RunContext.create(source, dest, policy, run_id, staging, quarantine)
    p = plan(ctx)
    summaries = process(ctx, p, workers)
    images, faces = collect(ctx, p)
    verdict = check(ctx, images, faces)
    report, files = build_report(ctx, p, summaries, images, faces, verdict)
    return finish(ctx, verdict, images, report, files)
