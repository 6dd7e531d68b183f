"""Local disk vs S3 (moto's server on 127.0.0.1, in its own process), and peak memory as the dataset grows.

For N small generated JPEGs (1,000 and 4,000 by default) it runs `anonymizer run` (plain engine, local
Ray) and samples the peak RSS (VmHWM) of the driver and of every shard actor from /proc. Flat memory is
the goal: the driver streams the listing and the plan, so 4× the objects should cost ≤ 1.2× the memory.

    python bench/storage_scale.py [--sizes 1000 4000] [--out bench/results/storage_scale.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _actor_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"_ShardActor" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def run_measured(args: list[str], env: dict) -> dict:
    """Run the CLI; sample the peak RSS of the driver and of each shard actor while it runs."""
    peaks = {"driver_kb": 0, "actors_kb": {}}
    proc = subprocess.Popen([sys.executable, "-m", "anonymizer.cli", "run", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def sample() -> None:
        while proc.poll() is None:
            peaks["driver_kb"] = max(peaks["driver_kb"], _hwm_kb(proc.pid))
            for pid in _actor_pids():
                peaks["actors_kb"][pid] = max(peaks["actors_kb"].get(pid, 0), _hwm_kb(pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    t.join()
    result = json.loads(out)
    return {"wall_s": wall, "released": result["released"], "objects": result["counts"]["listed"],
            "driver_peak_rss_mb": peaks["driver_kb"] / 1024,
            "actor_peak_rss_mb": max(peaks["actors_kb"].values(), default=0) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "storage_scale.json")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "ANONYMIZER_MODEL_DIR": os.environ.get("ANONYMIZER_MODEL_DIR", str(SHARED / "models"))}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    time.sleep(3)
    from anonymizer.storage import s3_client

    client = s3_client()
    client.create_bucket(Bucket="bench")
    tmp = Path(tempfile.mkdtemp(prefix="anonymizer-scale-"))
    policy = tmp / "policy.yaml"
    policy.write_text((REPO / "policies" / "default.yaml").read_text().replace("shard_size: 4 ", "shard_size: 50 "))
    rows = []
    try:
        for n in args.sizes:
            local = tmp / f"src{n}"
            local.mkdir()
            with ThreadPoolExecutor(16) as pool:
                def put(i: int) -> None:
                    data = _jpeg(i)
                    (local / f"img_{i:06d}.jpg").write_bytes(data)
                    client.put_object(Bucket="bench", Key=f"src{n}/img_{i:06d}.jpg", Body=data)
                list(pool.map(put, range(n)))
            common = ["--policy", str(policy), "--workers", "2", "--engine", "ray"]
            for where, src, dest in (("local", str(local), str(tmp / f"rel{n}")),
                                     ("s3", f"s3://bench/src{n}", f"s3://bench/rel{n}")):
                if where == "local" and n != args.sizes[0]:
                    continue  # local vs S3 throughput is compared at the first size
                r = run_measured([src, dest, *common], env)
                r.update(storage=where, n=n, images_per_s=n / r["wall_s"])
                rows.append(r)
                print(json.dumps(r), flush=True)
    finally:
        moto.terminate()
    s3_rows = {r["n"]: r for r in rows if r["storage"] == "s3"}
    lo, hi = min(s3_rows), max(s3_rows)
    growth = {k: s3_rows[hi][k] / s3_rows[lo][k] for k in ("driver_peak_rss_mb", "actor_peak_rss_mb")}
    result = {"runs": rows, "rss_growth": growth, "sizes": [lo, hi], "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("\n| storage | objects | wall s | images/s | driver peak RSS MB | actor peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['storage']} | {r['n']} | {r['wall_s']:.1f} | {r['images_per_s']:.1f} | "
              f"{r['driver_peak_rss_mb']:.0f} | {r['actor_peak_rss_mb']:.0f} |")
    print(f"\npeak RSS growth {lo} → {hi} objects: driver {growth['driver_peak_rss_mb']:.2f}×, "
          f"actor {growth['actor_peak_rss_mb']:.2f}×\nwritten {args.out}")


if __name__ == "__main__":
    main()
