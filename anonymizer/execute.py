"""Run shards on Ray: a pool of actors that each load the models once; GPU actors when Ray has GPUs.

Shards are read from the plan and handed out as actors free up (a bounded number in flight), so the
driver's memory does not grow with the dataset. An actor that dies is restarted and its shard retried
(max_restarts / max_task_retries); the shard's attempt count goes into the report.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import ray
from ray.util import ActorPool
from tqdm import tqdm

from anonymizer.logs import event
from anonymizer.policy import Policy
from anonymizer.shard import ShardProcessor, is_done, shard_dir
from anonymizer.storage import Location


def ensure_ray(address: str | None = None) -> None:
    """Connect to RAY_ADDRESS / `address` when given (an existing cluster), else start a local Ray."""
    if ray.is_initialized():
        return
    ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, logging_level="WARNING",
             ignore_reinit_error=True)


class _ShardActor(ShardProcessor):
    def __init__(self, policy_text: str, source: Location, staging: Location, threads: int) -> None:
        import cv2
        import torch

        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)
        super().__init__(policy_text, source, staging, worker=ray.get_runtime_context().get_actor_id()[:12])


# Storage settings the driver was given reach the workers too. On a cluster, prefer IAM roles for the
# workers: credentials are forwarded only where the driver has them in its environment.
_FORWARD = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_EC2_METADATA_DISABLED",
            "ANONYMIZER_MODEL_DIR")


def _forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in _FORWARD if k in os.environ}


def default_workers() -> int:
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= 1:
        return int(resources["GPU"])
    return max(1, int(resources.get("CPU", 1) // 2))


def process_shards(policy: Policy, source: Location, staging: Location, shards: Iterable[tuple[int, list[str]]],
                   total: int, workers: int | None = None, ray_address: str | None = None) -> list[dict]:
    """Process every shard not yet complete in staging; returns one summary per shard (done ones too)."""
    ensure_ray(ray_address)
    n = min(total, workers or policy.execution.workers or default_workers()) or 1
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    cpus = policy.execution.cpus_per_worker
    actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=3, max_task_retries=3,
                           runtime_env={"env_vars": _forwarded_env()})(_ShardActor)
    actors: list = []
    pool: ActorPool | None = None  # started at the first shard to do: a fully resumed run starts none
    summaries: list[dict] = []
    bar = tqdm(total=total, desc="shards", unit="shard", disable=None)

    def finished(summary: dict) -> None:
        summaries.append(summary)
        event("shard.done", **summary)
        bar.update(1)

    try:
        for shard_id, keys in shards:
            if is_done(staging, shard_id):
                finished({**json.loads(shard_dir(staging, shard_id).read_bytes("_SUCCESS")), "resumed": True})
                continue
            if pool is None:
                actors = [actor_cls.remote(policy.text, source, staging, max(1, round(cpus))) for _ in range(n)]
                pool = ActorPool(actors)
                event("shards.start", shards=total, workers=n, gpus_per_worker=gpus)
            while not pool.has_free():
                finished(pool.get_next_unordered())
            pool.submit(lambda actor, job: actor.process.remote(*job), (shard_id, keys))
        while pool is not None and pool.has_next():
            finished(pool.get_next_unordered())
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    return sorted(summaries, key=lambda s: s["shard"])
