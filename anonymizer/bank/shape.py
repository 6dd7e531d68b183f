"""Face shape: 68 landmarks in dlib's order, the points a warp needs beyond them, and what they say about the face.

Every warp in the bank (donors onto a composite's mean shape, a bank face onto a photo's face) moves the
same 105 points: the 68 of dlib's predictor, 10 forehead points extrapolated above the brows (the
predictor stops there, the face does not), and a ring of 27 points around the face outline, so the warp
also covers the margin a blend mask needs. One triangulation (Delaunay over the mean shape) serves all.

Landmark order is dlib's iBUG 300-W: 0-16 jaw (image left to right), 17-26 brows, 27-35 nose, 36-41 the
image-left eye, 42-47 the image-right eye, 48-67 mouth. Two landmarkers give them (`LANDMARKERS`): dlib's
68-point model (iBUG 300-W data: research use; `dlib_shape68`) and MediaPipe's face mesh (Apache-2.0;
`mediapipe_mesh`, anonymizer.bank.mesh).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from anonymizer.faces import Face
from anonymizer.headpose import estimate_pose
from anonymizer.models import locate
from anonymizer.registry import Registry

# The median of dlib's 68 points over 191 LFW faces (one per person, dlib's HOG box), each similarity-
# normalised so the eye centres sit at (-0.5, 0) and (0.5, 0): units of the eye distance.
MEAN_SHAPE = np.array([
    [-1.109, 0.063], [-1.094, 0.347], [-1.067, 0.649], [-1.017, 0.952], [-0.939, 1.246], [-0.775, 1.498],
    [-0.556, 1.713], [-0.293, 1.875], [0.004, 1.927], [0.317, 1.882], [0.576, 1.718], [0.823, 1.515],
    [1.005, 1.256], [1.113, 0.955], [1.161, 0.654], [1.199, 0.349], [1.215, 0.052],
    [-0.916, -0.185], [-0.789, -0.319], [-0.594, -0.365], [-0.388, -0.344], [-0.199, -0.268],
    [0.177, -0.268], [0.376, -0.343], [0.596, -0.364], [0.788, -0.313], [0.933, -0.181],
    [-0.010, -0.040], [-0.013, 0.157], [-0.019, 0.350], [-0.022, 0.552],
    [-0.245, 0.693], [-0.133, 0.735], [-0.015, 0.771], [0.111, 0.730], [0.224, 0.686],
    [-0.689, 0.006], [-0.571, -0.064], [-0.428, -0.062], [-0.301, 0.024], [-0.434, 0.048], [-0.574, 0.050],
    [0.297, 0.023], [0.426, -0.065], [0.570, -0.062], [0.690, 0.008], [0.578, 0.050], [0.438, 0.050],
    [-0.454, 1.073], [-0.303, 0.989], [-0.132, 0.962], [-0.010, 0.982], [0.120, 0.953], [0.302, 0.993],
    [0.475, 1.075], [0.310, 1.251], [0.133, 1.328], [-0.010, 1.344], [-0.141, 1.329], [-0.307, 1.251],
    [-0.382, 1.077], [-0.133, 1.050], [-0.009, 1.058], [0.123, 1.045], [0.401, 1.086], [0.125, 1.183],
    [-0.010, 1.200], [-0.138, 1.182],
], np.float64)

JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
NOSE = np.arange(27, 36)
MOUTH = np.arange(48, 68)
# Forehead height above each brow point, in eye-to-mouth distances: an arc, highest mid-brow.
FOREHEAD_HEIGHT = np.array([0.30, 0.45, 0.56, 0.62, 0.65, 0.65, 0.62, 0.56, 0.45, 0.30])
RING_SCALE = 1.3          # the ring: the outline grown by this factor about its centroid
N_POINTS = 68 + 10 + 27   # dlib's 68, forehead, ring
# The outline (jaw left to right, then the forehead right to left): a closed polygon around the face.
OUTLINE = np.concatenate([JAW, 68 + np.arange(9, -1, -1)])
# Points that barely move with expression or identity-free pose: eye corners and nose.
STABLE = np.array([36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35])

# Each point's mirror image across the face's vertical midline (iBUG 300-W numbering).
MIRROR = np.array([*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31,
                   45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
                   54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])

# A bank crop: this side, eye centres at these places (eye distance a quarter of the side).
CROP_SIZE = 256
CROP_EYES = np.array([[0.375, 0.40], [0.625, 0.40]]) * CROP_SIZE


def five_points(pts68: np.ndarray) -> np.ndarray:
    """The detectors' 5 landmarks (eye centres, nose tip, mouth corners; image-left first) from dlib's 68."""
    p = np.asarray(pts68, np.float64)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]).astype(np.float32)


def mirror(pts68: np.ndarray, width: int) -> np.ndarray:
    """The 68 points of the image flipped left to right (`width` pixels wide), renumbered to stay iBUG's."""
    p = np.asarray(pts68, np.float64)[MIRROR].copy()
    p[:, 0] = (width - 1) - p[:, 0]
    return p


