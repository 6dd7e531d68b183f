"""Detection recall on the WIDER FACE val subset: how many faces a detector configuration would miss.

A missed face is released un-anonymized, so the headline is recall by face size at a bounded false-positive
rate, not AP alone. Conventions (kept fixed so numbers stay comparable between runs):

* Images: the subset's images were stretched to 416x416 by their publisher. Each is resized back to its
  original aspect ratio (by default to its original W x H; `max_side` caps the longer side) before
  detection, and detections are mapped back into the 416x416 frame the ground truth is in.
* Face size = sqrt(w * h) of the ground-truth box in the evaluated 416x416 image: the geometric mean is
  unaffected by which axis the stretch squeezed more. Buckets: <8, 8-16, 16-32, >=32 px.
* Matching: detections in descending score order; each takes the unmatched valid face with the highest
  IoU >= `iou_threshold` (true positive); failing that, one overlapping an `invalid` face (or a face
  outside the scored subset) at >= the threshold is ignored, neither TP nor FP; otherwise it is a false
  positive (duplicates of a matched face are false positives, as in VOC).
* AP: VOC all-point interpolation over the detector's own output (its score threshold truncates the
  curve, so AP is that of the deployed operating point, not of the bare network).
* WIDER easy/medium/hard: only the hard-set membership flag is published here. `hard` = faces flagged
  `in_hard_eval_set`; `medium` = those whose ORIGINAL-image size sqrt(w*h) >= 20 px; `easy` = >= 50 px.
  This size proxy approximates the official EdgeBox-based split; faces outside a subset are ignored, not
  counted as false positives, when that subset is scored.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from anonymizer.detect import Detector, Ensemble, build_detector, build_ensemble
from anonymizer.faces import Face

EVAL_SIDE = 416
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<8", 0.0, 8.0),
    ("8-16", 8.0, 16.0),
    ("16-32", 16.0, 32.0),
    (">=32", 32.0, float("inf")),
)
WIDER_SUBSETS = {"easy": 50.0, "medium": 20.0, "hard": 0.0}  # min ORIGINAL size among hard-flagged faces
DETECTOR_CHOICES = ("yunet", "retinaface", "centerface", "scrfd", "mtcnn", "ensemble", "policy")
MATCHED_FP_RATE = 2.0  # the operating point detectors are compared at (a budget of false positives per image)

# Used where no policy names a detector: policies/default.yaml's detection, chosen on this subset with
# bench/detection_sweep.py (every detector x scale votes, boxes fused by WBF, min_score cuts the vote).
# These params are the fusion's INPUTS: low thresholds, so `yunet` or `retinaface` alone with them gives
# many false positives; compare single detectors on the matched-FP table (cut on their own scores).
RECOMMENDED_PARAMS: dict[str, dict] = {
    "yunet": {"score_threshold": 0.3, "scales": [1.0, 2.0], "max_side": 4096},
    "retinaface": {"score_threshold": 0.3, "scales": [1.0], "max_side": 4096, "tile": 1024, "tile_overlap": 128},
    "centerface": {"score_threshold": 0.3, "scales": [1.0, 1.5], "max_side": 4096, "precision": "float32"},
}
# WIDER subset (bench/detection_sweep.py over cached detections): recall 0.570 at 2.0 FP/img (min_score 0.2:
# 0.569 at 1.96), where YuNet 1,2,3x + RetinaFace had 0.552 and deface 0.517. The
# policy runs recall-first at min_score 0.11 (about 4 FP/img).
RECOMMENDED_MERGE: dict = {"merge": "wbf", "merge_iou": 0.4, "min_score": 0.11, "vote_per_scale": True,
                           "weights": {"yunet": 1.0, "retinaface": 1.0, "centerface": 3.0}}
RECOMMENDED_MERGE_IOU = RECOMMENDED_MERGE["merge_iou"]


# --- ground truth -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GtFace:
    box: tuple[float, float, float, float]  # x, y, w, h in the 416x416 image
    invalid: bool
    hard: bool
    original_size: float  # sqrt(w*h) in the original image
    occluded: bool = False  # WIDER's occlusion flag: partly or heavily occluded

    @property
    def size(self) -> float:
        return float(np.sqrt(max(self.box[2], 0.0) * max(self.box[3], 0.0)))


@dataclass
class Sample:
    name: str
    path: Path
    original_w: int
    original_h: int
    faces: list[GtFace] = field(default_factory=list)


_HEADER = re.compile(r"^#\s*images/(\S+)\s+(\d+)\s+(\d+)(?:.*stretched from (\d+)x(\d+))?")


def load_ground_truth(data_dir: str | Path, boxes_file: str = "boxes_416.txt") -> list[Sample]:
    """Samples with 416-frame boxes; the original size comes from "stretched from WxH" when present."""
    data_dir = Path(data_dir)
    samples: list[Sample] = []
    for line in (data_dir / boxes_file).read_text().splitlines():
        m = _HEADER.match(line)
        if m:
            name, w, h, ow, oh = m.groups()
            samples.append(Sample(name, data_dir / "images" / name, int(ow or w), int(oh or h)))
        elif line.strip() and not line.startswith("#"):
            samples[-1].faces.append(_parse_face(line, samples[-1]))
    return samples


def _parse_face(line: str, sample: Sample) -> GtFace:
    v = line.split()
    x, y, w, h = (float(t) for t in v[:4])
    sx, sy = sample.original_w / EVAL_SIDE, sample.original_h / EVAL_SIDE
    return GtFace((x, y, w, h), v[4] == "1", v[8] == "1", float(np.sqrt(max(w * sx, 0) * max(h * sy, 0))),
                  v[5] != "0")


# --- detection on aspect-restored images ----------------------------------------------------------------


def restored_size(sample: Sample, max_side: int | None = None) -> tuple[int, int]:
    """The original W x H, shrunk so its longer side is at most max_side."""
    w, h = sample.original_w, sample.original_h
    f = min(1.0, max_side / max(w, h)) if max_side else 1.0
    return max(1, round(w * f)), max(1, round(h * f))


def load_restored(sample: Sample, max_side: int | None = None) -> np.ndarray:
    """The 416x416 image as RGB, stretched back to the original aspect ratio."""
    bgr = cv2.imread(str(sample.path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(sample.path)
    w, h = restored_size(sample, max_side)
    return cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)


def to_eval_frame(faces: Iterable[Face], restored_wh: tuple[int, int]) -> list[Face]:
    """Map detections from the restored image back into the 416x416 ground-truth frame."""
    sx, sy = EVAL_SIDE / restored_wh[0], EVAL_SIDE / restored_wh[1]
    out = []
    for f in faces:
        lm = None if f.landmarks is None else f.landmarks * np.array([sx, sy], np.float32)
        out.append(Face(f.x * sx, f.y * sy, f.w * sx, f.h * sy, f.score, f.detector, lm))
    return out


def detect_samples(
    detect: Callable[[np.ndarray], list[Face]], samples: Sequence[Sample], max_side: int | None = None
) -> tuple[list[list[Face]], list[float]]:
    """Detections in the 416 frame and milliseconds per image (detection only, not decoding)."""
    detections, ms = [], []
    for s in samples:
        image = load_restored(s, max_side)
        t0 = time.perf_counter()
        faces = detect(image)
        ms.append((time.perf_counter() - t0) * 1000)
        detections.append(to_eval_frame(faces, (image.shape[1], image.shape[0])))
    return detections, ms


# --- scoring ------------------------------------------------------------------------------------------


def _iou_matrix(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU between (n, 4) and (m, 4) x, y, w, h boxes."""
    if len(dets) == 0 or len(gts) == 0:
        return np.zeros((len(dets), len(gts)))
    d0, g0 = dets[:, None, :2], gts[None, :, :2]
    d1, g1 = d0 + dets[:, None, 2:], g0 + gts[None, :, 2:]
    wh = np.clip(np.minimum(d1, g1) - np.maximum(d0, g0), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = (dets[:, 2] * dets[:, 3])[:, None] + (gts[:, 2] * gts[:, 3])[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def match_image(
    dets: Sequence[Face], gt_boxes: np.ndarray, scored: np.ndarray, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching (module docstring): (det scores, det labels 1=TP 0=FP -1=ignored, gt matched)."""
    scores, labels, gt_index = _match(dets, gt_boxes, scored, iou_threshold)
    matched = np.zeros(len(gt_boxes), bool)
    matched[gt_index[gt_index >= 0]] = True
    return scores, labels, matched


def _match(
    dets: Sequence[Face], gt_boxes: np.ndarray, scored: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """match_image's greedy matching, also giving which face each true positive took (-1: none)."""
    order = sorted(range(len(dets)), key=lambda i: -dets[i].score)
    scores = np.array([dets[i].score for i in order], float)
    boxes = np.array([[dets[i].x, dets[i].y, dets[i].w, dets[i].h] for i in order], float).reshape(-1, 4)
    ious = _iou_matrix(boxes, gt_boxes.reshape(-1, 4))
    matched = np.zeros(len(gt_boxes), bool)
    labels = np.zeros(len(order), int)
    gt_index = np.full(len(order), -1, int)
    for i in range(len(order)):
        hit = ious[i] >= iou_threshold
        free = hit & scored & ~matched
        if free.any():
            j = int(np.argmax(np.where(free, ious[i], -1)))
            matched[j], labels[i], gt_index[i] = True, 1, j
        elif (hit & ~scored).any():
            labels[i] = -1
    return scores, labels, gt_index


def recall_at_fp_rate(
    samples: Sequence[Sample], detections: Sequence[Sequence[Face]], fp_per_image: float = 2.0,
    iou_threshold: float = 0.5,
) -> dict:
    """Recall (overall and by size) with the detections cut at the score where FP/img reaches `fp_per_image`.

    The cut is taken on the detector's own score ranking over the whole set: the lowest threshold whose
    kept detections (score >= threshold) make at most `fp_per_image` false positives per image. Greedy
    matching goes in descending score order, so cutting the matched list is the same as re-matching at
    that threshold. Detectors that never make that many false positives keep all their detections
    (`reached` false). This compares detectors at one operating point whatever thresholds they shipped with.
    """
    scores, labels, faces = [], [], []
    sizes: list[float] = []
    for sample, dets in zip(samples, detections):
        boxes = np.array([f.box for f in sample.faces], float).reshape(-1, 4)
        scored = _subset_mask(sample, None)
        s, lab, gt_index = _match(dets, boxes, scored, iou_threshold)
        offset = len(sizes)
        column = np.cumsum(scored) - 1  # face index -> index among the scored faces of this image
        sizes += [f.size for f, m in zip(sample.faces, scored) if m]
        scores.append(s)
        labels.append(lab)
        faces.append(np.where(gt_index >= 0, offset + column[np.maximum(gt_index, 0)], -1))
    budget = fp_per_image * len(samples)
    s, lab, face = (np.concatenate(a) if a else np.zeros(0) for a in (scores, labels, faces))
    order = np.argsort(-s, kind="stable")
    s, lab, face = s[order], lab[order].astype(int), face[order].astype(int)
    fp = np.cumsum(lab == 0)
    # a cut may only fall between different scores: keep the longest prefix ending at a score change
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, int)
    ok = ends[fp[ends] <= budget]
    keep = int(ok[-1]) + 1 if len(ok) else 0
    hits = np.zeros(len(sizes), bool)
    hits[face[:keep][face[:keep] >= 0]] = True
    sizes_a = np.array(sizes)
    return {
        "fp_rate": fp_per_image,
        "threshold": float(s[keep - 1]) if keep else None,
        "reached": bool(len(s) and fp[-1] > budget),
        "detections": keep,
        "fp_per_image": float(fp[keep - 1] / max(len(samples), 1)) if keep else 0.0,
        "recall": float(hits.mean()) if len(hits) else None,
        "by_size": _by_size(sizes_a, hits),
    }


def average_precision(scores: np.ndarray, labels: np.ndarray, n_positives: int) -> float:
    """VOC all-point AP over score-sorted detections (ignored ones removed)."""
    keep = labels >= 0
    scores, labels = scores[keep], labels[keep]
    if n_positives == 0 or len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] == 1)
    fp = np.cumsum(labels[order] == 0)
    recall = tp / n_positives
    precision = tp / np.maximum(tp + fp, 1e-9)
    r = np.concatenate([[0.0], recall, [recall[-1]]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def pr_curve(scores: np.ndarray, labels: np.ndarray, n_positives: int) -> tuple[list[float], list[float]]:
    keep = labels >= 0
    order = np.argsort(-scores[keep], kind="stable")
    lab = labels[keep][order]
    tp, fp = np.cumsum(lab == 1), np.cumsum(lab == 0)
    recall = (tp / max(n_positives, 1)).tolist()
    precision = (tp / np.maximum(tp + fp, 1)).tolist()
    return recall, precision


def _subset_mask(sample: Sample, subset: str | None) -> np.ndarray:
    """Which faces are scored: valid ones, and for a WIDER subset only its hard-flagged, large-enough ones."""
    valid = np.array([not f.invalid for f in sample.faces], bool)
    if subset is None:
        return valid
    min_size = WIDER_SUBSETS[subset]
    return valid & np.array([f.hard and f.original_size >= min_size for f in sample.faces], bool)


def score(
    samples: Sequence[Sample], detections: Sequence[Sequence[Face]], iou_threshold: float = 0.5,
    ms_per_image: Sequence[float] | None = None, curve: bool = True, fp_rate: float | None = MATCHED_FP_RATE,
) -> dict:
    """Recall overall / by size / by WIDER subset, false positives per image, AP, optionally a PR curve,
    and (`matched_fp`) recall with the detections cut on their own scores at `fp_rate` FP/img."""
    result = _score_subset(samples, detections, None, iou_threshold, curve)
    if fp_rate is not None:
        result["matched_fp"] = recall_at_fp_rate(samples, detections, fp_rate, iou_threshold)
    result["wider"] = {
        name: {k: v for k, v in _score_subset(samples, detections, name, iou_threshold, False).items()
               if k in ("faces", "recall", "ap")}
        for name in WIDER_SUBSETS
    }
    result["images"] = len(samples)
    if ms_per_image is not None and len(ms_per_image):
        result["ms_per_image"] = float(np.mean(ms_per_image))
    return result


def _score_subset(samples, detections, subset, iou_threshold, curve) -> dict:
    all_scores, all_labels, sizes, hits = [], [], [], []
    for sample, dets in zip(samples, detections):
        boxes = np.array([f.box for f in sample.faces], float).reshape(-1, 4)
        scored = _subset_mask(sample, subset)
        s, lab, matched = match_image(dets, boxes, scored, iou_threshold)
        all_scores.append(s)
        all_labels.append(lab)
        sizes += [f.size for f, m in zip(sample.faces, scored) if m]
        hits += [bool(h) for h, m in zip(matched, scored) if m]
    scores, labels = np.concatenate(all_scores or [[]]), np.concatenate(all_labels or [[]]).astype(int)
    sizes_a, hits_a = np.array(sizes), np.array(hits, bool)
    out = {
        "faces": int(len(hits_a)),
        "recall": float(hits_a.mean()) if len(hits_a) else None,
        "by_size": _by_size(sizes_a, hits_a),
        "detections": int(len(labels)),
        "true_positives": int((labels == 1).sum()),
        "false_positives": int((labels == 0).sum()),
        "fp_per_image": float((labels == 0).sum() / max(len(samples), 1)),
        "ap": average_precision(scores, labels, len(hits_a)),
    }
    if curve:
        recall, precision = pr_curve(scores, labels, len(hits_a))
        out["pr_curve"] = _thin(recall, precision)
    return out


def _by_size(sizes: np.ndarray, hits: np.ndarray) -> dict:
    out = {}
    for name, lo, hi in SIZE_BUCKETS:
        m = (sizes >= lo) & (sizes < hi) if len(sizes) else np.zeros(0, bool)
        out[name] = {"faces": int(m.sum()), "recall": float(hits[m].mean()) if m.any() else None}
    return out


def _thin(recall: list[float], precision: list[float], points: int = 200) -> dict:
    """At most `points` points of the curve, so the JSON stays small."""
    idx = np.unique(np.linspace(0, len(recall) - 1, min(points, len(recall))).astype(int)) if recall else []
    return {"recall": [round(recall[i], 4) for i in idx], "precision": [round(precision[i], 4) for i in idx]}


# --- the harness --------------------------------------------------------------------------------------


def evaluate(
    detector: Detector, data_dir: str | Path, *, limit: int | None = None, max_side: int | None = None,
    iou_threshold: float = 0.5, names: Sequence[str] | None = None,
) -> dict:
    """Run `detector` on the subset (or its first `limit` images, or the `names` listed) and score it."""
    samples = select_samples(load_ground_truth(data_dir), limit, names)
    detections, ms = detect_samples(detector.detect, samples, max_side)
    result = score(samples, detections, iou_threshold, ms)
    result["detector"] = getattr(detector, "name", type(detector).__name__)
    return result


def select_samples(samples: list[Sample], limit: int | None = None, names: Sequence[str] | None = None) -> list[Sample]:
    if names:
        wanted = set(names)
        samples = [s for s in samples if s.name in wanted]
    return samples[:limit] if limit else samples


def detector_params(policy_path: str | Path | None) -> tuple[dict[str, dict], float, str | None]:
    """Per-detector params and merge IoU: the policy's where it names the detector, else ours."""
    params = {k: dict(v) for k, v in RECOMMENDED_PARAMS.items()}
    merge_iou, model_dir = RECOMMENDED_MERGE["merge_iou"], None
    if policy_path:
        from anonymizer.policy import load_policy

        policy = load_policy(policy_path)
        params.update({c.name: dict(c.params) for c in policy.detection.detectors})
        merge_iou, model_dir = policy.detection.merge_iou, policy.model_dir
    return params, merge_iou, model_dir


def merge_settings(policy_path: str | Path | None) -> dict:
    """How 'ensemble' merges: the policy's merge, min_score, vote_per_scale and weights, else ours."""
    settings = {k: (dict(v) if isinstance(v, dict) else v) for k, v in RECOMMENDED_MERGE.items()}
    if policy_path:
        from anonymizer.policy import load_policy

        d = load_policy(policy_path).detection
        settings.update(merge=d.merge, merge_iou=d.merge_iou, min_score=d.min_score, vote_per_scale=d.vote_per_scale)
        settings["weights"] = {c.name: c.weight for c in d.detectors}
    return settings


def build_named_detector(name: str, policy_path: str | Path | None = None, model_dir: str | None = None) -> Detector:
    """'yunet', 'retinaface', 'centerface', 'ensemble' (the recommended detectors, or the policy's, merged as
    the policy says, else as RECOMMENDED_MERGE), or
    'policy' (the policy's `detection:` section exactly as the pipeline builds it; no policy: the default)."""
    if name == "policy":
        from anonymizer.policy import load_policy

        policy = load_policy(policy_path)
        ensemble = build_ensemble(policy.detection, model_dir or policy.model_dir)
        ensemble.name = f"policy:{policy.name}"
        return ensemble
    params, _, policy_model_dir = detector_params(policy_path)
    model_dir = model_dir or policy_model_dir
    if name == "ensemble":
        m = merge_settings(policy_path)
        names = tuple(m["weights"])
        parts = [build_detector(n, params[n], model_dir) for n in names]
        ensemble = Ensemble(parts, m["merge_iou"], m["merge"], [m["weights"][n] for n in names], m["min_score"],
                            m["vote_per_scale"])
        ensemble.name = "ensemble"
        return ensemble
    return build_detector(name, params.get(name, {}), model_dir)


def plot(results: dict[str, dict], path: str | Path) -> None:
    """Recall by size bucket per detector (left) and precision-recall curves (right)."""
    from anonymizer.pyplot import plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    buckets = [b[0] for b in SIZE_BUCKETS] + ["all"]
    width = 0.8 / max(len(results), 1)
    for i, (name, r) in enumerate(results.items()):
        vals = [r["by_size"][b]["recall"] or 0.0 for b in buckets[:-1]] + [r["recall"] or 0.0]
        ax1.bar(np.arange(len(buckets)) + i * width, vals, width, label=name)
        if "pr_curve" in r:
            ax2.plot(r["pr_curve"]["recall"], r["pr_curve"]["precision"], label=f"{name} (AP {r['ap']:.3f})")
    ax1.set_xticks(np.arange(len(buckets)) + width * (len(results) - 1) / 2, buckets)
    ax1.set(xlabel="face size sqrt(w*h), px in the 416 image", ylabel="recall @ IoU 0.5", ylim=(0, 1))
    ax1.legend()
    ax2.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall")
    ax2.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(results: dict[str, dict]) -> str:
    head = "| detector | " + " | ".join(f"{b[0]} px" for b in SIZE_BUCKETS)
    head += " | overall | easy | medium | hard | FP/img | AP | ms/img |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        sizes = " | ".join(_fmt(r["by_size"][b[0]]["recall"]) for b in SIZE_BUCKETS)
        wider = " | ".join(_fmt(r["wider"][k]["recall"]) for k in WIDER_SUBSETS)
        ms = f"{r['ms_per_image']:.0f}" if "ms_per_image" in r else "-"
        lines.append(f"| {name} | {sizes} | {_fmt(r['recall'])} | {wider} | {r['fp_per_image']:.2f} | {r['ap']:.3f} | {ms} |")
    matched = {name: r["matched_fp"] for name, r in results.items() if r.get("matched_fp")}
    if matched:
        rate = next(iter(matched.values()))["fp_rate"]
        head = f"| detector @ {rate:g} FP/img | " + " | ".join(f"{b[0]} px" for b in SIZE_BUCKETS)
        head += " | overall | FP/img | score cut |"
        lines += ["", f"Recall at a matched false-positive rate: each detector's detections cut on its own score "
                  f"ranking where FP/img reaches {rate:g} (* = never reaches it: all its detections kept).",
                  head, "|" + "---|" * (head.count("|") - 1)]
        for name, m in matched.items():
            sizes = " | ".join(_fmt(m["by_size"][b[0]]["recall"]) for b in SIZE_BUCKETS)
            cut = "-" if m["threshold"] is None else f"{m['threshold']:.3f}" + ("" if m["reached"] else "*")
            lines.append(f"| {name} | {sizes} | {_fmt(m['recall'])} | {m['fp_per_image']:.2f} | {cut} |")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


# --- auditors -----------------------------------------------------------------------------------------
#
# The auditor re-detects faces to check the primary detectors' work, so what matters is the share of faces
# it finds by size at a false-positive rate a release can live with (an auditor face no mask covers fails
# the run). Each candidate runs once at a low score cut; the cut that gives at most MATCHED_FP_RATE FP/img
# on WIDER is then its deployed setting, and the figures are re-scored at exactly that setting. On real
# photos without ground truth, the reference is the default policy's detectors (what the pipeline anonymizes): recall there
# is the share of those faces the auditor also finds, and "unmatched" its faces that match none of them
# (a missed face or a false positive: either would fail the uncovered-faces check).

AUDITOR_BUCKETS: tuple[tuple[str, float, float], ...] = (("<16", 0.0, 16.0), ("16-32", 16.0, 32.0), (">=32", 32.0, float("inf")))
# name -> the detector, its params as measured (a low cut), the parameter ("name" or "name.index") that cuts,
# and other cuts to score too ("also")
AUDITOR_CANDIDATES: dict[str, dict] = {
    "scrfd": {"detector": "scrfd", "params": {"score_threshold": 0.2, "scales": [1.0], "max_side": 4096},
              "cut": "score_threshold"},
    # also: higher O-Net cuts, for fewer false positives on real photos (hands, clothing)
    "mtcnn": {"detector": "mtcnn", "params": {"min_face_size": 20, "thresholds": [0.6, 0.7, 0.5]}, "cut": "thresholds.2",
              "also": [0.8, 0.9]},
    # MTCNN's own knobs (docs/benchmarks.md): looser P-/R-Net cuts pass more candidates to O-Net; a smaller
    # min_face_size starts the pyramid at the original resolution; factor 0.8 gives more pyramid levels
    "mtcnn_p055_r06": {"detector": "mtcnn", "params": {"min_face_size": 20, "thresholds": [0.55, 0.6, 0.5]},
                       "cut": "thresholds.2", "also": [0.8, 0.9]},
    "mtcnn_p04_r07": {"detector": "mtcnn", "params": {"min_face_size": 20, "thresholds": [0.4, 0.7, 0.5]},
                      "cut": "thresholds.2", "also": [0.7, 0.8, 0.9]},
    "mtcnn_p04_r05": {"detector": "mtcnn", "params": {"min_face_size": 20, "thresholds": [0.4, 0.5, 0.3]},
                      "cut": "thresholds.2", "also": [0.8]},
    "mtcnn_min12": {"detector": "mtcnn", "params": {"min_face_size": 12, "thresholds": [0.4, 0.5, 0.3]},
                    "cut": "thresholds.2", "also": [0.8]},
    "mtcnn_f08": {"detector": "mtcnn", "params": {"min_face_size": 20, "factor": 0.8, "thresholds": [0.4, 0.5, 0.3]},
                  "cut": "thresholds.2", "also": [0.8]},
    # also: the cut policies/default.yaml runs it at
    "dlib_hog": {"detector": "dlib_hog", "params": {"upsample": 1, "min_score": -0.3}, "cut": "min_score", "also": [0.2]},
    "dlib_cnn": {"detector": "dlib_cnn", "params": {"upsample": 0}, "cut": None},
    "opencv_haar": {"detector": "opencv_haar", "params": {"min_size": 24, "min_neighbors": 3, "min_score": 0.0},
                    "cut": "min_score"},
}


def _with_cut(params: dict, cut: str, value: float) -> dict:
    out = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in params.items()}
    key, _, index = cut.partition(".")
    if index:
        out[key][int(index)] = value
    else:
        out[key] = value
    return out


def _auditor_buckets(by_size: dict) -> dict:
    """The harness's size buckets merged into the auditor's: <16 = <8 + 8-16."""
    small = [by_size[b] for b in ("<8", "8-16")]
    faces = sum(b["faces"] for b in small)
    hits = sum(b["faces"] * (b["recall"] or 0.0) for b in small)
    return {"<16": {"faces": faces, "recall": hits / faces if faces else None},
            "16-32": by_size["16-32"], ">=32": by_size[">=32"]}


def auditor_cut(samples: Sequence[Sample], detections: list[list[Face]], iou_threshold: float = 0.5) -> float | None:
    """The score cut at MATCHED_FP_RATE FP/img, rounded up to 3 decimals (so it stays within the budget); None
    where it is never reached."""
    matched = recall_at_fp_rate(samples, detections, MATCHED_FP_RATE, iou_threshold)
    if not matched["reached"] or matched["threshold"] is None:
        return None
    return float(np.ceil(matched["threshold"] * 1000 - 1e-9) / 1000)


def _above(detections: Sequence[Sequence[Face]], cut: float | None) -> list[list[Face]]:
    """What the detector outputs with its score cut raised to `cut`: greedy NMS and cascades keep a box only
    for higher-scoring ones, so raising the cut removes boxes and never changes the rest."""
    return [list(d) if cut is None else [f for f in d if f.score >= cut] for d in detections]


def auditor_wider(samples: Sequence[Sample], detections: list[list[Face]], iou_threshold: float = 0.5) -> dict:
    """Recall by auditor size bucket and FP/img of these detections."""
    r = score(samples, detections, iou_threshold, curve=False, fp_rate=None)
    buckets = _auditor_buckets(r["by_size"])
    return {"images": r["images"], "faces": {k: v["faces"] for k, v in buckets.items()},
            "recall": {k: v["recall"] for k, v in buckets.items()}, "recall_all": r["recall"],
            "fp_per_image": r["fp_per_image"], "iou": iou_threshold, "fp_budget": MATCHED_FP_RATE}


def photo_images(photos_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(photos_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def detect_photos(detect: Callable[[np.ndarray], list[Face]], photos: Sequence[Path]) -> tuple[list[list[Face]], list[float]]:
    out, ms = [], []
    for p in photos:
        image = _read_rgb(p)
        t0 = time.perf_counter()
        out.append(detect(image))
        ms.append((time.perf_counter() - t0) * 1000)
    return out, ms


def photo_agreement(detections: Sequence[Sequence[Face]], reference: Sequence[Sequence[Face]],
                    iou_threshold: float = 0.5) -> dict:
    """Share of the reference's faces the candidate finds (greedy IoU matching), by reference face size
    sqrt(w*h) in the photo's pixels, and the candidate's faces per image that match no reference face."""
    sizes, hits, unmatched = [], [], 0
    for dets, ref in zip(detections, reference):
        boxes = np.array([[f.x, f.y, f.w, f.h] for f in ref], float).reshape(-1, 4)
        _, labels, matched = match_image(dets, boxes, np.ones(len(ref), bool), iou_threshold)
        unmatched += int((labels == 0).sum())
        sizes += [float(np.sqrt(max(f.w, 0) * max(f.h, 0))) for f in ref]
        hits += matched.tolist()
    sizes_a, hits_a = np.array(sizes), np.array(hits, bool)
    by_size = {}
    for name, lo, hi in AUDITOR_BUCKETS:
        m = (sizes_a >= lo) & (sizes_a < hi) if len(sizes_a) else np.zeros(0, bool)
        by_size[name] = (int(m.sum()), float(hits_a[m].mean()) if m.any() else None)
    return {"images": len(reference), "reference_faces": int(len(hits_a)),
            "recall": float(hits_a.mean()) if len(hits_a) else None,
            "faces_by_size": {k: v[0] for k, v in by_size.items()}, "recall_by_size": {k: v[1] for k, v in by_size.items()},
            "unmatched_per_image": unmatched / max(len(reference), 1), "iou": iou_threshold}


def evaluate_auditors(names: Sequence[str], data_dir: str | Path, photos_dir: str | Path | None = None,
                      policy_path: str | Path | None = None, model_dir: str | None = None, limit: int | None = None,
                      iou_threshold: float = 0.5, log: Callable[[str], None] = print) -> dict:
    """Each candidate auditor once on WIDER and on the photos, scored at the cut that gives MATCHED_FP_RATE
    FP/img on WIDER (its deployed params) and at each of its `also` cuts (e.g. a policy's current setting);
    on the photos against the policy's (default: the default policy's) detectors."""
    samples = select_samples(load_ground_truth(data_dir), limit)
    photos = photo_images(photos_dir) if photos_dir else []
    reference, ref_name = None, None
    if photos:
        ref = build_named_detector("policy", policy_path, model_dir)
        reference, _ = detect_photos(ref.detect, photos)
        ref_name = ref.name
        log(f"reference {ref_name}: {sum(map(len, reference))} faces on {len(photos)} photos")
    out = {}
    for name in names:
        c = AUDITOR_CANDIDATES[name]
        detector = build_detector(c["detector"], c["params"], model_dir)
        detections, ms = detect_samples(detector.detect, samples, None)
        on_photos, pms = detect_photos(detector.detect, photos) if photos else ([], [])
        cuts = [auditor_cut(samples, detections, iou_threshold) if c["cut"] else None]
        cuts += [v for v in c.get("also", ()) if v not in cuts]
        for i, cut in enumerate(cuts):
            row_name = name if i == 0 else f"{name}@{cut:g}"
            params = c["params"] if cut is None else _with_cut(c["params"], c["cut"], cut)
            wider = {**auditor_wider(samples, _above(detections, cut), iou_threshold),
                     "ms_per_image": float(np.mean(ms)) if ms else None}
            row = {"detector": c["detector"], "params": params, "wider": wider}
            if photos:
                row["photos"] = {**photo_agreement(_above(on_photos, cut), reference, iou_threshold),
                                 "reference": ref_name, "ms_per_image": float(np.mean(pms))}
            out[row_name] = row
            log(auditor_table({row_name: row}).splitlines()[-1])
    return out


def auditor_table(results: dict[str, dict]) -> str:
    head = ("| auditor (deployed params) | WIDER <16 | 16-32 | >=32 | FP/img | ms/img | photos <16 | 16-32 | >=32 "
            "| all | unmatched/img | ms/img |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        w, p = r["wider"], r.get("photos")
        cells = [_fmt(w["recall"][b]) for b, _, _ in AUDITOR_BUCKETS]
        cells += [f"{w['fp_per_image']:.2f}", f"{w['ms_per_image']:.0f}" if w.get("ms_per_image") else "-"]
        if p:
            cells += [_fmt(p["recall_by_size"][b]) for b, _, _ in AUDITOR_BUCKETS]
            cells += [_fmt(p["recall"]), f"{p['unmatched_per_image']:.2f}", f"{p['ms_per_image']:.0f}"]
        else:
            cells += ["-"] * 6
        params = json.dumps(r["params"], separators=(",", ":"))
        lines.append(f"| {name} `{params}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_strength(results: dict[str, dict], path: str | Path, command: str) -> None:
    """Merge these auditors' figures into the strength file the audit report reads (anonymizer.detect.strength)."""
    from anonymizer.detect.strength import auditor_key

    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    entries = data.get("auditors", {})
    for r in results.values():
        entries[auditor_key(r["detector"], r["params"])] = {
            "detector": r["detector"], "params": r["params"], "wider": r["wider"],
            **({"photos": r["photos"]} if r.get("photos") else {}), "command": command}
    data = {"about": "Auditor recall by face size, measured by `anonymizer eval detection --auditors`; keyed by "
                     "detector and full params (anonymizer/detect/strength.py).", "auditors": entries}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="the widerface_val_subset directory")
    parser.add_argument("--out", required=True, help="directory for detection_eval.json and detection_eval.png")
    parser.add_argument("--detectors", default="yunet,retinaface,ensemble",
                        help="comma-separated: yunet,retinaface,centerface,scrfd,mtcnn,ensemble,policy (policy: the --policy file's detection as the pipeline runs it)")
    parser.add_argument("--policy", default=None, help="take detector parameters and merge_iou from this policy file")
    parser.add_argument("--model-dir", default=None, help="where the detector weights are")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (quick checks)")
    parser.add_argument("--max-side", type=int, default=None, help="cap the restored image's longer side (default: original size)")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU for a detection to count as finding a face")
    parser.add_argument("--auditors", default=None,
                        help=f"measure auditor candidates instead ({','.join(AUDITOR_CANDIDATES)}): recall by size at "
                             f"{MATCHED_FP_RATE:g} FP/img on --data, and with --photos against the policy's detectors")
    parser.add_argument("--photos", default=None, help="--auditors: a folder of real photos (reference: --policy's detectors)")
    parser.add_argument("--write-strength", default=None,
                        help="--auditors: merge the figures into this strength file (the audit report's: "
                             "anonymizer/detect/auditor_strength.json)")


def run(args: argparse.Namespace) -> int:
    if args.auditors:
        return run_auditors(args)
    names = [n.strip() for n in args.detectors.split(",") if n.strip()]
    unknown = [n for n in names if n not in DETECTOR_CHOICES]
    if unknown:
        raise SystemExit(f"unknown detector(s) {unknown}; choose from {', '.join(DETECTOR_CHOICES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        detector = build_named_detector(name, args.policy, args.model_dir)
        results[name] = evaluate(detector, args.data, limit=args.limit, max_side=args.max_side, iou_threshold=args.iou)
    write_outputs(results, out, settings={"data": str(args.data), "policy": args.policy, "max_side": args.max_side, "iou": args.iou})
    print(markdown_table(results))
    return 0


def run_auditors(args: argparse.Namespace) -> int:
    import shlex
    import sys

    names = [n.strip() for n in args.auditors.split(",") if n.strip()]
    unknown = [n for n in names if n not in AUDITOR_CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown auditor(s) {unknown}; choose from {', '.join(AUDITOR_CANDIDATES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = evaluate_auditors(names, args.data, args.photos, args.policy, args.model_dir, args.limit, args.iou,
                                log=lambda line: print(line, file=sys.stderr, flush=True))
    command = "anonymizer eval detection " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if len(sys.argv) > 3 else ""
    settings = {"data": str(args.data), "photos": args.photos, "policy": args.policy, "limit": args.limit,
                "iou": args.iou, "command": command}
    (out / "auditor_eval.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    if args.write_strength:
        write_strength(results, args.write_strength, command)
    print(auditor_table(results))
    return 0


def write_outputs(results: dict[str, dict], out: Path, settings: dict | None = None, stem: str = "detection_eval") -> None:
    payload = {"settings": settings or {}, "results": results}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    plot(results, out / f"{stem}.png")
