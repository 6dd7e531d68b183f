"""The run, step by step: plan → (link) → anonymize shards → collect → validate → report → release or quarantine.

Each step is a plain function of a RunContext; `run_pipeline` chains them without Prefect, and the
Prefect flow in flows/ wraps the same functions as tasks. Re-running a run id resumes it: the plan is
re-used, completed shards are skipped, and a release that was already published is not published again;
only under the policy and model files the run was planned with (`run_binding`). `preflight` refuses, before
anything is written, what would make a run unsafe; an incremental run with nothing to do publishes nothing.
A keyed run (an identity key) links people before anonymizing (anonymizer.pipeline.link).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from anonymizer import exit_codes
from anonymizer import report as reporting
from anonymizer.components import check_licences, model_inventory, virtual_identities
from anonymizer.identity import identity_key_from, key_id
from anonymizer.logs import event
from anonymizer.pipeline import lineage
from anonymizer.pipeline import link as linking
from anonymizer.pipeline import plan as listing
from anonymizer.pipeline.executors import EXECUTORS, choose, import_in_background
from anonymizer.pipeline.shard import FACE_SCHEMA, IMAGE_SCHEMA, max_bytes, shard_dir
from anonymizer.policy import Policy, load_policy
from anonymizer.policy_check import check_components
from anonymizer.release import publish as release
from anonymizer.release import retention
from anonymizer.release.pseudonyms import Names
from anonymizer.release.layout import MANIFEST, check_run_id
from anonymizer.storage import Location, overlaps
from anonymizer.validate import Verdict, validate
from anonymizer.vault import KeySpecError, VaultWriter, check_vault_location, key_provider_from, vault_status

_SAMPLE = 6  # anonymized outputs shown in the report's sample grid
# What the driver imports after the shards, for `check` (great_expectations: about 3 s of CPU) and the report:
# imported in the background while the shards run, or earlier where a core idles (flows.anonymize_dataset).
DRIVER_IMPORTS = ("great_expectations", "anonymizer.pyplot")


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
    engine: str = "ray"   # the executor of the shards: "ray", "local" or "auto" (see pipeline/executors.py)
    engine_why: str = "asked for"  # why it runs there (with_executor)
    ray_address: str | None = None
    vault: Location | None = None  # where the originals of the face regions are kept, encrypted
    vault_key: str | None = None   # the key-encryption key's spec: file:PATH, env:VAR or kms:KEY_ID
    identity_key: str | None = None  # keyed virtual identities: the key's spec, file:PATH or env:VAR
    started: str = field(default_factory=_now)

    @classmethod
    def create(cls, source: str, dest: str, policy: str | None = None, run_id: str | None = None,
               staging: str | None = None, quarantine: str | None = None, full: bool = False,
               engine: str = "ray", ray_address: str | None = None, vault: str | None = None,
               vault_key: str | None = None, identity_key: str | None = None) -> "RunContext":
        if engine not in (*EXECUTORS, "auto"):
            raise ValueError(f"unknown engine {engine!r}; known: {', '.join(EXECUTORS)}, auto")
        # A name, never a path (an empty one too is refused): checked before anything is written.
        run_id = check_run_id(new_run_id() if run_id is None else run_id)
        dest_root = dest.rstrip("/")
        loaded = load_policy(policy)
        check_components(loaded, policy)  # a misspelt component or parameter fails here, before any work
        if vault is not None:
            if not vault_key:
                raise KeySpecError("a vault needs its key-encryption key (file:PATH, env:VAR or kms:KEY_ID)")
            key_provider_from(vault_key)  # a malformed key spec fails here
            if loaded.output.pseudonymize_keys:
                raise KeySpecError("a vault cannot be combined with output.pseudonymize_keys yet: its records are "
                                   "keyed by source key, the release by pseudonym")
            for root in (dest, staging or dest_root + ".staging", quarantine or dest_root + ".quarantine"):
                check_vault_location(vault, root)
        if identity_key is not None:
            identity_key_from(identity_key)  # a malformed or missing key fails here
            if virtual_identities(loaded) is None:
                raise exit_codes.UsageError(
                    f"policy {loaded.name}: operator {loaded.anonymization.operator.name!r} shows no virtual "
                    "identities, so an identity key has nothing to key: use the face bank operator (`bank`, the "
                    "realistic profile)")
            linking.threshold_of(loaded)
        ctx = cls(
            run_id=run_id,
            source=Location.parse(source),
            dest=Location.parse(dest),
            staging=Location.parse(staging or dest_root + ".staging").child(run_id),
            quarantine=Location.parse(quarantine or dest_root + ".quarantine").child(run_id),
            policy=loaded,
            full=full,
            engine=engine,
            ray_address=ray_address,
            vault=Location.parse(vault) if vault else None,
            vault_key=vault_key,
            identity_key=identity_key,
        )
        preflight(ctx)
        return ctx

    def vault_writer(self) -> VaultWriter | None:
        """This run's vault writer; the first call writes the run's wrapped data key, a resumed run reuses it."""
        if self.vault is None:
            return None
        return VaultWriter(self.vault, self.run_id, key_provider_from(self.vault_key))

    @property
    def plan_dir(self) -> Location:
        return self.staging.child("plan")

    @property
    def keyed(self) -> bool:
        return self.identity_key is not None

    def inventory(self) -> list[dict]:
        return model_inventory(self.policy, keyed=self.keyed)


@dataclass
class Outcome:
    run_id: str
    released: bool
    verdict: Verdict
    report: dict
    location: str
    nothing_to_do: bool = False  # an incremental run that found nothing new, changed or deleted: no new release

    @property
    def exit_code(self) -> int:
        return exit_codes.RELEASED if self.released or self.nothing_to_do else exit_codes.QUARANTINED

    def summary(self) -> dict:
        """What the command line prints and the Prefect flow returns."""
        return {"run_id": self.run_id, "released": self.released, "reason": self.verdict.reason,
                "location": self.location, "exit_code": self.exit_code, "counts": self.report["counts"],
                "metrics": self.report["metrics"], "nothing_to_do": self.nothing_to_do}


def release_mode(ctx: RunContext) -> dict:
    """Anonymised, or pseudonymised (GDPR Art. 4(5), Recital 26: still personal data) while a vault can
    restore the originals; the report states which, so a compliance reader sees what the release is."""
    if ctx.vault is None or vault_status(ctx.vault, ctx.run_id) == "destroyed":
        return {"mode": "anonymised", "note": "no recovery vault: the originals of the face regions are not kept"}
    return {"mode": "pseudonymised", "vault": ctx.vault.uri,
            "note": "pseudonymised, recoverable by the key holder: the original face regions are kept encrypted "
                    "in the vault (AES-256-GCM); under GDPR Art. 4(5) and Recital 26 this is still personal data "
                    "until the vault's keys are destroyed (`anonymizer vault destroy`)"}


def keyed_identities(ctx: RunContext) -> dict | None:
    """What the report says of a keyed run's virtual identities: counts and the key's fingerprint, never a
    face's embedding. None for a run without an identity key."""
    if not ctx.keyed:
        return None
    done = ctx.staging.child("link")
    summary = json.loads(done.read_bytes(linking.DONE)) if done.exists(linking.DONE) else {}
    where = summary.get("persisted")
    return {**summary, "key_id": key_id(identity_key_from(ctx.identity_key)),
            "note": "Faces linked to one person (by the recognizer named) show one virtual person from the bank in "
                    "every image, chosen by HMAC-SHA256 under the identity key; another key gives other virtual "
                    "people. " + (
                        f"The people seen are kept, encrypted under the identity key, at {where}, so later runs with "
                        "this key show them the same way; whoever holds the key and that state can tell whether a "
                        "photo's person appears in the release (pseudonymisation, GDPR Art. 4(5))." if where else
                        "Without a vault the people are linked within this run only and nothing about them is kept.")}


