"""The face record that every detector produces and every anonymizer and metric consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates (x, y = top-left corner).

    `landmarks` holds 5 points (right eye, left eye, nose tip, right and left mouth corner, as YuNet and
    RetinaFace order them) or is None for detectors without landmarks (dlib's). `identity`: the virtual
    identity a keyed run assigned to this face's person (anonymizer.pipeline.link), None otherwise.
    """

    x: float
    y: float
    w: float
    h: float
    score: float
    detector: str
    landmarks: np.ndarray | None = field(default=None, compare=False)
    identity: int | None = field(default=None, compare=False)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)

    @property
    def size(self) -> float:
        """The shorter side: what limits whether a face can be recognised."""
        return min(self.w, self.h)


def valid(face: Face, width: int, height: int) -> bool:
    """A usable detection: finite, non-empty, and overlapping the image."""
    values = (face.x, face.y, face.w, face.h, face.score)
    return (all(np.isfinite(v) for v in values) and face.w > 0 and face.h > 0
            and face.x < width and face.y < height and face.x + face.w > 0 and face.y + face.h > 0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


def iou(a: Face, b: Face) -> float:
    return box_iou(a.box, b.box)


def nms(faces: list[Face], iou_threshold: float) -> list[Face]:
    """Greedy non-maximum suppression, highest score first; keeps the winner's landmarks."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(iou(f, k) <= iou_threshold for k in kept):
            kept.append(f)
    return kept


def weighted_box_fusion(
    models: Sequence[Sequence[Face]], weights: Sequence[float] | None = None, iou_threshold: float = 0.55,
) -> list[Face]:
    """Weighted box fusion (Solovyev, Wang and Gabruseva 2021) of several detectors' faces of one image.

    `models[m]` are detector m's faces (already cut at its own score threshold), `weights[m]` its vote.
    All boxes, highest weighted score first, join the cluster whose fused box they overlap most at IoU >
    `iou_threshold`, else start their own. A cluster's box (and landmarks, from the members that have
    them) is the mean of its members weighted by weight x score. Its score is a weighted vote, as the
    paper's absent-model-aware average: sum over ALL models of weight x that model's best score in the
    cluster, divided by the sum of all weights, so a model that missed the face counts 0. Agreement raises a
    face's score, and a face only one detector found keeps score x weight / sum(weights). Taking each
    model's best score (not every member's) keeps a detector's duplicate boxes from voting twice. The
    result does not depend on the order of `models` (ties are broken by the boxes themselves).
    """
    weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    if len(weights) != len(models) or any(w <= 0 for w in weights):
        raise ValueError("one positive weight per model")
    total = sum(weights)
    entries = sorted(
        ((w * f.score, f, m) for m, (fs, w) in enumerate(zip(models, weights)) for f in fs),
        key=lambda e: (-e[0], e[1].x, e[1].y, e[1].w, e[1].h, e[1].detector),
    )
    clusters: list[list[tuple[float, Face, int]]] = []
    fused: list[Face] = []
    # the fused boxes' corners and areas as `iou` reads them, so one entry meets every cluster in one step
    corners, areas = np.empty((len(entries), 4)), np.empty(len(entries))
    for entry in entries:
        f, n, best = entry[1], len(fused), -1
        if n:
            c = corners[:n]
            iw = np.maximum(0.0, np.minimum(f.x + f.w, c[:, 2]) - np.maximum(f.x, c[:, 0]))
            ih = np.maximum(0.0, np.minimum(f.y + f.h, c[:, 3]) - np.maximum(f.y, c[:, 1]))
            inter = iw * ih
            union = f.w * f.h + areas[:n] - inter
            overlap = np.divide(inter, union, out=np.zeros(n), where=union > 0)
            i = int(np.argmax(overlap))  # the first best, as a scan keeping strict improvements finds
            best = i if overlap[i] > iou_threshold else -1
        if best < 0:
            best = n
            clusters.append([entry])
            fused.append(_fuse([entry], weights, total))
        else:
            clusters[best].append(entry)
            fused[best] = _fuse(clusters[best], weights, total)
        g = fused[best]
        corners[best], areas[best] = g.box, g.w * g.h
    return sorted(fused, key=lambda f: (-f.score, f.x, f.y))


def _fuse(members: list[tuple[float, Face, int]], weights: list[float], total: float) -> Face:
    ws = np.array([max(e[0], 1e-12) for e in members])
    boxes = np.array([[e[1].x, e[1].y, e[1].x + e[1].w, e[1].y + e[1].h] for e in members])
    x0, y0, x1, y1 = (ws[:, None] * boxes).sum(0) / ws.sum()
    best: dict[int, float] = {}
    for _, f, m in members:
        best[m] = max(best.get(m, 0.0), f.score)
    score = sum(weights[m] * s for m, s in best.items()) / total
    with_lm = [(w, e[1].landmarks) for w, e in zip(ws, members) if e[1].landmarks is not None]
    landmarks = None
    if with_lm:
        lw = np.array([w for w, _ in with_lm])
        landmarks = (np.stack([lm for _, lm in with_lm]) * lw[:, None, None]).sum(0) / lw.sum()
        landmarks = landmarks.astype(np.float32)
    name = "+".join(sorted({e[1].detector for e in members}))
    return Face(float(x0), float(y0), float(x1 - x0), float(y1 - y0), float(score), name, landmarks)


def context_window(face: Face, image_shape: tuple[int, int],
                   cover: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the face's box with one box side of context each way, clipped to the image and
    grown to contain `cover` (another window) when given. Landmark re-finding and the identity guard look
    at a face through this same window."""
    h, w = image_shape
    side = max(face.w, face.h)
    x0, y0 = int(face.x - side), int(face.y - side)
    x1, y1 = int(np.ceil(face.x + face.w + side)), int(np.ceil(face.y + face.h + side))
    if cover is not None:
        x0, y0, x1, y1 = min(x0, cover[0]), min(y0, cover[1]), max(x1, cover[2]), max(y1, cover[3])
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)
