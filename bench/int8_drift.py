"""How far the identity guard's 8-bit recognizers (anonymizer.int8) land from float32 on this CPU.

Over LFW faces (the central face YuNet finds in every `--step`-th image): each descriptor's distance to its
float32 descriptor, and the change of every pairwise distance, which is what the guard compares against its
thresholds (margin 0.05). Prints whether the CPU has 8-bit dot products, where `precision: auto` runs int8.

    python bench/int8_drift.py [--lfw ../shared/data/lfw/images] [--faces 150] [--out out/int8_drift.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))

from anonymizer import int8  # noqa: E402
from anonymizer.detect import build_detector  # noqa: E402
from anonymizer.eval import calibrate  # noqa: E402
from anonymizer.measure.encoder import build_encoder  # noqa: E402


def lfw_faces(folder: Path, n: int, step: int) -> list[tuple[np.ndarray, object]]:
    yunet = build_detector("yunet", {"score_threshold": 0.6, "scales": [1.0]})
    faces = []
    for path in sorted(folder.glob("*/*.jpg"))[::step]:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        face = calibrate.central_face(yunet.detect(rgb), rgb.shape[:2])
        if face is not None:
            faces.append((rgb, face))
        if len(faces) == n:
            break
    return faces


def drift(name: str, faces: list) -> dict:
    a, b = (np.concatenate([e.embed(rgb, e.align(rgb, [f])) for rgb, f in faces])
            for e in (build_encoder(name, {"device": "cpu", "precision": p}) for p in ("float32", "int8")))
    own = np.linalg.norm(a - b, axis=1)
    pairs = np.abs(np.linalg.norm(a[:, None] - a[None], axis=2) - np.linalg.norm(b[:, None] - b[None], axis=2))
    pairs = pairs[np.triu_indices(len(a), 1)]
    return {"faces": len(a), "descriptor_median": float(np.median(own)), "descriptor_max": float(own.max()),
            "pair_median": float(np.median(pairs)), "pair_p99": float(np.percentile(pairs, 99)),
            "pair_max": float(pairs.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", default=str(SHARED / "data" / "lfw" / "images"))
    ap.add_argument("--faces", type=int, default=150)
    ap.add_argument("--step", type=int, default=13, help="every step-th image of the folder, in name order")
    ap.add_argument("--out", default="out/int8_drift.json")
    args = ap.parse_args()
    faces = lfw_faces(Path(args.lfw), args.faces, args.step)
    result = {"machine": platform.machine(), "dot_products": int8.dot_products(),
              "auto": int8.resolve("auto", False, "bench"),
              "recognizers": {name: drift(name, faces) for name in ("dlib_resnet", "mobilefacenet")}}
    print(f"8-bit dot products: {result['dot_products']} (precision auto runs {result['auto']})")
    for name, r in result["recognizers"].items():
        print(f"{name}: {r['faces']} faces; descriptor moves median {r['descriptor_median']:.3f}, largest "
              f"{r['descriptor_max']:.3f}; pairwise distance moves median {r['pair_median']:.3f}, p99 "
              f"{r['pair_p99']:.3f}, largest {r['pair_max']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
