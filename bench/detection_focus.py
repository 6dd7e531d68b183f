"""What the default policy's `detection.focus` changes: its detection with focus against the same detection
with every scale on the whole image (`focus: null`), on the WIDER val subset and on the photos.

Prints, per focus setting: WIDER recall at the policy's min_score and at 2 FP/img; the annotated faces that
the whole-image run finds and the focused one does not (lost) and the reverse (gained), at IoU 0.5 and 0.3,
with the sizes of the lost faces of 16 px and more; on the photos, how many of the whole-image run's faces
the focused run finds again (IoU >= 0.5); and the CPU seconds of detection on each set (one process).
Runs without Ray or Prefect; writes JSON.

    python bench/detection_focus.py [--focus 3,16 --focus 2,8 ...] [--limit N]
        [--out bench/results/detection_focus.json]
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


def run(ensemble, images: list[np.ndarray]) -> tuple[list, float]:
    cpu = time.process_time()
    faces = [ensemble.detect(im) for im in images]
    return faces, time.process_time() - cpu


def churn(samples, whole, focused, iou: float) -> dict:
    """Annotated faces matched by one run and not the other."""
    from anonymizer.eval import detection as ev

    lost, gained, lost_sizes = 0, 0, []
    for s, a, b in zip(samples, whole, focused):
        gts = np.array([f.box for f in s.faces], float).reshape(-1, 4)
        scored = ev._subset_mask(s, None)
        ma = ev.match_image(a, gts, scored, iou)[2]
        mb = ev.match_image(b, gts, scored, iou)[2]
        for k in np.flatnonzero(ma & ~mb):
            lost += 1
            if s.faces[k].size >= 16:
                lost_sizes.append(round(s.faces[k].size, 1))
        gained += int((mb & ~ma).sum())
    return {"lost": lost, "gained": gained, "lost_16px_and_more": sorted(lost_sizes)}


def found_again(whole: list, focused: list) -> int:
    from anonymizer.eval import detection as ev

    n = 0
    for a, b in zip(whole, focused):
        if a and b:
            n += int((ev._iou_matrix(np.array([f.box for f in a]), np.array([f.box for f in b])).max(1) >= 0.5).sum())
    return n


def main() -> None:
    from anonymizer.detect import build_ensemble
    from anonymizer.eval import detection as ev
    from anonymizer.policy import load_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--focus", action="append", help="reach,margin to compare (default: the policy's)")
    ap.add_argument("--limit", type=int, help="only the first N WIDER images")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "detection_focus.json")
    args = ap.parse_args()

    detection = load_policy().detection
    samples = ev.select_samples(ev.load_ground_truth(SHARED / "data" / "widerface_val_subset"), args.limit)
    wider = [ev.load_restored(s) for s in samples]
    photos = [ev._read_rgb(p) for p in ev.photo_images(SHARED / "data" / "photos")]

    def frame(faces_per_image):
        return [ev.to_eval_frame(f, (im.shape[1], im.shape[0])) for f, im in zip(faces_per_image, wider)]

    whole_ens = build_ensemble(detection.model_copy(update={"focus": None}))
    whole_w, cpu_w = run(whole_ens, wider)
    whole_p, cpu_p = run(whole_ens, photos)
    whole_w = frame(whole_w)
    rows = {"whole image": {"wider_cpu_s": round(cpu_w, 1), "photos_cpu_s": round(cpu_p, 1),
                            "photo_faces": sum(map(len, whole_p)), **summary(ev, samples, whole_w)}}
    settings = [tuple(map(float, f.split(","))) for f in args.focus] if args.focus else [
        (detection.focus.reach, detection.focus.margin)]
    for reach, margin in settings:
        focus = detection.focus.model_copy(update={"reach": reach, "margin": int(margin)})
        ens = build_ensemble(detection.model_copy(update={"focus": focus}))
        fw, cw = run(ens, wider)
        fp, cp = run(ens, photos)
        fw = frame(fw)
        rows[f"reach {reach:g}, margin {margin:g}"] = {
            "wider_cpu_s": round(cw, 1), "photos_cpu_s": round(cp, 1), "photo_faces": sum(map(len, fp)),
            "photo_faces_found_again": found_again(whole_p, fp), **summary(ev, samples, fw),
            "churn_iou_0.5": churn(samples, whole_w, fw, 0.5), "churn_iou_0.3": churn(samples, whole_w, fw, 0.3)}
    print("| detection | WIDER recall at min_score (< 8 / 8-16 / 16-32 / >= 32) | FP/img | at 2 FP/img | lost / gained "
          "IoU 0.5 (0.3) | lost >= 16 px | photo faces (whole image's found again) | CPU s WIDER / photos |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        c5, c3 = r.get("churn_iou_0.5"), r.get("churn_iou_0.3")
        lost = f"{c5['lost']} / {c5['gained']} ({c3['lost']} / {c3['gained']})" if c5 else "–"
        big = ", ".join(map(str, c5["lost_16px_and_more"])) if c5 else "–"
        again = f" ({r['photo_faces_found_again']})" if "photo_faces_found_again" in r else ""
        print(f"| {name} | {r['recall']:.3f} ({' / '.join('–' if v is None else f'{v:.3f}' for v in r['by_size'])}) | {r['fp_per_image']:.2f} | "
              f"{r['recall_2fp']:.3f} | {lost} | {big or 'none'} | {r['photo_faces']}{again} | "
              f"{r['wider_cpu_s']} / {r['photos_cpu_s']} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"images": len(samples), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


def summary(ev, samples, detections) -> dict:
    r = ev.score(samples, detections, curve=False)
    return {"recall": r["recall"], "fp_per_image": r["fp_per_image"], "recall_2fp": r["matched_fp"]["recall"],
            "by_size": [r["by_size"][k[0]]["recall"] for k in ev.SIZE_BUCKETS]}


if __name__ == "__main__":
    main()
