"""Each task calls one step of anonymizer.pipeline; no logic lives here."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from anonymizer import pipeline

# Inputs hold filesystems and data frames: nothing to cache on, and results are not reused across runs.
_opts = {"cache_policy": NO_CACHE, "persist_result": False}


# Storage calls retry with backoff inside pyarrow/botocore; task retries cover what outlasts those.
@task(name="plan", retries=2, retry_delay_seconds=5, **_opts)
def plan(ctx: pipeline.RunContext):
    return pipeline.plan(ctx)


@task(name="process-shards", retries=1, retry_delay_seconds=10, **_opts)
def process_shards(ctx: pipeline.RunContext, p, workers: int | None):
    # A retry re-runs only the shards without a completion marker.
    return pipeline.process(ctx, p, workers)


@task(name="collect-metrics", **_opts)
def collect(ctx: pipeline.RunContext, p):
    return pipeline.collect(ctx, p)


@task(name="validate", **_opts)
def validate(ctx: pipeline.RunContext, p, images, faces):
    return pipeline.check(ctx, p, images, faces)


@task(name="report", **_opts)
def report(ctx: pipeline.RunContext, p, summaries, images, faces, verdict):
    return pipeline.build_report(ctx, p, summaries, images, faces, verdict)


@task(name="release-or-quarantine", retries=2, retry_delay_seconds=5, **_opts)
def finish(ctx: pipeline.RunContext, p, verdict, images, report, files):
    return pipeline.finish(ctx, p, verdict, images, report, files)
