"""Executors: run every shard not yet complete in staging, and return one summary per shard.

- `local`: in this process, no Ray. For small jobs, debugging and tests. One thread per CPU (at most
  LOCAL_MAX_THREADS; or `workers`) runs shards side by side, each thread with models of its own and its
  CPU share of library threads: most of an image's time is in native code that lets go of the GIL
  (ONNX Runtime, OpenCV, torch, dlib's HOG), and single-threaded networks side by side waste less than
  one network spread over every core.
- `ray`: a pool of actors that each load the models once; several actors share each GPU when Ray has GPUs
  (`execution.actors_per_gpu`, `actor_shape`). Shards are
  handed out as actors free up (a bounded number in flight), so the driver's memory does not grow with
  the dataset. An actor that dies is restarted and its shard retried (max_restarts / max_task_retries);
  the shard's attempt count goes into the report. An actor's library threads are its share of the
  cluster's CPUs.

- `auto` (the Prefect flow's default): `ray` where Ray adds something, else `local` (`choose`). On one
  machine the local threads run the same shards faster, without Ray's start (its processes and the
  actor's own imports: the 21 photos through the Prefect flow on 2 cores take 56.4 s on Ray against 47.9 s,
  docs/benchmarks.md); Ray adds a cluster, and actors that are restarted when they die, where a crash would
  otherwise end the run (a re-run with its run id resumes the completed shards).

Both run the same worker class over the shards: `ShardWorker` (anonymize), or `LinkWorker` (a keyed run's
linking pass, anonymizer.pipeline.link); a shard with the worker's completion marker (`MARKER`) is skipped
(a resumed run). `worker_kwargs` go to the worker's constructor; a secret among them named `env:VAR`
reaches Ray's workers by that variable, never by value.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from anonymizer.logs import event
from anonymizer.pipeline.shard import ShardWorker, is_done, shard_dir
from anonymizer.policy import Execution, Policy
from anonymizer.storage import Location
from anonymizer.vault import VaultWriter

Shards = Iterable[tuple[int, list[str]]]


def _pending(staging: Location, shards: Shards, finished: Callable[[dict], None], marker: str
             ) -> Iterator[tuple[int, list[str]]]:
    """The shards still to run; the summary of each completed one goes to `finished`."""
    for shard_id, keys in shards:
        if is_done(staging, shard_id, marker):
            finished({**json.loads(shard_dir(staging, shard_id).read_bytes(marker)), "resumed": True})
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


# One library import at a time: the local engine's threads load their models (the libraries' first imports)
# under it, and so does `import_in_background`.
LIBRARY_IMPORTS = threading.Lock()


def import_in_background(*modules: str) -> threading.Thread:
    """Import `modules` in a daemon thread while the shards run (an executor's `on_started`: after the workers'
    own imports). The driver needs them after them (the gate's great_expectations takes about 3 s of CPU to
    import, the report's pyplot 0.3 s), when the workers have stopped and cores idle. An import that fails here
    fails again, with its error, where the module is used."""

    def load() -> None:
        for module in modules:
            with LIBRARY_IMPORTS:
                try:
                    __import__(module)
                except Exception:  # noqa: BLE001 - reported by the import where it is used
                    pass

    t = threading.Thread(target=load, name=f"import {', '.join(modules)}", daemon=True)
    t.start()
    return t


# The local engine's default thread count at most: each thread holds models of its own (the default policy's:
# about 0.75 GB of resident memory per thread on the 21 sample photos).
LOCAL_MAX_THREADS = 8
LOCAL_UP_TO = 200  # `auto` runs plans of up to this many images in this process (a few minutes on 2 cores)


def cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_local(policy: Policy, source: Location, staging: Location, shards: Shards, total: int,
              vault: VaultWriter | None = None, workers: int | None = None, worker_cls: type = ShardWorker,
              worker_kwargs: dict[str, Any] | None = None, on_started: Callable[[], None] | None = None,
              **_) -> list[dict]:
    n = max(1, min(total, workers or min(cpus(), LOCAL_MAX_THREADS)))
    summaries, finished, bar = _collector(total)
    kwargs = worker_kwargs or {}
    if n == 1:
        worker = None  # models load at the first shard to do: a fully resumed run loads none
        try:
            for shard_id, keys in _pending(staging, shards, finished, worker_cls.MARKER):
                if worker is None:
                    with LIBRARY_IMPORTS:
                        worker = worker_cls(policy, source, staging, worker="local-1", vault=vault, **kwargs)
                    if on_started:
                        on_started()
                finished(worker.run_shard(shard_id, keys))
        finally:
            bar.close()
        return sorted(summaries, key=lambda s: s["shard"])
    local, loaded = threading.local(), iter(range(1, n + 1))

    def run(job: tuple[int, list[str]]) -> dict:
        if not hasattr(local, "worker"):
            # Each thread's own models, and vault writer (the same run and data key, its own pending records).
            # One thread loads at a time: the libraries' first imports happen there.
            with LIBRARY_IMPORTS:
                own_vault = copy.copy(vault) if vault is not None else None
                k = next(loaded)
                local.worker = worker_cls(policy, source, staging, worker=f"local-{k}", vault=own_vault, **kwargs)
                if k == n and on_started:  # every thread has its models
                    on_started()
        return local.worker.run_shard(*job)

    with library_threads(max(1, cpus() // n)), ThreadPoolExecutor(n) as pool:
        running: set[Future] = set()
        try:
            for job in _pending(staging, shards, finished, worker_cls.MARKER):
                if len(running) >= n:  # bounded in flight, as the Ray pool: the plan is read as shards free up
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        finished(f.result())
                running.add(pool.submit(run, job))
            for f in as_completed(running):
                finished(f.result())
        finally:
            for f in running:
                f.cancel()
            bar.close()
    return sorted(summaries, key=lambda s: s["shard"])


@contextmanager
def library_threads(threads: int) -> Iterator[None]:
    """OpenCV's and torch's thread counts (process-wide; ONNX Runtime sessions take OpenCV's when made), set
    for the block and restored after it."""
    import cv2

    before = cv2.getNumThreads(), os.environ.get("OMP_NUM_THREADS"), _torch_threads(threads)
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(before[0])
        if before[1] is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before[1]
        if before[2] is not None:
            sys.modules["torch"].set_num_threads(before[2])


def _torch_threads(threads: int) -> int | None:
    """Set torch's thread count: now where torch is loaded (its count before is returned), else through
    OMP_NUM_THREADS, which torch reads when a component imports it. The default policies' networks run on
    onnxruntime, so a worker spares torch's 2 s import."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


def choose(engine: str, images: int, ray_address: str | None = None) -> tuple[str, str]:
    """(executor, why) for a plan of `images` images. `auto`: Ray when a cluster is named (`ray_address`,
    RAY_ADDRESS) or this process has joined one already, or for more than LOCAL_UP_TO images; else local."""
    if engine != "auto":
        return engine, "asked for"
    ray = sys.modules.get("ray")
    if ray_address or os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()):
        return "ray", "auto: a Ray cluster is named or already joined"
    if images > LOCAL_UP_TO:
        return "ray", f"auto: {images} images, more than {LOCAL_UP_TO}"
    return "local", f"auto: {images} images, at most {LOCAL_UP_TO}: not worth starting Ray"


def ensure_ray(address: str | None = None) -> None:
    """Connect to RAY_ADDRESS / `address` when given (an existing cluster), else start a local Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 logging_level="WARNING", ignore_reinit_error=True)


class _ShardActor:
    """A worker (`worker_cls`) in a Ray actor, with its CPU share of library threads."""

    def __init__(self, worker_cls: type, threads: int, *args, **kwargs) -> None:
        import cv2
        import ray

        cv2.setNumThreads(threads)
        _torch_threads(threads)
        context = ray.get_runtime_context()
        self.worker = worker_cls(*args, worker=context.get_actor_id()[:12], **kwargs)
        self.gpu_share = context.get_assigned_resources().get("GPU", 0.0)

    def run_shard(self, shard_id: int, keys: list[str]) -> dict:
        """The worker's summary, with the share of a GPU the actor holds (for the report)."""
        return {**self.worker.run_shard(shard_id, keys), "gpu_share": self.gpu_share}


# Storage settings the driver was given reach the workers too. On a cluster, prefer IAM roles for the
# workers: credentials are forwarded only where the driver has them in its environment.
_FORWARD = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_EC2_METADATA_DISABLED",
            "ANONYMIZER_MODEL_DIR")


