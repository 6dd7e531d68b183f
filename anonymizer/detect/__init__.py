"""Detect: find every face, with 5 landmarks where the detector gives them.

Detectors are chosen by name from the policy. Importing this package registers the built-in ones.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from anonymizer.faces import Face, nms, valid
from anonymizer.registry import Registry


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, in its pixel coordinates."""


DETECTORS: Registry[Detector] = Registry("detector")


class Ensemble:
    """The union of several detectors, merged by NMS: recall first, one face one region."""

    def __init__(self, detectors: list[Detector], merge_iou: float) -> None:
        self.detectors = detectors
        self.merge_iou = merge_iou
        self.name = "+".join(d.name for d in detectors)

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        faces = [f for d in self.detectors for f in d.detect(image) if valid(f, w, h)]
        return nms(faces, self.merge_iou) if len(self.detectors) > 1 else faces


def build_detector(name: str, params: dict, model_dir: str | None = None) -> Detector:
    return DETECTORS.create(name, model_dir=model_dir, **params)


from anonymizer.detect import dlib_detectors, retinaface, yunet  # noqa: E402,F401  (registration)
