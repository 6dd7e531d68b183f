"""Run shards on Ray: a pool of actors that each load the models once; GPU actors when Ray has GPUs.

Actors are restarted when they die and their shard is retried (max_restarts / max_task_retries).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import ray
from ray.util import ActorPool
from tqdm import tqdm

from anonymizer.logs import event
from anonymizer.policy import Policy
from anonymizer.shard import ShardProcessor, is_done, shard_dir
from anonymizer.storage import Location


def ensure_ray(address: str | None = None) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=True,
             configure_logging=True, ignore_reinit_error=True)


class _ShardActor(ShardProcessor):
    def __init__(self, policy_text: str, source: Location, staging: Location, threads: int) -> None:
        import cv2
        import torch

        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)
        ctx = ray.get_runtime_context()
        super().__init__(policy_text, source, staging, worker=ctx.get_actor_id()[:12])


def default_workers(policy: Policy) -> int:
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= 1:
        return int(resources["GPU"])
    return max(1, int(resources.get("CPU", 1) // 2))


def process_shards(policy: Policy, source: Location, staging: Location, shards: list[list[str]],
                   workers: int | None = None, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Process every shard not yet complete in staging; returns one summary per shard (done ones too)."""
    ensure_ray()
    summaries, todo = [], []
    for i, keys in enumerate(shards):
        if is_done(staging, i):
            summaries.append({**json.loads(shard_dir(staging, i).read_bytes("_SUCCESS")), "resumed": True})
        else:
            todo.append((i, keys))
    if not todo:
        return summaries
    n = min(len(todo), workers or policy.execution.workers or default_workers(policy))
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    cpus = policy.execution.cpus_per_worker
    actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=3, max_task_retries=3)(_ShardActor)
    actors = [actor_cls.remote(policy.text, source, staging, max(1, round(cpus))) for _ in range(n)]
    event("shards.start", shards=len(todo), resumed=len(summaries), workers=n, gpus_per_worker=gpus)
    pool = ActorPool(actors)
    try:
        results = pool.map_unordered(lambda a, job: a.process.remote(*job), todo)
        for summary in tqdm(results, total=len(todo), desc="shards", unit="shard", disable=None):
            summaries.append(summary)
            event("shard.done", **summary)
            if progress:
                progress(summary)
    finally:
        for a in actors:
            ray.kill(a)
    return sorted(summaries, key=lambda s: s["shard"])
