"""Head pose (yaw, pitch, roll in degrees) from the detector's 5 landmarks, by cv2.solvePnP.

The 3-D model is a generic adult head, in millimetres, in camera-like axes (x to the image right, y down,
z away from the camera), origin at the nose tip. Its points are the widely used generic 6-point model
(nose tip, chin, eye outer corners, mouth corners; LearnOpenCV "Head Pose Estimation using OpenCV and
Dlib", whose units are ~0.2 mm) scaled to mm, with the eye *centres* (which YuNet gives) placed at ±31.5 mm
(half the average adult interpupillary distance of ~63 mm, Dodgson 2004) instead of the outer corners, and
the mouth corners at ±25 mm (average mouth width ~50 mm). It is an approximation: the absolute angles
carry a few degrees of bias for any particular face, but a frontal face reads near 0 and the sign and
size of changes are right, which is what the fallback policy needs.

Conventions: yaw > 0 when the face turns toward the image's right (its nose moves right of the eye
midpoint); pitch > 0 when the face tilts down; roll > 0 when the face is rotated counter-clockwise as
displayed (the sense of cv2.getRotationMatrix2D's positive angle).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner (mm).
MODEL_POINTS = np.array(
    [
        [-31.5, -34.0, 27.0],
        [31.5, -34.0, 27.0],
        [0.0, 0.0, 0.0],
        [-25.0, 30.0, 25.0],
        [25.0, 30.0, 25.0],
    ],
    np.float64,
)
_IPD_MM = 63.0


@dataclass(frozen=True)
class Pose:
    yaw: float
    pitch: float
    roll: float
    reprojection_error: float  # RMS, in units of the face's eye distance (landmark reliability)


def _euler(r: np.ndarray) -> tuple[float, float, float]:
    """R = Rz(roll') · Ry(yaw) · Rx(pitch'), in camera axes (y down)."""
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def estimate_pose(landmarks: np.ndarray, image_shape: tuple[int, int] | None = None,
                  focal: float | None = None) -> Pose:
    """The head's pose; the camera is a pinhole with focal length = the image's longer side (if not given),
    principal point at the image centre (or at the landmarks' centre when the image size is unknown)."""
    pts = np.asarray(landmarks, np.float64).reshape(5, 2)
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks are not finite")
    ipd = float(np.linalg.norm(pts[1] - pts[0]))
    if ipd < 1e-3:
        raise ValueError("degenerate landmarks (eyes coincide)")
    if image_shape is not None:
        h, w = image_shape[:2]
        cx, cy = w / 2.0, h / 2.0
        f = focal or float(max(h, w))
    else:
        cx, cy = pts.mean(0)
        f = focal or 12.0 * ipd  # a face seen at a normal photographic distance
    camera = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], np.float64)
    dist = np.zeros(4)
    # Five points barely constrain six degrees of freedom: left alone, the fit trades roll for yaw. Roll
    # is read from the eye line instead, the points are turned back by it about the principal point (the
    # same as turning the camera about its optical axis, so the rest of the pose is unchanged), and the
    # fit only has to find yaw, pitch and a small residual roll.
    d = pts[1] - pts[0]
    eye_roll = float(np.degrees(np.arctan2(-d[1], d[0])))  # counter-clockwise as displayed is positive
    c, s = np.cos(np.radians(eye_roll)), np.sin(np.radians(eye_roll))
    # Undo a counter-clockwise (as displayed) turn by eye_roll: a clockwise one, (x, y) → (x c - y s, x s + y c).
    rel = pts - (cx, cy)
    upright = np.stack([rel[:, 0] * c - rel[:, 1] * s, rel[:, 0] * s + rel[:, 1] * c], 1) + (cx, cy)
    # Start frontal, at the distance the eye distance implies, looking at the landmarks' centre.
    z = f * _IPD_MM / ipd
    centre = upright.mean(0)
    rvec = np.zeros((3, 1))
    tvec = np.array([[(centre[0] - cx) * z / f], [(centre[1] - cy) * z / f], [z]])
    ok, rvec, tvec = cv2.solvePnP(MODEL_POINTS, upright, camera, dist, rvec, tvec, useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError("solvePnP failed")
    r, _ = cv2.Rodrigues(rvec)
    yaw, pitch, roll = _euler(r)
    projected, _ = cv2.projectPoints(MODEL_POINTS, rvec, tvec, camera, dist)
    err = float(np.sqrt(np.mean(np.sum((projected.reshape(5, 2) - upright) ** 2, axis=1)))) / ipd
    # In y-down camera axes: a positive turn about y moves the nose toward the image's left, about x tilts
    # the face down, about z turns it clockwise as displayed. Report the conventions of the docstring.
    return Pose(yaw=-yaw, pitch=pitch, roll=eye_roll - roll, reprojection_error=err)
