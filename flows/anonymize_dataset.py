"""The dataset anonymization flow: plan → (link people, keyed runs) → anonymize shards on Ray → validate →
release or quarantine → report."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from anonymizer.pipeline import RunContext
from tasks import steps


@flow(name="anonymize-dataset", log_prints=True)
def anonymize_dataset(source: str, dest: str, policy: str | None = None, workers: int | None = None,
                      run_id: str | None = None, staging: str | None = None, quarantine: str | None = None,
                      full: bool = False, ray_address: str | None = None, vault: str | None = None,
                      vault_key: str | None = None, identity_key: str | None = None) -> dict:
    ctx = RunContext.create(source, dest, policy, run_id, staging, quarantine, full, "ray", ray_address, vault,
                            vault_key, identity_key)
    p = steps.plan(ctx)
    steps.link(ctx, p, workers)
    summaries = steps.anonymize_shards(ctx, p, workers)
    images, faces = steps.collect(ctx, p)
    verdict = steps.validate(ctx, p, images, faces)
    report, files = steps.report(ctx, p, summaries, images, faces, verdict)
    outcome = steps.finish(ctx, p, verdict, images, report, files)
    _artifacts(report, outcome.location)
    return outcome.summary()


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
