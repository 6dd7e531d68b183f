"""Hands over faces: how many of the faces a hand lies over the bank operator's check (`occlusion: hands`,
anonymizer.detect.hands) sends to the fallback, and how many others it sends there too.

Faces, each as the operator sees it (YuNet's box and 5 landmarks, dlib's 68 points for the outline):
- wider: every valid WIDER FACE face of the subset at least 24 px (sqrt(w·h) in the 416×416 image), the image
  stretched back to its original size, matched by YuNet (scales 1, 2) at IoU ≥ 0.4;
- photos: every face of ../shared/data/photos YuNet (scales 1, 2) finds at 40 px or more (the operator's
  min_face_px);
- lfw: the 800 LFW faces listed in the labels (greyscale, tightly cropped portraits).
Labels (bench/data/hand_occlusion.tsv, by eye; a point inside the face): `hand` (a hand at or over the face's
outline), `other` (another occluder: a microphone, a cup, a camera), `not_a_face` (a detector's false positive:
hands taken for a face), `unsure`; an unlisted face is `none`,
except that a WIDER face WIDER flags as occluded counts as `other`. Prints a table, writes JSON.

    python bench/hand_occlusion.py [--shared ../shared] [--out bench/results/hand_occlusion.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "bench" / "data" / "hand_occlusion.tsv"
WIDER_MIN, PHOTO_MIN = 24.0, 40.0
LABEL_ORDER = ("hand", "other", "not_a_face", "unsure", "none")


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _labelled(faces, points: list[tuple[float, float, str]]) -> list[str]:
    """Each face's label: that of a labelled point inside its box (nearest its centre), else `none`."""
    out = ["none"] * len(faces)
    for x, y, label in points:
        inside = [i for i, f in enumerate(faces) if f.x <= x <= f.x + f.w and f.y <= y <= f.y + f.h]
        if inside:
            out[min(inside, key=lambda i: math.hypot(faces[i].x + faces[i].w / 2 - x,
                                                     faces[i].y + faces[i].h / 2 - y))] = label
    return out


def wider(shared: Path, detector):
    """(image name, RGB, YuNet's face, the ground-truth box's centre, default label) per labelled-size face."""
    from anonymizer.eval.detection import load_ground_truth, load_restored
    from anonymizer.faces import box_iou

    for sample in load_ground_truth(shared / "data" / "widerface_val_subset"):
        keep = [g for g in sample.faces if not g.invalid and g.size >= WIDER_MIN]
        if not keep:
            continue
        rgb = load_restored(sample)
        sx, sy = sample.original_w / 416, sample.original_h / 416
        found = detector.detect(rgb)
        for g in keep:
            x, y, w, h = g.box
            gt = (x * sx, y * sy, (x + w) * sx, (y + h) * sy)
            best = max(found, key=lambda f: box_iou(gt, f.box), default=None)
            if best is not None and box_iou(gt, best.box) >= 0.4 and best.landmarks is not None:
                yield sample.name, rgb, best, ((gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2), \
                    "other" if g.occluded else "none"


def main() -> None:
    from anonymizer.anonymize.bankface import OCCLUDED_SHARE
    from anonymizer.bank import shape as sh
    from anonymizer.detect import build_detector
    from anonymizer.detect.hands import HandDetector

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hand_occlusion.json")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # CPU time per face on one thread
    labels = defaultdict(list)
    for line in LABELS.read_text().splitlines()[1:]:
        kind, image, x, y, label = line.split("\t")
        labels[(kind, image)].append((float(x), float(y), label))
    detector = build_detector("yunet", {"scales": [1.0, 2.0], "score_threshold": 0.5})
    landmarker, hands = sh.landmarker("dlib_shape68"), HandDetector()

    def faces():
        for name, rgb, face, (x, y), default in wider(args.shared, detector):
            own = [label for px, py, label in labels[("wider", name)] if abs(px - x) <= 2 and abs(py - y) <= 2]
            yield "wider", f"{name} {x:.0f},{y:.0f}", rgb, face, own[0] if own else default
        photos = args.shared / "data" / "photos"
        for path in sorted(photos.glob("*.jpg")):
            rgb = _rgb(path)
            found = [f for f in detector.detect(rgb) if math.sqrt(f.w * f.h) >= PHOTO_MIN and f.landmarks is not None]
            for f, label in zip(found, _labelled(found, labels[("photos", path.name)])):
                yield "photos", path.name, rgb, f, label
        for (kind, image), points in labels.items():
            if kind == "lfw":
                rgb = _rgb(args.shared / "data" / "lfw" / "images" / image)
                x, y, label = points[0]
                found = [f for f in detector.detect(rgb) if f.x <= x <= f.x + f.w and f.y <= y <= f.y + f.h]
                if found:
                    yield "lfw", image, rgb, max(found, key=lambda f: f.w * f.h), label

    counts, flagged, seconds = defaultdict(Counter), defaultdict(list), defaultdict(float)
    for kind, where, rgb, face, label in faces():
        outline = sh.extend(landmarker(rgb, face))[sh.OUTLINE]
        t0 = time.process_time()
        share = hands.covering(rgb, face, outline)
        seconds[kind] += time.process_time() - t0
        counts[kind][label] += 1
        if share >= OCCLUDED_SHARE:
            counts[kind][f"{label} flagged"] += 1
            flagged[kind].append({"face": where, "label": label, "share": round(share, 3)})
    rows = []
    for kind in ("wider", "photos", "lfw"):
        c = counts[kind]
        n = sum(v for k, v in c.items() if not k.endswith("flagged"))
        rows.append({"set": kind, "faces": n, **{f"{label}": [c[f"{label} flagged"], c[label]]
                                                 for label in LABEL_ORDER},
                     "cpu_ms_per_face": round(1000 * seconds[kind] / max(n, 1), 1), "flagged": flagged[kind]})
    print("| set | faces | hands found | other occluders flagged | not a face flagged | unsure flagged | none flagged "
          "| CPU ms a face |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['faces']} | " + " | ".join(f"{r[k][0]} of {r[k][1]}" for k in
                                                              LABEL_ORDER)
              + f" | {r['cpu_ms_per_face']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"occluded_share": OCCLUDED_SHARE, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
