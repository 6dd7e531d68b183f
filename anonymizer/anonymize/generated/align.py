"""Align a face to a canonical crop from its 5 landmarks, and back.

The crop is defined by where the 5 landmarks land in it (`TEMPLATE`, fractions of the crop side). The
template's proportions are those of YuNet's landmarks on LFW: nose 0.5 and mouth 0.97 eye-distances below
the eye line, mouth 0.84 eye-distances wide; the eye distance is 22% of the crop side, so the crop keeps
about one eye-distance of context around the face. A similarity transform (rotation, uniform scale,
translation: cv2.estimateAffinePartial2D) maps the landmarks onto the template, so the generator learns
one geometry and pose varies only by yaw/pitch (and the residual roll the fit leaves).

Landmark order is the detector's: image-left eye, image-right eye, nose tip, image-left and image-right
mouth corner (the subject's right eye first, as YuNet and RetinaFace give them).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CROP_SIZE = 128

# (x, y) as fractions of the crop side.
TEMPLATE = np.array(
    [[0.39, 0.42], [0.61, 0.42], [0.50, 0.53], [0.408, 0.633], [0.592, 0.633]], np.float32
)

# The region the generator replaces, in crop fractions: an ellipse from above the brows to below the chin
# and cheek to cheek (1.3 × 1.77 eye-distances half-axes), feathered over its outer `FEATHER` of radius.
MASK_CENTER = (0.5, 0.5)
MASK_AXES = (0.29, 0.39)
FEATHER = 0.12


@dataclass
class Aligned:
    crop: np.ndarray        # size×size×3 uint8
    matrix: np.ndarray      # 2×3 float64: image → crop coordinates
    landmarks: np.ndarray   # 5×2 float32, in crop coordinates
    size: int


def template(size: int = CROP_SIZE) -> np.ndarray:
    return TEMPLATE * np.float32(size)


def alignment_matrix(landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The similarity transform (2×3, image → crop) that best maps the landmarks onto the template."""
    src = np.asarray(landmarks, np.float32).reshape(5, 2)
    if not np.all(np.isfinite(src)):
        raise ValueError("landmarks are not finite")
    m, _ = cv2.estimateAffinePartial2D(src, template(size), method=cv2.LMEDS)
    if m is None:  # degenerate (coincident points)
        raise ValueError("cannot align: degenerate landmarks")
    return m.astype(np.float64)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return (p @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix).astype(np.float64)


def align(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> Aligned:
    """The canonical size×size crop of the face; outside the image the border is replicated."""
    m = alignment_matrix(landmarks, size)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return Aligned(crop, m, transform_points(landmarks, m), size)


def crop_window(matrix: np.ndarray, size: int, image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the image pixels the crop covers, clipped to the image."""
    corners = transform_points(np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float32), invert(matrix))
    h, w = image_shape
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def warp_back(crop: np.ndarray, matrix: np.ndarray, window: tuple[int, int, int, int],
              interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The crop (or a crop-space mask) resampled into the image window (x0, y0, x1, y1); 0 outside the crop."""
    x0, y0, x1, y1 = window
    # crop coords = A · (window coords + (x0, y0)) + t
    shifted = matrix.copy()
    shifted[:, 2] = matrix[:, 2] + matrix[:, :2] @ np.array([x0, y0], np.float64)
    return cv2.warpAffine(crop, shifted, (x1 - x0, y1 - y0), flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def face_mask(size: int = CROP_SIZE, feather: float = FEATHER) -> np.ndarray:
    """Alpha (size×size float32, 1 inside) of the region the generator replaces, in crop space."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = (xx + 0.5 - MASK_CENTER[0] * size) / (MASK_AXES[0] * size)
    dy = (yy + 0.5 - MASK_CENTER[1] * size) / (MASK_AXES[1] * size)
    r = np.sqrt(dx * dx + dy * dy)
    if feather <= 0:
        return (r <= 1.0).astype(np.float32)
    return np.clip((1.0 - r) / feather, 0.0, 1.0).astype(np.float32)


def hole_mask(size: int = CROP_SIZE) -> np.ndarray:
    """The binary region the generator's input has removed: every pixel the feathered mask touches."""
    return (face_mask(size) > 0).astype(np.float32)


def heatmaps(landmarks: np.ndarray, size: int = CROP_SIZE, sigma: float | None = None) -> np.ndarray:
    """5×size×size float32 Gaussians (peak 1) centred on the landmarks (crop coordinates)."""
    sigma = sigma if sigma is not None else 0.02 * size
    lm = np.asarray(landmarks, np.float32).reshape(-1, 2)
    coords = np.arange(size, dtype=np.float32)  # OpenCV's convention: pixel i's centre is at i
    gx = np.exp(-((coords[None, :] - lm[:, :1]) ** 2) / (2 * sigma * sigma))  # 5×size (x)
    gy = np.exp(-((coords[None, :] - lm[:, 1:]) ** 2) / (2 * sigma * sigma))  # 5×size (y)
    return (gy[:, :, None] * gx[:, None, :]).astype(np.float32)
