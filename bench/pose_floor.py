"""The pose meter's noise floor: the head pose read on each photo's faces and on the same photo moved by one
pixel (and JPEG-compressed as a release is), read in one window and as the mean of several window sizes, and
the CPU time of a read.

Nothing about the faces changes, so every degree measured is the meter's own; a pose change an operator keeps
below this floor cannot be told from none. Runs without Ray or Prefect.

    python bench/pose_floor.py [--photos ../shared/data/photos] [--out bench/results/pose_floor.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))
SIZE_SETS = {"one window (112 px)": (112.0,), "mean of 80, 96, 112, 128 px": (80.0, 96.0, 112.0, 128.0),
             "mean of 96, 112, 128, 144 px (WINDOW_SIZES)": (96.0, 112.0, 128.0, 144.0),
             "mean of 80 to 160 px (6)": (80.0, 96.0, 112.0, 128.0, 144.0, 160.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", default=str(SHARED / "data" / "photos"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "pose_floor.json"))
    args = ap.parse_args()

    from anonymizer.detect import build_detector
    from anonymizer.eval.generation import photo_samples, shifted
    from anonymizer.eval.reid import _jpeg
    from anonymizer.measure.pose import PoseMeter
    from anonymizer.policy import load_policy

    policy = load_policy(profile="realistic")
    samples = photo_samples(Path(args.photos), policy)
    yunet = build_detector("yunet", {"scales": [1.0], "score_threshold": 0.5}, policy.model_dir)
    moved = {s.key: _jpeg(shifted(s.rgb), policy.output.jpeg_quality) for s in samples}
    result = {"photos": args.photos, "faces": sum(len(s.scored) for s in samples), "meters": {}}
    for label, sizes in SIZE_SETS.items():
        meter = PoseMeter(yunet, sizes)
        deltas: dict[str, list[float]] = {"yaw": [], "pitch": [], "roll": []}
        cpu = time.process_time()
        for s in samples:
            faces = [s.faces[i] for i in s.scored]
            for ch in meter.measure(s.rgb, moved[s.key], faces, 0) if faces else []:
                if ch.before is not None and ch.after is not None:
                    for k in deltas:
                        deltas[k].append(abs(getattr(ch.after, k) - getattr(ch.before, k)))
        ms = 1000 * (time.process_time() - cpu) / (2 * result["faces"])  # two reads a face: the photo and it moved
        result["meters"][label] = {k: {"n": len(v), "median": round(float(np.median(v)), 2),
                                       "p95": round(float(np.percentile(v, 95)), 2)} for k, v in deltas.items()}
        result["meters"][label]["cpu_ms_per_read"] = round(ms, 1)
        print(f"{label}: " + ", ".join(f"|Δ{k}| {deltas_k['median']}° / {deltas_k['p95']}°"
                                       for k, deltas_k in result["meters"][label].items() if k in deltas)
              + f" (median / p95), {ms:.1f} ms of CPU a read")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