def eye_distance(pts68: np.ndarray) -> float:
    p = np.asarray(pts68, np.float64)
    return float(np.linalg.norm(p[42:48].mean(0) - p[36:42].mean(0)))


def eye_line(pts68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the image-left eye's centre, the unit vector from it to the other eye's centre)."""
    p = np.asarray(pts68, np.float64)
    left, right = p[36:42].mean(0), p[42:48].mean(0)
    return left, (right - left) / max(float(np.linalg.norm(right - left)), 1e-9)


def extend(pts68: np.ndarray, forehead: float = 1.0) -> np.ndarray:
    """The 105 warp points: the 68, the forehead above the brows (FOREHEAD_HEIGHT × `forehead`), and the
    ring around the outline."""
    p = np.asarray(pts68, np.float64).reshape(68, 2)
    le, re = p[36:42].mean(0), p[42:48].mean(0)
    d = re - le
    up = np.array([d[1], -d[0]]) / max(np.linalg.norm(d), 1e-9)  # perpendicular to the eye line, upward
    # Height in eye-to-mouth distances: unlike the eye distance, it does not shrink as the head turns.
    e2m = np.linalg.norm((p[48] + p[54]) / 2 - (le + re) / 2)
    top = p[BROWS] + np.outer(FOREHEAD_HEIGHT * forehead * e2m, up)
    outline = np.concatenate([p[JAW], top[::-1]])
    c = outline.mean(0)
    ring = c + RING_SCALE * (outline - c)
    return np.concatenate([p, top, ring])


@lru_cache(maxsize=1)
def triangles() -> np.ndarray:
    """T×3 point indices: Delaunay over the extended mean shape, used for every face."""
    from scipy.spatial import Delaunay

    return Delaunay(extend(MEAN_SHAPE)).simplices.astype(np.int32)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 similarity (rotation, uniform scale, translation) mapping src onto dst in least squares."""
    s, d = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = s.mean(0), d.mean(0)
    a, b = s - ms, d - md
    denom = (a ** 2).sum()
    if denom < 1e-12:
        raise ValueError("degenerate points: cannot fit a similarity")
    p = ((a[:, 0] * b[:, 0]) + (a[:, 1] * b[:, 1])).sum() / denom
    q = ((a[:, 0] * b[:, 1]) - (a[:, 1] * b[:, 0])).sum() / denom
    m = np.array([[p, -q], [q, p]])
    return np.hstack([m, (md - ms @ m.T)[:, None]])


def apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.asarray(pts, np.float64).reshape(-1, 2)
    return p @ matrix[:, :2].T + matrix[:, 2]


