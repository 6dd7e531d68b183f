"""MediaPipe's face mesh (Apache-2.0) as a source of the 68 iBUG-ordered points the bank works with.

dlib's 68-point predictor was trained on iBUG 300-W, whose terms allow research use only; the face mesh's
weights are Apache-2.0, so with it (and a bank built from faces the user may use) the bank operator runs
on permissively licensed parts. The mesh gives 468 points on a 192×192 crop of the face; `TO_68` picks, for
each of dlib's 68, the mesh vertex that lies nearest to it (fitted on LFW, docs/benchmarks.md), so
everything downstream (anonymizer.bank.shape) is unchanged.

The crop is MediaPipe's own: a square 1.5 times the box of the points, turned so the eyes are level. The
first crop comes from the detector's 5 landmarks, the second from the first fit's points (MediaPipe's
tracking mode), which is the one the network was trained on.
"""

from __future__ import annotations

import numpy as np

from anonymizer.bank.shape import Landmarker, box_from_five
from anonymizer.faces import Face
from anonymizer.models import locate
from anonymizer.tflite_runtime import tflite_interpreter

INPUT = 192
SCALE = 1.5          # MediaPipe's ROI: the points' box grown by this
# For each of dlib's 68 points (iBUG 300-W order), the mesh vertex nearest to it (fitted on LFW).
TO_68 = np.array([
    127, 234, 93, 215, 172, 136, 149, 176, 152, 377, 378, 365, 367, 435, 401, 454, 356,
    70, 63, 105, 66, 55, 285, 296, 334, 293, 276,
    168, 197, 5, 4, 240, 97, 2, 326, 305,
    7, 160, 158, 155, 153, 144, 382, 385, 386, 249, 373, 380,
    61, 74, 37, 11, 267, 269, 291, 405, 314, 17, 84, 91,
    62, 38, 13, 268, 308, 317, 14, 86,
])
EYE_OUTER = (33, 263)  # the mesh's outer eye corners, image left then right: the crop's rotation
MIN_PRESENCE = 0.5     # the mesh's own face-presence score below which its fit is no face: NaN points


class MeshLandmarker:
    """The face mesh inside a face, as 68 iBUG-ordered points; `score` holds the last fit's face presence."""

    def __init__(self, model_dir: str | None = None) -> None:
        self._it = tflite_interpreter(str(locate("mediapipe_mesh", model_dir)), "landmarks 'mediapipe_mesh'")
        self._in = self._it.get_input_details()[0]["index"]
        outs = {o["name"]: o["index"] for o in self._it.get_output_details()}
        self._points, self._flag = outs["conv2d_21"], outs["conv2d_31"]
        self.score = 0.0

    def mesh(self, image: np.ndarray, centre: np.ndarray, side: float, angle: float) -> np.ndarray:
        """468×3 mesh points (image pixels; z in the same scale) fitted in the square of `side` at `centre`,
        turned by `angle` radians."""
        import cv2

        c, s = np.cos(angle), np.sin(angle)
        k = INPUT / side
        # image → crop: rotate by -angle about the centre, scale, move the centre to the crop's middle
        m = np.array([[c * k, s * k, 0.0], [-s * k, c * k, 0.0]])
        m[:, 2] = INPUT / 2 - m[:, :2] @ centre
        crop = cv2.warpAffine(image, m, (INPUT, INPUT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self._it.set_tensor(self._in, (crop.astype(np.float32) / 255.0)[None])
        self._it.invoke()
        pts = self._it.get_tensor(self._points).reshape(468, 3).astype(np.float64)
        self.score = float(1.0 / (1.0 + np.exp(-float(self._it.get_tensor(self._flag).reshape(-1)[0]))))
        inv = cv2.invertAffineTransform(m)
        xy = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
        return np.column_stack([xy, pts[:, 2] / k])

    def __call__(self, image: np.ndarray, face: Face) -> np.ndarray:
        pts = self.fit(image, face)[TO_68, :2]
        return pts if self.score >= MIN_PRESENCE else np.full_like(pts, np.nan)

    def fit(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The 468×3 mesh of `face`: a first fit in a crop from the detector's landmarks, then MediaPipe's own
        crop around that fit."""
        img = np.ascontiguousarray(image)
        if face.landmarks is not None and np.all(np.isfinite(face.landmarks)):
            f = np.asarray(face.landmarks, np.float64).reshape(5, 2)
            cx, cy, side = box_from_five(f)
            d = f[1] - f[0]
        else:
            cx, cy, side = face.x + face.w / 2, face.y + face.h / 2, float(max(face.w, face.h))
            d = np.array([1.0, 0.0])
        # dlib's box runs from the brows to the chin; the mesh's reaches the forehead: a little higher, larger
        mesh = self.mesh(img, np.array([cx, cy - 0.1 * side]), SCALE * 1.2 * side, float(np.arctan2(d[1], d[0])))
        xy = mesh[:, :2]
        lo, hi = xy.min(0), xy.max(0)
        d = xy[EYE_OUTER[1]] - xy[EYE_OUTER[0]]
        return self.mesh(img, (lo + hi) / 2, SCALE * float((hi - lo).max()), float(np.arctan2(d[1], d[0])))

    reliability = staticmethod(Landmarker.reliability)  # the fit's 5 points against the detector's