def preflight(ctx: RunContext) -> None:
    """Refuse, before anything is written, a run that could not finish or would harm what is there: a missing
    SOURCE or one that is a file, SOURCE and an output location inside one another (a run would re-ingest its
    own outputs, or publish over its source), the run's place in DEST holding something this tool did not
    write, a DEST that cannot be written."""
    src = ctx.source
    if not src.exists():
        raise FileNotFoundError(f"source {src.uri} does not exist")
    if src.is_local and not os.path.isdir(src.base):
        raise exit_codes.UsageError(f"source {src.uri} is not a folder: SOURCE is a folder or s3://bucket/prefix")
    for name, loc in (("DEST", ctx.dest), ("staging", lineage.parent(ctx.staging)),
                      ("quarantine", lineage.parent(ctx.quarantine))):
        if overlaps(src, loc):
            what = (f"{name} {loc.uri} is the same location as SOURCE {src.uri}" if src.base == loc.base else
                    f"{name} {loc.uri} is inside SOURCE {src.uri}" if loc.base.startswith(src.base + "/") else
                    f"SOURCE {src.uri} is inside {name} {loc.uri}")
            raise exit_codes.UsageError(f"{what}: a run would list its own outputs as input, or write over its "
                                        "source; keep them apart")
    release.check_free(ctx.dest, ctx.run_id)
    probe = f".write-probe-{uuid.uuid4().hex[:12]}"
    try:
        ctx.dest.write_bytes(probe, b"")
        ctx.dest.discard(probe)
    except OSError as exc:
        raise exit_codes.UsageError(f"DEST {ctx.dest.uri} is not writable ({exc}): nothing was run") from exc