def _forwarded_env(vault: VaultWriter | None, worker_kwargs: dict[str, Any]) -> dict[str, str]:
    """The storage settings, and the vault's key-encryption key or a worker's secret when it comes from an
    environment variable (`env:VAR`)."""
    secrets = [v[4:] for v in worker_kwargs.values() if isinstance(v, str) and v.startswith("env:")]
    names = (*_FORWARD, *([vault.provider.var] if vault is not None and vault.provider.kind == "env" else []), *secrets)
    return {k: os.environ[k] for k in names if k in os.environ}


def actor_shape(resources: dict[str, float], execution: Execution, total: int, workers: int | None = None
                ) -> tuple[int, float, int]:
    """(actors, GPUs per actor, library threads per actor) on a cluster with `resources`. By default
    `execution.actors_per_gpu` actors share each GPU (Ray's fractional GPUs): one actor's Python glue,
    decoding and cropping between network calls leave its GPU idle, and actors in processes of their own
    are not bound by one interpreter lock; without a GPU, one actor per CPU, as the local engine runs a
    thread per CPU: much of an image's work is serial, so a second image in flight uses a core better than
    a second thread in each network (docs/benchmarks.md "Throughput"). Never more actors than the CPUs hold
    (an actor Ray cannot place would hold its shard forever), nor than shards; shares of a GPU are whole
    fractions, so that Ray can pack them."""
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 1)
    wanted = workers or execution.workers or (gpus * execution.actors_per_gpu if gpus else int(cpus))
    n = max(1, min(total, wanted, int(cpus / execution.cpus_per_worker + 1e-6)))  # 8 // 0.8 is 9.0
    share = 1 / -(-n // gpus) if gpus else 0
    # library threads: the actor's share of the cluster's CPUs, so that fewer actors than cores use them all
    return n, share, max(1, round(execution.cpus_per_worker), int(cpus // n))


def run_on_ray(policy: Policy, source: Location, staging: Location, shards: Shards, total: int,
               workers: int | None = None, ray_address: str | None = None, vault: VaultWriter | None = None,
               worker_cls: type = ShardWorker, worker_kwargs: dict[str, Any] | None = None,
               on_started: Callable[[], None] | None = None) -> list[dict]:
    import ray
    from ray.util import ActorPool

    ensure_ray(ray_address)
    n, gpus, threads = actor_shape(ray.cluster_resources(), policy.execution, total, workers)
    env = {"env_vars": _forwarded_env(vault, worker_kwargs or {})}
    actor_cls = ray.remote(num_cpus=policy.execution.cpus_per_worker, num_gpus=gpus, max_restarts=3,
                           max_task_retries=3, runtime_env=env)(_ShardActor)
    actors: list = []
    pool: ActorPool | None = None  # started at the first shard to do: a fully resumed run starts none
    summaries, finished, bar = _collector(total)
    try:
        for job in _pending(staging, shards, finished, worker_cls.MARKER):
            if pool is None:
                actors = [actor_cls.remote(worker_cls, threads, policy, source, staging, vault=vault,
                                           **(worker_kwargs or {})) for _ in range(n)]
                pool = ActorPool(actors)
                event("shards.start", shards=total, workers=n, gpus_per_worker=gpus, threads_per_worker=threads)
                if on_started:
                    on_started()
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
