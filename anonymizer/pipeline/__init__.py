"""The pipeline: plan (list, diff, shard) → shard workers (per image: detect, anonymize, measure) on an
executor → collect → validate → report → release or quarantine.

`run_pipeline` runs it all without Prefect; the Prefect flow in flows/ calls the same steps of `run`.
"""

from anonymizer.pipeline.run import Outcome, RunContext, run_pipeline

__all__ = ["Outcome", "RunContext", "run_pipeline"]