def crop_matrix(pts68: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Image → bank crop: the eye centres onto CROP_EYES (scaled to `size`), by a similarity."""
    p = np.asarray(pts68, np.float64)
    eyes = np.stack([p[36:42].mean(0), p[42:48].mean(0)])
    return similarity(eyes, CROP_EYES * (size / CROP_SIZE))


def mean_shape_in_crop(size: int = CROP_SIZE) -> np.ndarray:
    m = similarity(np.array([[-0.5, 0.0], [0.5, 0.0]]), CROP_EYES * (size / CROP_SIZE))
    return apply(m, MEAN_SHAPE)


# ---------------------------------------------------------------- features

@dataclass(frozen=True)
class Features:
    """Pose (degrees, anonymizer.headpose conventions) and expression, as ratios to the eye distance."""

    yaw: float
    pitch: float
    roll: float
    mouth_open: float   # inner-lip gap / eye distance
    smile: float        # mouth width (corner to corner) / eye distance
    eye_open: float     # eye aspect ratio (lid gap / eye width), mean of both eyes

    def vector(self) -> np.ndarray:
        """The matching space: yaw per 10°, pitch per 30° (5 points read pitch loosely: frontal faces in group
        photos read up to ±30°), mouth opening and smile width per 0.1 eye distance."""
        return np.array([self.yaw / 10, self.pitch / 30, self.mouth_open / 0.1, self.smile / 0.1])


FEATURE_COLUMNS = ("yaw", "pitch", "roll", "mouth_open", "smile", "eye_open")


def mouth_gap(p: np.ndarray) -> float:
    return float(np.mean([np.linalg.norm(p[a] - p[b]) for a, b in ((61, 67), (62, 66), (63, 65))]))


def eye_aspect(p: np.ndarray, i0: int) -> float:
    e = p[i0:i0 + 6]
    return float((np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2 * max(np.linalg.norm(e[0] - e[3]), 1e-9)))


def features(pts68: np.ndarray) -> Features:
    p = np.asarray(pts68, np.float64)
    iod = max(eye_distance(p), 1e-9)
    pose = estimate_pose(five_points(p), None)
    return Features(pose.yaw, pose.pitch, pose.roll, mouth_gap(p) / iod, float(np.linalg.norm(p[54] - p[48])) / iod,
                    (eye_aspect(p, 36) + eye_aspect(p, 42)) / 2)


# ---------------------------------------------------------------- landmarks

# dlib's box from a detector's 5 landmarks (fit on LFW, dlib HOG boxes vs YuNet landmarks): centred 0.444 of
# the way from the eye midpoint to the mouth midpoint, 2.44 eye-to-mouth distances wide.
BOX_CENTRE, BOX_SIZE = 0.444, 2.44


def box_from_five(five: np.ndarray) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the box dlib's predictor expects, from 5 landmarks."""
    f = np.asarray(five, np.float64).reshape(5, 2)
    em, mm = (f[0] + f[1]) / 2, (f[3] + f[4]) / 2
    c = em + BOX_CENTRE * (mm - em)
    side = BOX_SIZE * max(np.linalg.norm(mm - em), 0.5 * np.linalg.norm(f[1] - f[0]))
    return float(c[0]), float(c[1]), float(side)


class Landmarker:
    """dlib's 68-point predictor inside a face's box. The box is re-derived from the face's own 5 landmarks
    (a detector's box is framed differently from the HOG boxes the predictor learned on), and once more
    from the first fit's points; `reliability` compares the fit with the detector's 5 landmarks."""

    def __init__(self, model_dir: str | None = None) -> None:
        import dlib

        self._dlib = dlib
        self._predict = dlib.shape_predictor(str(locate("dlib_shape68", model_dir)))

    def _fit(self, image: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
        h = side / 2
        r = self._dlib.rectangle(int(round(cx - h)), int(round(cy - h)), int(round(cx + h)), int(round(cy + h)))
        s = self._predict(image, r)
        return np.array([[q.x, q.y] for q in s.parts()], np.float64)

    def __call__(self, image: np.ndarray, face: Face) -> np.ndarray:
        img = np.ascontiguousarray(image)
        if face.landmarks is not None and np.all(np.isfinite(face.landmarks)):
            box = box_from_five(face.landmarks)
        else:  # no landmarks: the detector's box, nudged toward the HOG framing (lower, wider)
            box = (face.x + face.w / 2, face.y + face.h / 2 + 0.03 * face.w, face.w / 0.88)
        pts = self._fit(img, *box)
        return self._fit(img, *box_from_five(five_points(pts)))

    @staticmethod
    def reliability(pts68: np.ndarray, face: Face) -> float:
        """Mean distance between the fit's 5 points and the detector's, in the fit's eye distances (0 without
        detector landmarks: nothing to compare). The two disagree a little by definition (YuNet's mouth
        corners and nose tip are not dlib's): on 100 clear LFW faces (YuNet) the median is 0.11, the 95th
        percentile 0.17, the 99th 0.33."""
        if face.landmarks is None:
            return 0.0
        d = np.linalg.norm(five_points(pts68) - np.asarray(face.landmarks, np.float64).reshape(5, 2), axis=1)
        return float(d.mean() / max(eye_distance(pts68), 1e-9))


# Landmarkers by the name of their model (anonymizer.models): each maps (image, face) to 68 iBUG-ordered
# points and has `reliability`. The bank records the one it was built with; the operator uses it too.
LANDMARKERS: Registry = Registry("landmarker")
LANDMARKERS.register("dlib_shape68")(Landmarker)
LANDMARKERS.register_lazy("mediapipe_mesh", "anonymizer.bank.mesh:MeshLandmarker")


def landmarker(name: str = "dlib_shape68", model_dir: str | None = None):
    return LANDMARKERS.create(name, model_dir=model_dir)


def outline_mask(pts105: np.ndarray, shape: tuple[int, int], offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """uint8 0/255 mask of the face outline (jaw and forehead) in a window starting at `offset` (x, y)."""
    m = np.zeros(shape, np.uint8)
    poly = np.round((np.asarray(pts105)[OUTLINE] - offset) * 16).astype(np.int32)
    cv2.fillPoly(m, [poly], 255, lineType=cv2.LINE_8, shift=4)
    return m


def hull_mask(pts: np.ndarray, shape: tuple[int, int], offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """uint8 0/255 mask of the points' convex hull in a window starting at `offset` (x, y)."""
    m = np.zeros(shape, np.uint8)
    hull = cv2.convexHull(np.round((np.asarray(pts) - offset) * 16).astype(np.int32))
    cv2.fillConvexPoly(m, hull, 255, lineType=cv2.LINE_8, shift=4)
    return m


def face_for(pts68: np.ndarray) -> Face:
    """A detector-like face (box and 5 landmarks) around 68 landmarks, for the recognizers."""
    cx, cy, side = box_from_five(five_points(pts68))
    return Face(cx - side / 2, cy - side / 2, side, side, 1.0, "dlib68", five_points(pts68))
