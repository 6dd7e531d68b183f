"""The face region: forehead to chin, as an ellipse (or box) grown from the detector's box."""

from __future__ import annotations

import numpy as np

from anonymizer.anonymize import FaceMask
from anonymizer.faces import Face


def face_region(face: Face, image_shape: tuple[int, int], expand: float, shape: str, feather: float) -> FaceMask:
    """Detector boxes stop at the eyebrows: grow them more upward, so the forehead and hairline go too."""
    height, width = image_shape
    cx = face.x + face.w / 2
    cy = face.y + face.h / 2 - 0.08 * face.h
    a = face.w * expand / 2
    b = face.h * expand * 1.12 / 2
    x0, x1 = max(0, int(np.floor(cx - a))), min(width, int(np.ceil(cx + a)) + 1)
    y0, y1 = max(0, int(np.floor(cy - b))), min(height, int(np.ceil(cy + b)) + 1)
    if x1 <= x0 or y1 <= y0:
        return FaceMask(0, 0, np.zeros((0, 0), np.float32))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = (xx + 0.5 - cx) / a, (yy + 0.5 - cy) / b
    r = np.sqrt(dx * dx + dy * dy) if shape == "ellipse" else np.maximum(np.abs(dx), np.abs(dy))
    alpha = np.clip((1.0 - r) / feather, 0.0, 1.0) if feather > 0 else (r <= 1.0).astype(np.float32)
    return FaceMask(x0, y0, alpha.astype(np.float32))
