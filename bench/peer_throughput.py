"""Wall time against the peer tool deface on the same photos, whole process each, taken in turn.

deface (1.5.0, with onnxruntime, default settings) runs from its own virtual environment, made once and
cached in ~/.cache/anonymizer/deface-venv (its opencv-python would replace our opencv-python-headless).
Ours is the CLI as a user runs it (`anonymizer run PHOTOS DEST`): planning, models, every image, every
measurement the gate uses, validation, the report and the release. Each round runs every side once, in
turn, so that load from other work on the machine falls on all of them alike. Prints each side's median
wall time, the median of its per-round ratios to deface's, its CPU time (user + system: what load from
other work distorts least) and our time per stage (summed over images, from the run's metrics table:
threads overlap, so they can add up to more than the wall time); writes JSON.

    python bench/peer_throughput.py [--photos DIR] [--rounds 3] [--sides prefect,prefect-ray,local,ray] [--realistic]
                                    [--out bench/results/peer_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))
DEFACE = "deface==1.5.0"
DEFACE_VENV = Path.home() / ".cache" / "anonymizer" / "deface-venv"
STAGES = ["read_s", "decode_s", "detect_s", "anonymize_s", "measure_s", "write_s"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def deface_venv() -> Path:
    """The cached environment's `deface` executable; made (from PyPI) when missing or incomplete."""
    marker = DEFACE_VENV / ".ready"
    if not (marker.exists() and marker.read_text() == DEFACE):
        shutil.rmtree(DEFACE_VENV, ignore_errors=True)
        print(f"making {DEFACE_VENV} ({DEFACE} + onnxruntime, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DEFACE_VENV)], check=True)
        pip = [str(DEFACE_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, DEFACE, "onnxruntime"], check=True)
        marker.write_text(DEFACE)
    return DEFACE_VENV / "bin" / "deface"


def timed(cmd: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, float, int]:
    """(wall s, CPU s, exit status) of one command: user + system time of the process and the children it
    reaped (the CPU figure is the one that other work on a shared machine distorts least). An exit status
    not in `ok` is an error."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in ok:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.read()[-2000:].decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def run_deface(exe: Path, photos: list[Path], work: Path) -> dict:
    """deface on a folder (it writes `<name>_anonymized.<ext>` beside each input; its -o names one file)."""
    folder = work / "deface"
    folder.mkdir()
    for p in photos:
        shutil.copy2(p, folder / p.name)
    wall, cpu, _ = timed([str(exe), str(folder)])
    outputs = list(folder.glob("*_anonymized.*"))
    if len(outputs) != len(photos):
        raise RuntimeError(f"deface wrote {len(outputs)} outputs for {len(photos)} photos")
    return {"wall_s": wall, "cpu_s": cpu}


def run_ours(engine: str, photos_dir: Path, work: Path, policy: str | None, workers: int | None) -> dict:
    """`anonymizer run` as a user runs it; stage times from the run's metrics table."""
    import pandas as pd

    dest, run_id = work / f"ours-{engine}", "bench"
    engine, _, executor = engine.partition("-")  # prefect-ray: the flow with its shards on Ray whatever the size
    cmd = [str(Path(sys.executable).parent / "anonymizer"), "run", str(photos_dir), str(dest), "--engine", engine,
           "--run-id", run_id, *(["--executor", executor] if executor else [])]
    if engine in ("ray", "prefect") and workers:
        cmd += ["--workers", str(workers)]
    if policy:
        cmd += ["--policy", policy]
    # Exit 3 (quarantined by the gate) is a run that did all its work: timed, its outcome recorded.
    wall, cpu, status = timed(cmd, ok=(0, 3))
    images = pd.read_parquet(Path(f"{dest}.staging") / run_id / "metrics" / "images.parquet")
    return {"wall_s": wall, "cpu_s": cpu, "released": status == 0, "images": len(images),
            "faces": int(images["faces_detected"].sum()),
            "stage_s": {s: float(images[s].sum()) for s in STAGES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=SHARED / "data" / "photos")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sides", default="prefect,local,ray",
                    help="our engines to time, comma-separated: prefect (the CLI's default: the flow, its shards where "
                         "`--executor auto` puts them), prefect-ray (the flow, shards on Ray), local, ray")
    ap.add_argument("--workers", type=int, default=None,
                    help="Ray actors for the prefect and ray sides (default: the CLI's, one per CPU)")
    ap.add_argument("--realistic", action="store_true", help="also time policies/realistic.yaml (local engine)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "peer_throughput.json")
    args = ap.parse_args()
    for k, v in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0",
                 "ANONYMIZER_MODEL_DIR": str(SHARED / "models")}.items():
        os.environ.setdefault(k, v)
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        bootstrap.write_text("{}\n")  # keeps Ray's dashboard from probing cloud metadata addresses
    exe = deface_venv()
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    sides: dict[str, tuple[str, str | None]] = {f"ours {e}": (e, None) for e in args.sides.split(",") if e}
    if args.realistic:
        sides["ours local, realistic"] = ("local", str(REPO / "policies" / "realistic.yaml"))
    runs: dict[str, list[dict]] = {"deface": [], **{name: [] for name in sides}}
    failed: dict[str, str] = {}
    for r in range(args.rounds):
        for name in [n for n in runs if n not in failed]:
            with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp:
                try:
                    if name == "deface":
                        res = run_deface(exe, photos, Path(tmp))
                    else:
                        engine, policy = sides[name]
                        res = run_ours(engine, args.photos, Path(tmp), policy, args.workers)
                except RuntimeError as exc:  # one side failing leaves the others' figures
                    failed[name] = str(exc)
                    print(f"round {r + 1}/{args.rounds}  {name:24s} FAILED: {exc}", flush=True)
                    continue
            runs[name].append(res)
            print(f"round {r + 1}/{args.rounds}  {name:24s} wall {res['wall_s']:7.1f} s  CPU {res['cpu_s']:7.1f} s",
                  flush=True)

    if "deface" in failed:
        raise SystemExit(f"deface failed: {failed['deface']}")
    base = {k: statistics.median(x[k] for x in runs["deface"]) for k in ("wall_s", "cpu_s")}
    table = []
    for name, rs in ((n, rs) for n, rs in runs.items() if n not in failed):
        wall, cpu = (statistics.median(x[k] for x in rs) for k in ("wall_s", "cpu_s"))
        # Each round's ratio to the deface run beside it (the rounds share the machine's load), and their median.
        per_round = [x["wall_s"] / d["wall_s"] for x, d in zip(rs, runs["deface"])]
        row = {"side": name, "median_wall_s": wall, "walls_s": [x["wall_s"] for x in rs],
               "vs_deface_per_round": per_round, "vs_deface": statistics.median(per_round),
               "median_cpu_s": cpu, "cpus_s": [x["cpu_s"] for x in rs], "cpu_vs_deface": cpu / base["cpu_s"],
               "images_per_s": len(photos) / wall}
        if name != "deface":
            row["stage_s"] = {s: statistics.median(x["stage_s"][s] for x in rs) for s in STAGES}
            row["faces"] = rs[0]["faces"]
            row["released"] = [x["released"] for x in rs]
        if "ray" in name:  # Ray's workers are not the CLI's children: their CPU time is not in the figure
            row["cpu_note"] = "the driver's alone: Ray's worker processes are not counted"
        table.append(row)
    print(f"\n{len(photos)} photos, {args.rounds} rounds, {os.cpu_count()} CPUs; stage seconds summed over images\n")
    print("| side | median wall s | vs deface (median of rounds) | images/s | CPU s | CPU vs deface | " + " | ".join(STAGES) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(STAGES))
    for row in table:
        st = row.get("stage_s", {})
        print(f"| {row['side']} | {row['median_wall_s']:.1f} | {row['vs_deface']:.2f}x | {row['images_per_s']:.2f} | "
              + (f"({row['median_cpu_s']:.1f} driver) | – | " if "cpu_note" in row else
                 f"{row['median_cpu_s']:.1f} | {row['cpu_vs_deface']:.2f}x | ")
              + " | ".join(f"{st[s]:.1f}" if s in st else "–" for s in STAGES) + " |")
    for name, exc in failed.items():
        print(f"| {name} | failed: {exc.splitlines()[-1][:300]} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "photos": str(args.photos), "images": len(photos), "rounds": args.rounds, "cpus": os.cpu_count(),
        "machine": platform.platform(), "deface": DEFACE, "command": " ".join(sys.argv), "sides": table, "failed": failed,
    }, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
