"""Throughput of the pipeline on ../shared/data/photos: the local engine (one process) vs Ray (1 and 2
workers) vs the whole Prefect + Ray flow, with the time per stage. Prints a table, writes JSON.

    python bench/pipeline_throughput.py [--photos DIR] [--policy FILE] [--paths local,ray1,ray2,prefect]
                                        [--out bench/results/pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

for k, v in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0",
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
    os.environ.setdefault(k, v)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))
STAGES = ["read_s", "decode_s", "detect_s", "anonymize_s", "measure_s", "write_s"]


def library_run(photos_dir: Path, out: Path, workers: int, policy_path: str | None, engine: str) -> dict:
    """The library pipeline without Prefect: shards in this process (`local`) or on Ray actors (`ray`)."""
    import pandas as pd

    from anonymizer.pipeline import run_pipeline

    t0 = time.perf_counter()
    o = run_pipeline(str(photos_dir), str(out / engine), policy=policy_path, workers=workers, engine=engine)
    wall = time.perf_counter() - t0
    images = pd.read_parquet(out / f"{engine}.staging" / o.run_id / "metrics" / "images.parquet")
    return {"path": f"library pipeline, engine {engine}", "workers": 1 if engine == "local" else workers,
            "wall_s": wall, "released": o.released, "images_per_s": len(images) / wall,
            "stage_s": {s: float(images[s].sum()) for s in STAGES}}


def prefect_path(photos_dir: Path, out: Path, workers: int, policy_path: str | None) -> dict:
    from prefect import flow

    from flows.anonymize_dataset import anonymize_dataset

    @flow
    def warm_up() -> None:
        return None

    t0 = time.perf_counter()
    warm_up()  # starts Prefect's temporary server: a one-off cost, reported apart
    server_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = anonymize_dataset(str(photos_dir), str(out / "rel"), policy=policy_path, workers=workers)
    wall = time.perf_counter() - t1
    n = result["counts"]["listed"]
    return {"path": "Prefect flow + Ray", "workers": workers, "wall_s": wall, "prefect_server_start_s": server_s,
            "released": result["released"], "images_per_s": n / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=SHARED / "data" / "photos")
    ap.add_argument("--policy", help="policy YAML (default: the embedded default policy)")
    ap.add_argument("--paths", default="local,ray1,ray2,prefect", help="which paths to time")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pipeline.json")
    args = ap.parse_args()
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        bootstrap.write_text("{}\n")  # keeps Ray's dashboard from probing cloud metadata addresses
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    tmp = Path(tempfile.mkdtemp(prefix="anonymizer-bench-"))
    import ray

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="WARNING")
    ray_start = time.perf_counter() - t0
    rows = []
    try:
        paths = args.paths.split(",")
        if "local" in paths:
            rows.append(library_run(args.photos, tmp, 1, args.policy, "local"))
        for w in (1, 2):
            if f"ray{w}" in paths:
                rows.append(library_run(args.photos, tmp / f"ray{w}", w, args.policy, "ray"))
        if "prefect" in paths:
            rows.append(prefect_path(args.photos, tmp / "prefect", 2, args.policy))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["overhead_vs_first"] = r["wall_s"] / base - 1
    result = {"images": len(photos), "policy": args.policy or "default", "cpus": os.cpu_count(), "machine": platform.platform(),
              "ray_start_s": ray_start, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{len(photos)} images, {os.cpu_count()} CPUs; Ray start {ray_start:.1f} s (not included below)\n")
    print("| path | workers | wall s | images/s | vs first row |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['workers']} | {r['wall_s']:.1f} | {r['images_per_s']:.2f} | {r['overhead_vs_first']:+.0%} |")
    print("\nTime per stage, summed over images (s):")
    print("| path | workers | " + " | ".join(STAGES) + " |")
    print("|---|---|" + "---|" * len(STAGES))
    for r in rows:
        if "stage_s" in r:
            print(f"| {r['path']} | {r['workers']} | " + " | ".join(f"{r['stage_s'][s]:.1f}" for s in STAGES) + " |")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
