"""The generator's training flow: align + cache the LFW training split, train on Ray Train, export.

Thin: the work is in training/ (data.build_cache, train.train). `steps` is the total to reach;
with `resume` (default) a previous run's checkpoint in `out_dir/checkpoint` is continued from its step.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact


@task(name="align-lfw")
def align_lfw(lfw_root: str | None, split: str, holdout: float, limit: int | None, cache_dir: str | None,
              model_dir: str | None) -> str:
    from training import data

    return str(data.build_cache(lfw_root, split, holdout, limit, cache_dir=cache_dir, model_dir=model_dir))


@flow(name="train-generator", log_prints=True)
def train_generator(steps: int, out_dir: str, config: dict | None = None, name: str = "generator",
                    lfw_root: str | None = None, cache_dir: str | None = None, limit: int | None = None,
                    holdout: float = 0.1, resume: bool = True, num_workers: int = 1, use_gpu: bool | None = None,
                    ray_address: str | None = None, model_dir: str | None = None) -> dict:
    import ray

    from anonymizer.eval import lfw
    from training import train

    cache = align_lfw(lfw_root, "train", holdout, limit, cache_dir, model_dir)
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, logging_level="WARNING")
    resume_from = train.latest_checkpoint(out_dir) if resume else None
    summary = lfw.split_summary(lfw_root or lfw.default_lfw_root(), holdout)
    result = train.train({**(config or {}), "steps": steps, "data_path": cache}, out_dir, name,
                         resume_from=resume_from, num_workers=num_workers, use_gpu=use_gpu, data_summary=summary)
    result["resumed_from"] = str(resume_from) if resume_from else None
    create_markdown_artifact(
        key="generator-training",
        markdown=f"# Generator `{name}`: {result['steps']} steps\n\nweights `{result['weights']}` "
                 f"(sha256 `{result['sha256']}`)\n\nmodel card `{result['card']}`\n\ndata hash `{result['data_hash']}`",
        description="Trained generator and its model card")
    print(result)
    return result
