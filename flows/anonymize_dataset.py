"""The dataset anonymization flow: plan → (link people, keyed runs) → anonymize shards (on Ray, or for a small
plan in this process: `executor`) → validate → release or quarantine → report."""

from __future__ import annotations

import logging
import threading

from prefect import flow, get_client
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from anonymizer.pipeline import RunContext
from anonymizer.pipeline.executors import choose, ensure_ray, import_in_background
from anonymizer.pipeline.run import DRIVER_IMPORTS, with_executor
from tasks import steps

log = logging.getLogger(__name__)


@flow(name="anonymize-dataset", log_prints=True)
def anonymize_dataset(source: str, dest: str, policy: str | None = None, workers: int | None = None,
                      run_id: str | None = None, staging: str | None = None, quarantine: str | None = None,
                      full: bool = False, ray_address: str | None = None, vault: str | None = None,
                      vault_key: str | None = None, identity_key: str | None = None, executor: str = "auto") -> dict:
    """`executor`: where the shards run, ray, local or auto (anonymizer.pipeline.executors.choose)."""
    ctx = RunContext.create(source, dest, policy, run_id, staging, quarantine, full, executor, ray_address, vault,
                            vault_key, identity_key)
    p = steps.plan(ctx)
    ctx = with_executor(ctx, p)
    if ctx.engine == "ray":
        ensure_ray(ctx.ray_address)  # in the flow's thread, which outlives the run: Ray's processes stop with it
    steps.link(ctx, p, workers)
    summaries = steps.anonymize_shards(ctx, p, workers)
    images, faces = steps.collect(ctx, p)
    verdict = steps.validate(ctx, p, images, faces)
    report, files = steps.report(ctx, p, summaries, images, faces, verdict)
    outcome = steps.finish(ctx, p, verdict, images, report, files)
    _artifacts(report, outcome.location)
    return outcome.summary()


def run_from_cli(api=None, **kwargs) -> dict:
    """The flow, with Prefect's API and (where the flow will use it) Ray started side by side first. Prefect's
    temporary server (started by flows.cli_engine, or else by Prefect when the flow first reaches its API) and
    a local Ray each take seconds, which one after the other the flow would wait for in turn. `api` waits for
    the API (default: reach it, which starts Prefect's own temporary server where none is configured) in a
    thread, while Ray starts in this (the main) thread, as ray.init requires; the flow then finds both
    running. Where `auto` waits for the plan's size, a Ray it needs starts in the flow. While a server that is
    starting (`api` given) boots on one core, another idles: the driver's validation and report imports happen
    there, not beside the shards."""
    def reach() -> None:
        try:
            (api or _reach_api)()
        except Exception as exc:  # noqa: BLE001 - the flow's own connection then fails with Prefect's error
            log.warning("prefect API not reached ahead of the flow: %s", exc)

    waiter = threading.Thread(target=reach, name="prefect-api", daemon=True)
    waiter.start()
    if api is not None:
        import_in_background(*DRIVER_IMPORTS)
    if choose(kwargs.get("executor", "auto"), 0, kwargs.get("ray_address"))[0] == "ray":
        ensure_ray(kwargs.get("ray_address"))
    waiter.join()
    return anonymize_dataset(**kwargs)


def _reach_api() -> None:
    with get_client(sync_client=True) as client:
        client.api_healthcheck()


def _artifacts(report: dict, location: str) -> None:
    verdict = "released" if report["released"] else "NOT released"
    create_markdown_artifact(
        key="anonymization-summary",
        markdown=f"# Run {report['run_id']}: {verdict}\n\n{report['verdict']['reason']}\n\n"
                 f"Counts: {report['counts']}\n\nAudit report: `{location}/report.html`",
        description="Verdict and where the audit report is")
    create_table_artifact(
        key="anonymization-checks",
        table=[{k: str(c[k]) for k in ("name", "success", "observed", "threshold")} for c in report["verdict"]["checks"]],
        description="Release gate: each check, observed vs threshold")


if __name__ == "__main__":
    import sys

    print(anonymize_dataset(*sys.argv[1:3]))
