"""The face record that every detector produces and every anonymizer and metric consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates (x, y = top-left corner).

    `landmarks` holds 5 points (right eye, left eye, nose tip, right and left mouth corner, as YuNet and
    RetinaFace order them) or is None for detectors without landmarks (dlib's).
    """

    x: float
    y: float
    w: float
    h: float
    score: float
    detector: str
    landmarks: np.ndarray | None = field(default=None, compare=False)

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


def iou(a: Face, b: Face) -> float:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def nms(faces: list[Face], iou_threshold: float) -> list[Face]:
    """Greedy non-maximum suppression, highest score first; keeps the winner's landmarks."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(iou(f, k) <= iou_threshold for k in kept):
            kept.append(f)
    return kept
