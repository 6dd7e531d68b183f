"""Executors: run every shard not yet complete in staging, and return one summary per shard.

- `local`: in this process, one shard after another; no Ray. For small jobs, debugging and tests.
- `ray`: a pool of actors that each load the models once; GPU actors when Ray has GPUs. Shards are
  handed out as actors free up (a bounded number in flight), so the driver's memory does not grow with
  the dataset. An actor that dies is restarted and its shard retried (max_restarts / max_task_retries);
  the shard's attempt count goes into the report.

Both run the same `ShardWorker`; a shard with a completion marker is skipped (a resumed run).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from anonymizer.logs import event
from anonymizer.pipeline.shard import ShardWorker, is_done, shard_dir
from anonymizer.policy import Policy
from anonymizer.storage import Location

Shards = Iterable[tuple[int, list[str]]]


def _pending(staging: Location, shards: Shards, finished: Callable[[dict], None]) -> Iterator[tuple[int, list[str]]]:
    """The shards still to run; the summary of each completed one goes to `finished`."""
    for shard_id, keys in shards:
        if is_done(staging, shard_id):
            finished({**json.loads(shard_dir(staging, shard_id).read_bytes("_SUCCESS")), "resumed": True})
        else:
            yield shard_id, keys


def _collector(total: int) -> tuple[list[dict], Callable[[dict], None], tqdm]:
    summaries: list[dict] = []
    bar = tqdm(total=total, desc="shards", unit="shard", disable=None)

    def finished(summary: dict) -> None:
        summaries.append(summary)
        event("shard.done", **summary)
        bar.update(1)

    return summaries, finished, bar


def run_local(policy: Policy, source: Location, staging: Location, shards: Shards, total: int, **_) -> list[dict]:
    summaries, finished, bar = _collector(total)
    worker: ShardWorker | None = None  # models load at the first shard to do: a fully resumed run loads none
    try:
        for shard_id, keys in _pending(staging, shards, finished):
            worker = worker or ShardWorker(policy, source, staging)
            finished(worker.run_shard(shard_id, keys))
    finally:
        bar.close()
    return sorted(summaries, key=lambda s: s["shard"])


def ensure_ray(address: str | None = None) -> None:
    """Connect to RAY_ADDRESS / `address` when given (an existing cluster), else start a local Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 logging_level="WARNING", ignore_reinit_error=True)


class _ShardActor(ShardWorker):
    def __init__(self, policy: Policy, source: Location, staging: Location, threads: int) -> None:
        import cv2
        import ray
        import torch

        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)
        super().__init__(policy, source, staging, worker=ray.get_runtime_context().get_actor_id()[:12])


# Storage settings the driver was given reach the workers too. On a cluster, prefer IAM roles for the
# workers: credentials are forwarded only where the driver has them in its environment.
_FORWARD = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_EC2_METADATA_DISABLED",
            "ANONYMIZER_MODEL_DIR")


def _forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in _FORWARD if k in os.environ}


def default_workers() -> int:
    import ray

    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= 1:
        return int(resources["GPU"])
    return max(1, int(resources.get("CPU", 1) // 2))


def run_on_ray(policy: Policy, source: Location, staging: Location, shards: Shards, total: int,
               workers: int | None = None, ray_address: str | None = None) -> list[dict]:
    import ray
    from ray.util import ActorPool

    ensure_ray(ray_address)
    n = min(total, workers or policy.execution.workers or default_workers()) or 1
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    cpus = policy.execution.cpus_per_worker
    actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=3, max_task_retries=3,
                           runtime_env={"env_vars": _forwarded_env()})(_ShardActor)
    actors: list = []
    pool: ActorPool | None = None  # started at the first shard to do: a fully resumed run starts none
    summaries, finished, bar = _collector(total)
    try:
        for job in _pending(staging, shards, finished):
            if pool is None:
                actors = [actor_cls.remote(policy, source, staging, max(1, round(cpus))) for _ in range(n)]
                pool = ActorPool(actors)
                event("shards.start", shards=total, workers=n, gpus_per_worker=gpus)
            while not pool.has_free():
                finished(pool.get_next_unordered())
            pool.submit(lambda actor, j: actor.run_shard.remote(*j), job)
        while pool is not None and pool.has_next():
            finished(pool.get_next_unordered())
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    return sorted(summaries, key=lambda s: s["shard"])


EXECUTORS: dict[str, Callable[..., list[dict]]] = {"local": run_local, "ray": run_on_ray}
