"""Images/s and faces/s of the `generated` operator, with and without its identity guard, against blur.

Inputs: ../shared/data/photos (every face the `generated` policy's detectors find, detected once before
timing) and held-out LFW portraits (one face each). Only the operator's `anonymize` call is timed, after one
warm-up image; the generator runs on `--device` (the guard's recognizer, dlib, runs on the CPU). Runs
without Ray or Prefect. Prints a table, writes JSON.

    python bench/generation_throughput.py [--lfw 100] [--device cpu|cuda] [--out bench/results/generation_throughput.json]
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


def operators(device: str) -> dict:
    from anonymizer.policy import load_policy
    from anonymizer.components import build_operator

    policy = load_policy(profile="generated")
    return {"blur 0.35": build_operator(policy, "blur", 0.35),
            "generated": build_operator(policy, device=device, identity_guard=None),
            "generated + identity guard": build_operator(policy, device=device)}


def time_operator(op, samples) -> dict:
    from anonymizer.anonymize import face_rngs

    s0 = samples[0]
    op.anonymize(s0.rgb, s0.faces, face_rngs(0, s0.key, len(s0.faces)))  # warm-up: first forward, lazy loads
    guard = getattr(op, "guard", None)
    if guard is not None:
        guard.references = guard.judged = 0
    methods: dict[str, int] = {}
    t = time.perf_counter()
    for s in samples:
        res = op.anonymize(s.rgb, s.faces, face_rngs(0, s.key, len(s.faces)))
        for m in res.methods or [op.name] * len(s.faces):
            methods[m] = methods.get(m, 0) + 1
    seconds = time.perf_counter() - t
    faces = sum(len(s.faces) for s in samples)
    row = {"images": len(samples), "faces": faces, "seconds": round(seconds, 2),
           "images_per_s": round(len(samples) / seconds, 2), "faces_per_s": round(faces / seconds, 1),
           "methods": methods}
    if guard is not None:
        row["guard_draws_per_face"] = round(guard.judged / max(1, guard.references), 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=int, default=100, help="held-out LFW faces")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "generation_throughput.json")
    args = ap.parse_args()
    sets = load_sets(args.lfw)
    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
                          "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                          "platform": platform.platform()}, "rows": {}}
    print(f"| operator | set | images | faces | images/s | faces/s | draws per guarded face |\n|---|---|---|---|---|---|---|")
    for name, op in operators(args.device).items():
        for set_name, samples in sets.items():
            r = time_operator(op, samples)
            result["rows"][f"{name}|{set_name}"] = r
            print(f"| {name} | {set_name} | {r['images']} | {r['faces']} | {r['images_per_s']} | {r['faces_per_s']} | "
                  f"{r.get('guard_draws_per_face', '–')} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
