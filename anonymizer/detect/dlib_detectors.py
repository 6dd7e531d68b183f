"""dlib's HOG and CNN (MMOD) detectors: independent of YuNet, so they audit what it missed.

dlib is imported when one is built, so the other detectors work where dlib is not installed (the GPU machine)."""

from __future__ import annotations

import numpy as np

from anonymizer.detect.base import DETECTORS
from anonymizer.faces import Face
from anonymizer.models import locate


@DETECTORS.register("dlib_hog")
class DlibHogDetector:
    name = "dlib_hog"

    @staticmethod
    def weight_files(params: dict, model_dir: str | None) -> list[dict]:
        return [{"name": "dlib_hog", "file": "(built into dlib)", "sha256": None, "licence": "Boost"}]

    def __init__(self, model_dir: str | None = None, upsample: int = 1, min_score: float = 0.0) -> None:
        import dlib

        self.upsample, self.min_score = upsample, min_score
        self._det = dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[Face]:
        rects, scores, _ = self._det.run(np.ascontiguousarray(image), self.upsample, self.min_score)
        return [Face(r.left(), r.top(), r.width(), r.height(), float(s), self.name) for r, s in zip(rects, scores)]


@DETECTORS.register("dlib_cnn")
class DlibCnnDetector:
    name = "dlib_cnn"
    MODELS = ("dlib_cnn",)  # weight files (anonymizer.models names), for the audit report

    def __init__(self, model_dir: str | None = None, upsample: int = 0) -> None:
        import dlib

        self.upsample = upsample
        self._det = dlib.cnn_face_detection_model_v1(str(locate("dlib_cnn", model_dir)))

    def detect(self, image: np.ndarray) -> list[Face]:
        out = self._det(np.ascontiguousarray(image), self.upsample)
        return [Face(d.rect.left(), d.rect.top(), d.rect.width(), d.rect.height(), float(d.confidence), self.name) for d in out]
