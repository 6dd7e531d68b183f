"""Head pose before and after anonymization, per face: is the pose kept, and is a face still there?

The same procedure runs on the original and on the released image, so their difference measures the
operator and not two different landmark sources: a window around the face's box (one box side of context
each way) is scaled so the face is `size` px wide, for each of WINDOW_SIZES; a landmark detector (YuNet by
default; its licence allows commercial use, unlike dlib's 68-point model) runs on each, the detection that
best overlaps the face's box gives 5 landmarks, and `headpose.estimate_pose` reads yaw, pitch and roll from
their mean. A face not re-found in the released image is recorded as such (`redetected` False): realistic
replacements should stay detectable, classical operators usually are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anonymizer.detect import Detector
from anonymizer.faces import Face, context_window, iou
from anonymizer.headpose import Pose, estimate_pose

# One window's landmarks jitter with its resampling: on ../shared/data/photos, shifting the image by one
# pixel moved the yaw read in one 112-px window by 1.9° (median; p95 6.7°), and the yaw read from the mean
# of these four windows by 0.65° (p95 2.2°; bench/pose_floor.py).
WINDOW_SIZES = (96.0, 112.0, 128.0, 144.0)

POSE_COLUMNS = ("yaw_before", "pitch_before", "roll_before", "yaw_after", "pitch_after", "roll_after",
                "pose_error", "redetected")


@dataclass(frozen=True)
class PoseChange:
    before: Pose | None
    after: Pose | None

    @property
    def error(self) -> float | None:
        """The largest of |Δyaw|, |Δpitch|, |Δroll| in degrees (None when either side has no pose)."""
        if self.before is None or self.after is None:
            return None
        return max(abs(self.before.yaw - self.after.yaw), abs(self.before.pitch - self.after.pitch),
                   abs(self.before.roll - self.after.roll))

    def row(self) -> dict:
        b, a = self.before, self.after
        return {"yaw_before": b and b.yaw, "pitch_before": b and b.pitch, "roll_before": b and b.roll,
                "yaw_after": a and a.yaw, "pitch_after": a and a.pitch, "roll_after": a and a.roll,
                "pose_error": self.error, "redetected": a is not None}


@dataclass(frozen=True)
class _Window:
    """A face's window, scaled so the face is `target_px` wide: where the detector looks for it again."""
    pixels: np.ndarray
    origin: tuple[int, int]
    scale: float
    target: Face  # the face's box in the window's pixels


def _window(image: np.ndarray, face: Face, target_px: float) -> _Window | None:
    side = max(face.w, face.h)
    x0, y0, x1, y1 = context_window(face, image.shape[:2])
    if x1 - x0 < 2 or y1 - y0 < 2 or side <= 0:
        return None
    scale = target_px / side
    pixels = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), None, fx=scale, fy=scale,
                        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    target = Face((face.x - x0) * scale, (face.y - y0) * scale, face.w * scale, face.h * scale, 1.0, "box")
    return _Window(pixels, (x0, y0), scale, target)


def _pick(window: _Window, found: list[Face], min_iou: float, need_landmarks: bool) -> Face | None:
    """The detection in `window` that best overlaps its face, in the image's coordinates (None below min_iou)."""
    scored = [(iou(window.target, f), f) for f in found if f.landmarks is not None or not need_landmarks]
    if not scored:
        return None
    best_iou, f = max(scored, key=lambda t: t[0])
    if best_iou < min_iou:
        return None
    (x0, y0), scale = window.origin, window.scale
    lm = None if f.landmarks is None else np.asarray(f.landmarks, np.float64) / scale + (x0, y0)
    return Face(f.x / scale + x0, f.y / scale + y0, f.w / scale, f.h / scale, f.score, f.detector, lm)


def find_again(detector: Detector, image: np.ndarray, face: Face, target_px: float = 112.0, min_iou: float = 0.3,
               need_landmarks: bool = False) -> Face | None:
    """The detection at `face`'s box in `image` (image coordinates), or None: the detector runs on a window
    of one box side of context each way, scaled so the face is `target_px` wide."""
    window = _window(image, face, target_px)
    return None if window is None else _pick(window, detector.detect(window.pixels), min_iou, need_landmarks)


def find_all_again(detector: Detector, shots: list[tuple[np.ndarray, Face]], target_px: float = 112.0,
                   min_iou: float = 0.3, need_landmarks: bool = False) -> list[Face | None]:
    """`find_again` of each (image, face), the windows run together where the detector takes many images
    in one call (`detect_many`: YuNet)."""
    windows = [_window(image, face, target_px) for image, face in shots]
    kept = [w for w in windows if w is not None]
    many = getattr(detector, "detect_many", None)
    found = iter(many([w.pixels for w in kept]) if many else [detector.detect(w.pixels) for w in kept])
    return [None if w is None else _pick(w, next(found), min_iou, need_landmarks) for w in windows]


def _solved(lm: np.ndarray | None, offset: tuple[int, int], shape: tuple[int, int]) -> Pose | None:
    if lm is None:
        return None
    try:
        return estimate_pose(np.asarray(lm, np.float64) + offset, shape)
    except ValueError:
        return None


class PoseMeter:
    def __init__(self, detector: Detector, sizes: tuple[float, ...] = WINDOW_SIZES, min_iou: float = 0.3) -> None:
        self.detector, self.sizes, self.min_iou = detector, sizes, min_iou

    def _mean_landmarks(self, shots: list[tuple[np.ndarray, Face]]) -> list[np.ndarray | None]:
        """Per (image, face): the mean of the landmarks found in its windows (None where none finds it)."""
        found = [find_all_again(self.detector, shots, size, self.min_iou, need_landmarks=True)
                 for size in self.sizes]
        means = []
        for i in range(len(shots)):
            points = [f[i].landmarks for f in found if f[i] is not None]
            means.append(np.mean(points, axis=0) if points else None)
        return means

    def landmarks(self, image: np.ndarray, face: Face) -> np.ndarray | None:
        """The 5 landmarks of the face at `face`'s box in `image`, or None when no face is found there."""
        return self._mean_landmarks([(image, face)])[0]

    def pose(self, image: np.ndarray, face: Face, fallback: np.ndarray | None = None,
             frame: tuple[tuple[int, int], tuple[int, int]] | None = None) -> Pose | None:
        """`frame`: ((x0, y0), (height, width)) when `image` is a window at (x0, y0) of a larger image: the
        pose is solved in that image's camera, as on the whole image (the angles depend on where in the
        frame the face is)."""
        lm = self.landmarks(image, face)
        offset, shape = frame if frame is not None else ((0, 0), image.shape[:2])
        return _solved(fallback if lm is None else lm, offset, shape)

    def measure(self, original: np.ndarray, released: np.ndarray, faces: list[Face], min_face_px: float
                ) -> list[PoseChange | None]:
        """Per face (None below `min_face_px`, where landmarks are too unreliable to compare). Every window,
        before and after, goes to the detector in one `find_all_again` per window size."""
        scored = [f for f in faces if f.size >= min_face_px]
        found = self._mean_landmarks([(im, f) for im in (original, released) for f in scored])
        changes = iter([
            # Before: re-found like the after side; the detector's own landmarks when no window finds it.
            PoseChange(_solved(f.landmarks if b is None else b, (0, 0), original.shape[:2]),
                       _solved(a, (0, 0), released.shape[:2]))
            for f, b, a in zip(scored, found[:len(scored)], found[len(scored):])])
        return [next(changes) if f.size >= min_face_px else None for f in faces]