def run_binding(policy_sha256: str, inventory: list[dict]) -> str:
    """What a run is made under: the policy and every model file it loads. A run's plan records it, and a
    resume (or a re-run of a published run id) must match it: shards made under one policy are never released
    under another."""
    models = sorted((str(m.get("component")), str(m.get("name")), str(m.get("sha256"))) for m in inventory)
    return hashlib.sha256(json.dumps({"policy": policy_sha256, "models": models}).encode()).hexdigest()


def _check_binding(ctx: RunContext, binding: str, p: listing.Plan | None) -> None:
    made = None
    if p is not None and p.binding != binding:
        planned = (hashlib.sha256(ctx.staging.read_bytes("policy.yaml")).hexdigest()[:12]
                   if ctx.staging.exists("policy.yaml") else "?")
        made = (f"planned under policy {planned} (binding {str(p.binding)[:12]}; the policy is "
                f"{ctx.staging.uri}/policy.yaml)")
    published = ctx.dest.child(ctx.run_id)
    if made is None and published.exists(MANIFEST):
        meta = {k.decode(): v.decode() for k, v in (published.read_table(MANIFEST).schema.metadata or {}).items()}
        theirs = run_binding(meta.get("policy_sha256", ""), json.loads(meta.get("models") or "[]"))
        if theirs != binding:
            made = f"published at {published.uri} under policy {meta.get('policy_sha256', '?')[:12]}"
    if made:
        raise exit_codes.UsageError(
            f"run {ctx.run_id} was {made}; this run's policy is {ctx.policy.sha256[:12]} (binding {binding[:12]}, "
            "policy and model files): a run id is never resumed under another policy or other models. Use a new run "
            "id (or the original policy)")


def plan(ctx: RunContext) -> listing.Plan:
    inventory = ctx.inventory()  # hashes every model file: once
    check_licences(ctx.policy, inventory)  # a missing, tampered or unaccepted-licence model fails here
    names = Names.for_policy(ctx.policy)  # a missing pseudonym secret fails here, before any work
    binding = run_binding(ctx.policy.sha256, inventory)
    resumed = listing.load_plan(ctx.plan_dir)
    _check_binding(ctx, binding, resumed)
    if resumed:
        event("plan.resumed", run_id=ctx.run_id, **resumed.__dict__)
        return resumed
    current = release.latest(ctx.dest)
    previous_id = None if ctx.full else current
    previous = lineage.lineage_of(ctx.staging, ctx.dest, previous_id, names) if previous_id else None
    p = listing.plan(ctx.source, ctx.plan_dir, ctx.policy.execution.shard_size, previous, previous_id,
                     max_size=max_bytes(ctx.policy.output.max_pixels), supersedes=current, binding=binding)
    ctx.staging.write_bytes("policy.yaml", ctx.policy.text.encode())
    event("plan", run_id=ctx.run_id, **p.__dict__)
    return p


def with_executor(ctx: RunContext, p: listing.Plan) -> RunContext:
    """`ctx` with its engine settled for this plan (`auto`: executors.choose), which the report states."""
    engine, why = choose(ctx.engine, p.candidates, ctx.ray_address)
    event("executor", run_id=ctx.run_id, engine=engine, why=why)
    return replace(ctx, engine=engine, engine_why=why)


def link(ctx: RunContext, p: listing.Plan, workers: int | None = None) -> dict | None:
    """A keyed run's linking: the per-shard pass on the engine, then people and virtual identities on the
    driver. None when the run has no identity key."""
    if not ctx.keyed or not p.shards:
        return None
    EXECUTORS[ctx.engine](ctx.policy, ctx.source, ctx.staging, listing.iter_shards(ctx.plan_dir), p.shards,
                          workers=workers, ray_address=ctx.ray_address, worker_cls=linking.LinkWorker,
                          worker_kwargs={"identity_key": ctx.identity_key})
    return linking.link(ctx.policy, ctx.staging, p.shards, ctx.identity_key, ctx.vault, space=ctx.run_id)


