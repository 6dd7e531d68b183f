"""Images/s of the default policy's full detector stack (the ensemble the workers run) on 1920×1080 frames,
with its onnxruntime networks on the GPU when onnxruntime has CUDA and on the CPU otherwise; also each
detector alone.

The frames are ../shared/data/photos scaled and centre-cropped to 1920×1080 (aspect kept). One process, as
one Ray actor per GPU runs it; OpenCV (YuNet, CenterFace) uses all the cores it finds. Runs without Ray or
Prefect, so it also runs on the lent GPU machine. Prints a table, writes JSON.

    python bench/detection_throughput.py [--photos DIR] [--model-dir DIR] [--repeat 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))


def frames(photo_dir: Path, width: int = 1920, height: int = 1080) -> list[np.ndarray]:
    out = []
    for p in sorted(photo_dir.glob("*.jpg")):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        s = max(width / bgr.shape[1], height / bgr.shape[0])
        big = cv2.resize(bgr, (round(bgr.shape[1] * s), round(bgr.shape[0] * s)), interpolation=cv2.INTER_CUBIC)
        y, x = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
        out.append(np.ascontiguousarray(cv2.cvtColor(big[y:y + height, x:x + width], cv2.COLOR_BGR2RGB)))
    if not out:
        raise SystemExit(f"no .jpg photo in {photo_dir}")
    return out


def timed(fn, images: list[np.ndarray], repeat: int) -> tuple[float, int]:
    fn(images[0])  # warm-up: model load, cuDNN autotune, OpenCV's per-size nets
    faces, t = 0, time.perf_counter()
    for _ in range(repeat):
        for im in images:
            faces += len(fn(im))
    return (time.perf_counter() - t) / (repeat * len(images)), faces // repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--photos", default=str(SHARED / "data" / "photos"))
    ap.add_argument("--model-dir", default=os.environ.get("ANONYMIZER_MODEL_DIR", str(SHARED / "models")))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="RetinaFace's device (default: cuda if onnxruntime has it)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "detection_throughput.json"))
    args = ap.parse_args()

    import onnxruntime

    from anonymizer.detect import build_ensemble
    from anonymizer.policy import load_policy

    detection = load_policy().detection
    for c in detection.detectors:
        if c.name == "retinaface" and args.device:
            c.params["device"] = args.device
    ensemble = build_ensemble(detection, args.model_dir)
    images = frames(Path(args.photos))
    rf = next((d for d in ensemble.detectors if d.name == "retinaface"), None)
    device = rf._session.get_providers()[0] if rf is not None else "CPUExecutionProvider"
    rows = {}
    for d in ensemble.detectors:
        s, n = timed(d.detect, images, args.repeat)
        rows[d.name] = {"ms_per_image": round(1000 * s, 1), "faces": n}
    s, n = timed(ensemble.detect, images, args.repeat)
    rows["ensemble (default policy)"] = {"ms_per_image": round(1000 * s, 1), "faces": n, "images_per_s": round(1 / s, 2)}
    result = {
        "frame": "1920x1080", "images": len(images), "repeat": args.repeat, "retinaface_device": device,
        "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "opencv_threads": cv2.getNumThreads(),
        "detectors": rows,
    }
    print(f"{'detector':<28}{'ms/image':>10}{'faces':>8}   (1920x1080, {len(images)} frames, RetinaFace on {device},"
          f" {os.cpu_count()} CPUs)")
    for k, v in rows.items():
        print(f"{k:<28}{v['ms_per_image']:>10}{v['faces']:>8}")
    print(f"full stack: {rows['ensemble (default policy)']['images_per_s']} images/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
