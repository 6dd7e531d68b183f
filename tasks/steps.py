"""Each task calls one step of anonymizer.pipeline.run; no logic lives here."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from anonymizer.pipeline import run

# Inputs hold filesystems and data frames: nothing to cache on, and results are not reused across runs.
_opts = {"cache_policy": NO_CACHE, "persist_result": False}


# Storage calls retry with backoff inside pyarrow/botocore; task retries cover what outlasts those.
@task(name="plan", retries=2, retry_delay_seconds=5, **_opts)
def plan(ctx: run.RunContext):
    return run.plan(ctx)


@task(name="link-people", retries=1, retry_delay_seconds=10, **_opts)
def link(ctx: run.RunContext, p, workers: int | None):
    # A keyed run only; a retry re-runs only the shards without a linking marker.
    return run.link(ctx, p, workers)


@task(name="anonymize-shards", retries=1, retry_delay_seconds=10, **_opts)
def anonymize_shards(ctx: run.RunContext, p, workers: int | None):
    # A retry re-runs only the shards without a completion marker.
    return run.anonymize_shards(ctx, p, workers)


@task(name="collect-metrics", **_opts)
def collect(ctx: run.RunContext, p):
    return run.collect(ctx, p)


@task(name="validate", **_opts)
def validate(ctx: run.RunContext, p, images, faces):
    return run.check(ctx, p, images, faces)


@task(name="report", **_opts)
def report(ctx: run.RunContext, p, summaries, images, faces, verdict):
    return run.build_report(ctx, p, summaries, images, faces, verdict)


@task(name="release-or-quarantine", retries=2, retry_delay_seconds=5, **_opts)
def finish(ctx: run.RunContext, p, verdict, images, report, files):
    return run.finish(ctx, p, verdict, images, report, files)
