"""Hands at a face, found by MediaPipe Hands (Apache-2.0): its palm detector, each palm confirmed by its hand
landmark network's hand presence.

Why: the face bank operator draws a new face over everything inside the face's outline, so a hand resting a chin
or held up to a cheek disappears under a chin or a cheek. A face a hand covers gets the classical fallback
instead (anonymizer.anonymize.bankface, "occluded").

The palm detector looks at a square window around the face (WINDOW face sizes a side), letterboxed to its
192×192 input, as MediaPipe letterboxes a frame. On that scale it also takes some faces for palms (a chin and
mouth, at 0.7-0.8), so each palm is confirmed the way MediaPipe tracks one: the hand landmark network, on the
palm's rotated hand crop (2.6 palm sizes, moved half a palm size towards the fingers), must read a hand
(presence ≥ MIN_PRESENCE). It finds hands whose palm or back shows; fingers over a mouth, with the palm out of
sight, it misses (docs/benchmarks.md, "Hands over faces").
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anonymizer.faces import Face, box_iou
from anonymizer.models import locate
from anonymizer.tflite_runtime import tflite_interpreter

PALM_INPUT, HAND_INPUT = 192, 224
WINDOW = 3.0        # the palm detector's window: this many face sizes a side, centred on the face
MIN_PALM = 0.5      # palm score (MediaPipe's own threshold)
MIN_PRESENCE = 0.8  # the hand landmark network's hand presence that confirms a palm
NMS_IOU = 0.3
HAND_SCALE, HAND_SHIFT = 2.6, -0.5  # MediaPipe's palm → hand crop: its size, and its shift along the hand


def _anchors() -> np.ndarray:
    """The palm detector's 2016 SSD anchor centres (x, y in [0, 1]): 2 a cell on the 24×24 grid of stride 8,
    6 a cell on the 12×12 grid of stride 16 (MediaPipe's SsdAnchorsCalculator: 4 layers, strides 8, 16, 16, 16,
    fixed anchor size)."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = PALM_INPUT // stride
        ys, xs = np.mgrid[:n, :n]
        centres = np.stack([(xs.ravel() + 0.5) / n, (ys.ravel() + 0.5) / n], 1)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out)


@dataclass(frozen=True)
class Palm:
    score: float
    box: np.ndarray        # x0, y0, x1, y1 in image pixels
    keypoints: np.ndarray  # 7×2: the wrist; the index, middle, ring and pinky knuckles; the thumb's two lowest joints


class HandDetector:
    def __init__(self, model_dir: str | None = None) -> None:
        self._palm = tflite_interpreter(str(locate("mediapipe_palm", model_dir)), "hands 'mediapipe_palm'")
        self._hand = tflite_interpreter(str(locate("mediapipe_hand", model_dir)), "hands 'mediapipe_hand'")
        self._palm_in = self._palm.get_input_details()[0]["index"]
        outs = {tuple(o["shape"])[-1]: o["index"] for o in self._palm.get_output_details()}
        self._boxes, self._scores = outs[18], outs[1]
        self._hand_in = self._hand.get_input_details()[0]["index"]
        self._presence = {o["name"]: o["index"] for o in self._hand.get_output_details()}["Identity_1"]
        self._anchors = _anchors()

    def palms(self, image: np.ndarray, window: tuple[int, int, int, int]) -> list[Palm]:
        """Palms the detector finds in `window` (x0, y0, x1, y1) of the RGB `image`, best first."""
        x0, y0, x1, y1 = window
        crop = image[y0:y1, x0:x1]
        s = PALM_INPUT / max(crop.shape[:2])
        small = cv2.resize(crop, (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))),
                           interpolation=cv2.INTER_AREA)
        pad = np.zeros((PALM_INPUT, PALM_INPUT, 3), np.float32)
        oy, ox = (PALM_INPUT - small.shape[0]) // 2, (PALM_INPUT - small.shape[1]) // 2
        pad[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small / 255.0
        self._palm.set_tensor(self._palm_in, pad[None])
        self._palm.invoke()
        raw = self._palm.get_tensor(self._boxes).reshape(-1, 18)
        score = 1.0 / (1.0 + np.exp(-np.clip(self._palm.get_tensor(self._scores).reshape(-1), -80, 80)))
        found = []
        for i in np.flatnonzero(score >= MIN_PALM):
            pts = raw[i].reshape(9, 2) / PALM_INPUT
            centre, size = pts[0] + self._anchors[i], pts[1]
            points = np.vstack([centre - size / 2, centre + size / 2, pts[2:] + self._anchors[i]])
            points = (points * PALM_INPUT - (ox, oy)) / s + (x0, y0)
            found.append(Palm(float(score[i]), points[:2].ravel(), points[2:]))
        found.sort(key=lambda p: -p.score)
        kept: list[Palm] = []
        for p in found:
            if all(box_iou(p.box, k.box) < NMS_IOU for k in kept):
                kept.append(p)
        return kept

    def presence(self, image: np.ndarray, palm: Palm) -> float:
        """The hand landmark network's hand presence on the palm's hand crop, turned so the fingers point up."""
        wrist, knuckle = palm.keypoints[0], palm.keypoints[2]
        angle = np.pi / 2 - np.arctan2(wrist[1] - knuckle[1], knuckle[0] - wrist[0])
        side = float(max(palm.box[2] - palm.box[0], palm.box[3] - palm.box[1]))
        c, s = np.cos(angle), np.sin(angle)
        centre = (palm.box[:2] + palm.box[2:]) / 2 + HAND_SHIFT * side * np.array([-s, c])
        k = HAND_INPUT / (HAND_SCALE * side)
        m = np.array([[c * k, s * k, 0.0], [-s * k, c * k, 0.0]])
        m[:, 2] = HAND_INPUT / 2 - m[:, :2] @ centre
        crop = cv2.warpAffine(image, m, (HAND_INPUT, HAND_INPUT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        self._hand.set_tensor(self._hand_in, (crop.astype(np.float32) / 255.0)[None])
        self._hand.invoke()
        return float(self._hand.get_tensor(self._presence).reshape(-1)[0])  # a probability already

    def covering(self, image: np.ndarray, face: Face, polygon: np.ndarray) -> float:
        """The largest share of a confirmed hand's palm box that lies inside `polygon` (the face's outline, image
        pixels): 0 where no hand reaches it."""
        h, w = image.shape[:2]
        cx, cy, half = face.x + face.w / 2, face.y + face.h / 2, WINDOW / 2 * max(face.w, face.h)
        window = (int(max(0, cx - half)), int(max(0, cy - half)), int(min(w, cx + half)), int(min(h, cy + half)))
        if window[2] - window[0] < 2 or window[3] - window[1] < 2:
            return 0.0
        best = 0.0
        for palm in self.palms(image, window):
            share = _inside(palm.box, polygon)
            if share > best and self.presence(image, palm) >= MIN_PRESENCE:
                best = share
        return best


def _inside(box: np.ndarray, polygon: np.ndarray) -> float:
    """The share of `box`'s area inside `polygon`, counted on a pixel grid over the box."""
    x0, y0 = np.floor(box[:2]).astype(int)
    x1, y1 = np.ceil(box[2:]).astype(int)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(m, [np.round((np.asarray(polygon) - (x0, y0)) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return float(m.mean())