def anonymize_shards(ctx: RunContext, p: listing.Plan, workers: int | None = None) -> list[dict]:
    if not p.shards:
        return []
    return EXECUTORS[ctx.engine](ctx.policy, ctx.source, ctx.staging, listing.iter_shards(ctx.plan_dir), p.shards,
                                 workers=workers, ray_address=ctx.ray_address, vault=ctx.vault_writer(),
                                 on_started=lambda: import_in_background(*DRIVER_IMPORTS))


def collect(ctx: RunContext, p: listing.Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge the shards' tables into the run's metrics tables and source manifest (Parquet)."""
    images = pa.concat_tables([shard_dir(ctx.staging, i).read_table("images.parquet") for i in range(p.shards)]
                              or [IMAGE_SCHEMA.empty_table()])
    faces = pa.concat_tables([shard_dir(ctx.staging, i).read_table("faces.parquet") for i in range(p.shards)]
                             or [FACE_SCHEMA.empty_table()])
    listed = ctx.plan_dir.read_table("listing.parquet").select(["key", "version"]).rename_columns(["key", "listed"])
    images = images.join(listed, "key").sort_by("key")
    # The version of the bytes read (S3: the ETag of the GET); the listing's for an object never read.
    images = images.set_column(images.schema.get_field_index("version"), "version",
                               pc.coalesce(images["version"], images["listed"])).drop_columns(["listed"])
    ctx.staging.write_table("metrics/images.parquet", images)
    ctx.staging.write_table("metrics/faces.parquet", faces)
    ctx.staging.write_table("manifest.parquet", images.select(
        ["key", "size", "version", "sha256", "width", "height", "format", "shard", "error"]))
    return lineage.published_frames(Names.for_policy(ctx.policy), images.to_pandas(), faces.to_pandas())


def check(ctx: RunContext, p: listing.Plan, images: pd.DataFrame, faces: pd.DataFrame) -> Verdict:
    if not p.candidates and p.previous_release:
        # Every object was validated when its release was made; this release only carries or drops them.
        return Verdict(True, note=f"nothing new to validate: {p.carried} objects carried from release "
                                  f"{p.previous_release}, {p.deleted} deleted")
    verdict = validate(ctx.policy, images, faces, carried=p.carried)  # failed fraction over processed + carried
    event("validate", run_id=ctx.run_id, passed=verdict.passed, reason=verdict.reason)
    return verdict


def object_outcomes(ctx: RunContext, p: listing.Plan, images: pd.DataFrame, verdict: Verdict) -> list[dict]:
    """Every listed key, with what happened to it: released, carried, quarantined, skipped or deleted."""
    plan_table = ctx.plan_dir.read_table
    names = Names.for_policy(ctx.policy)  # images holds published names already; the plan's tables hold keys
    out = [{"key": names.public(k), "status": "skipped", "reason": names.redact(k, r)} for k, r in
           zip(*plan_table("skipped.parquet").select(["key", "reason"]).to_pydict().values())]
    carried = f"unchanged since release {p.previous_release}: carried over"
    if not verdict.passed:
        carried = f"unchanged since release {p.previous_release}: stays in that release"
    out += [{"key": names.public(k), "status": "carried", "reason": carried}
            for k in plan_table("carried.parquet").column("key").to_pylist()]
    out += [{"key": names.public(k), "status": "deleted", "reason": f"in release {p.previous_release}, gone from the source"}
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
        "execution": {"executor": ctx.engine, "why": ctx.engine_why},
        "shards": summaries,
        "retried_shards": [s["shard"] for s in summaries if s.get("attempts", 1) > 1],
        "models": ctx.inventory(),
        "auditor": reporting.auditor_record(ctx.policy.detection.auditor.name, dict(ctx.policy.detection.auditor.params)),
        "software": reporting.package_versions(),
        "policy": {"name": ctx.policy.name, "sha256": ctx.policy.sha256, "text": ctx.policy.text},
        "mode": release_mode(ctx),
        "linking": keyed_identities(ctx),
    }
    report["thresholds"] = ctx.policy.thresholds.model_dump()
    figures = reporting.plots(images, faces, same)
    if verdict.passed:  # a failed run's outputs are what its checks refused: never shown
        sample = images[images["error"].isna()].nlargest(_SAMPLE, "faces_anonymized")["key"] if len(images) else []
        outputs, staged = ctx.staging.child("outputs"), lineage.staged_keys(ctx.staging, Names.for_policy(ctx.policy))
        figures.update(reporting.sample_grid([(k, outputs.read_bytes(staged.get(k, k))) for k in sample]))
    html = reporting.render_html(report, figures).encode()
    files = {"report.json": reporting.to_json(report), "report.html": html, **verdict.docs}
    pdf = reporting.render_pdf(html)
    if pdf:
        files["report.pdf"] = pdf
    for name, data in files.items():
        ctx.staging.write_bytes(name, data)
    return report, files


def unchanged(p: listing.Plan, full: bool) -> bool:
    """An incremental run that found nothing new, changed or deleted since the release it was planned against."""
    return not full and p.previous_release is not None and not p.candidates and not p.deleted


def nothing_to_do(ctx: RunContext, p: listing.Plan) -> Outcome:
    """No new release (it would repeat the current one); exit 0."""
    note = (f"nothing to do: no object new, changed or deleted since release {p.previous_release} ({p.carried} "
            f"unchanged, {p.skipped} skipped); no new release")
    where = ctx.dest.child(p.previous_release).uri
    event("finish", run_id=ctx.run_id, released=False, nothing_to_do=True, location=where)
    counts = {"released": 0, "carried": p.carried, "quarantined": 0, "skipped": p.skipped, "deleted": 0,
              "listed": p.carried + p.skipped}
    return Outcome(ctx.run_id, False, Verdict(True, note=note), {"run_id": ctx.run_id, "counts": counts, "metrics": {}},
                   where, nothing_to_do=True)


_EMPTY_TYPES = {"output_size": pa.int64(), "width": pa.int64(), "height": pa.int64()}  # the rest: strings


def release_manifest(ctx: RunContext, p: listing.Plan, images: pd.DataFrame, report: dict,
                     files: dict[str, bytes]) -> pa.Table:
    """Per released object: its published name, output key and hash, the run and policy that made it, its faces.
    Nothing about its source: the run's lineage.parquet in staging holds that, for the operator."""
    ok = images[images["error"].isna()]
    names = Names.for_policy(ctx.policy)
    processed = pa.table({
        "key": ok["key"].tolist(),
        "output_key": ["images/" + k for k in ok["key"]],
        "output_sha256": ok["output_sha256"].tolist(),
        "output_size": ok["output_size"].astype("int64").tolist(),
        "width": ok["width"].astype("int32").tolist(),
        "height": ok["height"].astype("int32").tolist(),
        "format": ok["format"].tolist(),
        "run_id": [ctx.run_id] * len(ok),
        "policy_sha256": [ctx.policy.sha256] * len(ok),
        "origin": ["processed"] * len(ok),
        "faces": pa.array(ok["faces_detected"].fillna(0).astype("int64").tolist(), pa.int32()),
        "unchanged": pa.array((ok["output_sha256"] == ok["sha256"]).tolist(), pa.bool_()),  # output == source bytes
    })
    tables = [processed]
    if p.carried:
        before = ctx.dest.child(p.previous_release).read_table(MANIFEST)
        keep = pa.array([names.public(k) for k in ctx.plan_dir.read_table("carried.parquet").column("key").to_pylist()],
                        pa.string())
        carried = before.filter(pc.is_in(before.column("key"), value_set=keep))
        if "faces" not in carried.column_names:  # releases made before the column existed
            carried = carried.append_column("faces", pa.nulls(len(carried), pa.int32()))
        if "unchanged" not in carried.column_names:  # a manifest that published its sources' hashes
            carried = carried.append_column("unchanged", pc.equal(carried["source_sha256"], carried["output_sha256"]))
        tables.append(carried.set_column(carried.schema.get_field_index("origin"), "origin",
                                         pa.array(["carried"] * len(carried))).select(processed.column_names))
    # No processed object (a run whose only change is a deletion): typed columns, not nulls.
    tables[0] = pa.table([c.cast(_EMPTY_TYPES.get(n, pa.string())) if pa.types.is_null(c.type) else c
                          for n, c in zip(processed.column_names, processed.columns)], names=processed.column_names)
    manifest = pa.concat_tables(tables, promote_options="permissive").sort_by("key")
    return manifest.replace_schema_metadata({
        "run_id": ctx.run_id,
        "previous_release": p.supersedes or "",  # LATEST when planned: publishing moves LATEST on only from it
        "policy_sha256": ctx.policy.sha256,
        "models": json.dumps(report["models"]),
        "deleted_keys": json.dumps([names.public(k) for k in ctx.plan_dir.read_table("deleted.parquet").column("key").to_pylist()]),
        lineage.NAMES_META: names.scheme,
        "report_sha256": hashlib.sha256(files["report.json"]).hexdigest(),
        "source_manifest_sha256": report["lineage"]["source_manifest_sha256"],
    })


def finish(ctx: RunContext, p: listing.Plan, verdict: Verdict, images: pd.DataFrame, report: dict,
           files: dict[str, bytes]) -> Outcome:
    if unchanged(p, ctx.full):
        return nothing_to_do(ctx, p)
    failed = images[images["error"].notna()][["key", "sha256", "error"]]
    if len(failed):
        ctx.quarantine.write_table("objects.parquet", pa.Table.from_pandas(failed, preserve_index=False))
    if verdict.passed:
        previous = ctx.dest.child(p.previous_release) if p.previous_release else None
        names = Names.for_policy(ctx.policy)
        before = lineage.lineage_of(ctx.staging, ctx.dest, p.previous_release, names) if p.carried else None
        ctx.staging.write_table(lineage.LINEAGE, lineage.build(ctx.staging, ctx.plan_dir, ctx.run_id, names, before))
        try:
            where = release.publish(ctx.staging, ctx.dest, ctx.run_id, release_manifest(ctx, p, images, report, files),
                                    files, previous, staged=lineage.staged_keys(ctx.staging, names))
        except release.ReleaseVerificationError as exc:
            # The checker found a leak or a mismatch in the copied release: fail closed, nothing published; the
            # report says so (and, as for any failed run, shows none of its outputs).
            verdict = Verdict(False, verdict.checks, error=f"release verification: {exc}", suites=verdict.suites,
                              docs=verdict.docs)
            faces = ctx.staging.read_table("metrics/faces.parquet").to_pandas()
            report, files = build_report(ctx, p, report["shards"], images, faces, verdict)
        else:
            writer = ctx.vault_writer()
            if writer is not None:  # after the release exists; a resumed run publishes nothing again, commits once
                ok = images[images["error"].isna()]
                writer.commit(outputs=dict(zip(ok["key"], ok["output_sha256"])))
            linking.commit_state(ctx.staging, ctx.vault)  # the people seen become known to the next keyed run
    if not verdict.passed:
        ctx.quarantine.write_bytes("validation.json", reporting.to_json(verdict.to_dict()))
        where = release.quarantine_run(ctx.staging, ctx.quarantine, files)
    event("finish", run_id=ctx.run_id, released=verdict.passed, location=where.uri)
    days = ctx.policy.execution.staging_retention_days
    if days is not None:  # housekeeping: a failure here is logged, never the run's outcome
        try:
            removed = retention.clean(ctx.dest, lineage.parent(ctx.staging), lineage.parent(ctx.quarantine), days,
                                      keep={ctx.run_id})
            event("retention", run_id=ctx.run_id, days=days, folders=[r.folder for r in removed])
        except Exception as exc:  # noqa: BLE001
            event("retention.failed", run_id=ctx.run_id, error=f"{type(exc).__name__}: {exc}")
    return Outcome(ctx.run_id, verdict.passed, verdict, report, where.uri)


def run_pipeline(source: str, dest: str, policy: str | None = None, workers: int | None = None,
                 run_id: str | None = None, staging: str | None = None, quarantine: str | None = None,
                 full: bool = False, engine: str = "ray", ray_address: str | None = None, vault: str | None = None,
                 vault_key: str | None = None, identity_key: str | None = None) -> Outcome:
    """The whole run without Prefect: shards on Ray (`engine="ray"`), in this process (`"local"`), or either by
    the plan's size (`"auto"`, executors.choose)."""
    ctx = RunContext.create(source, dest, policy, run_id, staging, quarantine, full, engine, ray_address, vault,
                            vault_key, identity_key)
    p = plan(ctx)
    ctx = with_executor(ctx, p)
    if unchanged(p, ctx.full):
        return nothing_to_do(ctx, p)
    link(ctx, p, workers)
    summaries = anonymize_shards(ctx, p, workers)
    images, faces = collect(ctx, p)
    verdict = check(ctx, p, images, faces)
    report, files = build_report(ctx, p, summaries, images, faces, verdict)
    return finish(ctx, p, verdict, images, report, files)
