"""Images/s and faces/s of the face-replacing operators (the `generated` generator; with `--bank`, the face
bank of the `realistic` profile), each with and without its identity guard, against blur.

Inputs: ../shared/data/photos (every face the default detectors find, detected once before timing) and
held-out LFW portraits (one face each). Only the operator's `anonymize` call is timed, after one warm-up
image: wall time, and faces per CPU-second of the process ("per core"). The generator runs on `--device`,
the guards' recognizers on a GPU where their runtime finds one. Runs without Ray or Prefect. Prints a table,
writes JSON.

    python bench/generation_throughput.py [--lfw 100] [--bank DIR] [--operators bank,bank+guard] [--threads 1]
        [--device cpu|cuda] [--out bench/results/generation_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))


def load_sets(n_lfw: int) -> dict[str, list]:
    from anonymizer.eval.generation import lfw_samples, photo_samples
    from anonymizer.policy import load_policy

    policy = load_policy(profile="generated")
    return {"photos": photo_samples(SHARED / "data" / "photos", policy),
            "lfw_heldout": lfw_samples(SHARED / "data" / "lfw" / "images", policy, n_lfw)}


def operators(device: str, bank: Path | None) -> dict:
    """Builders, so that only the operators asked for load their models."""
    from anonymizer.policy import load_policy
    from anonymizer.components import build_operator

    generated = load_policy(profile="generated")
    ops = {"blur 0.35": lambda: build_operator(generated, "blur", 0.35),
           "generated": lambda: build_operator(generated, device=device, identity_guard=None),
           "generated + identity guard": lambda: build_operator(generated, device=device)}
    if bank is not None:
        realistic = load_policy(profile="realistic")
        ops["bank"] = lambda: build_operator(realistic, bank=str(bank), identity_guard=False)
        ops["bank + identity guard"] = lambda: build_operator(realistic, bank=str(bank))
    return ops


def time_operator(op, samples) -> dict:
    from anonymizer.anonymize import face_rngs

    s0 = samples[0]
    op.anonymize(s0.rgb, s0.faces, face_rngs(0, s0.key, len(s0.faces)))  # warm-up: first forward, lazy loads
    guard = getattr(op, "guard", None)
    guards = getattr(guard, "guards", [guard]) if guard is not None else []  # the bank's: one per recognizer
    for g in guards:
        g.references = g.judged = 0
    methods: dict[str, int] = {}
    t, cpu = time.perf_counter(), time.process_time()
    for s in samples:
        res = op.anonymize(s.rgb, s.faces, face_rngs(0, s.key, len(s.faces)))
        for m in res.methods or [op.name] * len(s.faces):
            methods[m] = methods.get(m, 0) + 1
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    faces = sum(len(s.faces) for s in samples)
    row = {"images": len(samples), "faces": faces, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
           "images_per_s": round(len(samples) / seconds, 2), "faces_per_s": round(faces / seconds, 1),
           "faces_per_cpu_s": round(faces / cpu, 1), "methods": methods}
    if guards:  # the first recognizer judges every draw
        row["guard_draws_per_face"] = round(guards[0].judged / max(1, guards[0].references), 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=int, default=100, help="held-out LFW faces")
    ap.add_argument("--bank", type=Path, help="a face bank directory: adds the realistic profile's operator")
    ap.add_argument("--operators", help="comma-separated subset of the table's operator names")
    ap.add_argument("--threads", type=int, help="torch's and OpenCV's (hence onnxruntime's) threads; default: theirs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "generation_throughput.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    sets = load_sets(args.lfw)
    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
                          "threads": args.threads,
                          "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                          "platform": platform.platform()}, "rows": {}}
    wanted = set(args.operators.split(",")) if args.operators else None
    print("| operator | set | images | faces | images/s | faces/s | faces per CPU-second | draws per guarded face |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, build in operators(args.device, args.bank).items():
        if wanted is not None and name not in wanted:
            continue
        op = build()
        for set_name, samples in sets.items():
            r = time_operator(op, samples)
            result["rows"][f"{name}|{set_name}"] = r
            print(f"| {name} | {set_name} | {r['images']} | {r['faces']} | {r['images_per_s']} | {r['faces_per_s']} | "
                  f"{r['faces_per_cpu_s']} | {r.get('guard_draws_per_face', '–')} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
