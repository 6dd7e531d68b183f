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
        return [{"name": "dlib_hog", "file": "(built into dlib)", "sha256": None, "licence": "Boost",
                 "licence_class": "permissive"}]

    def __init__(self, model_dir: str | None = None, upsample: int = 1, min_score: float = 0.0,
                 max_side: int = 2560) -> None:
        import dlib

        if max_side < 64:
            raise ValueError(f"dlib_hog: max_side {max_side} is too small (at least 64)")
        self.upsample, self.min_score, self.max_side = upsample, min_score, max_side
        self._det = dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[Face]:
        """HOG's time and memory grow with the pixels it scans (a 7071 px side upsampled: 80 s, 8.4 GB): it scans
        the image upsampled `upsample` times while that stays within `max_side`, else the image resized to
        `max_side` (HOG's smallest face, ~80 px at that size, sets what it can audit); boxes come back in the
        image's coordinates."""
        h, w = image.shape[:2]
        side = max(h, w)
        if side * 2 ** self.upsample <= self.max_side:
            scale, upsample = 1.0, self.upsample
        else:
            import cv2

            scale, upsample = self.max_side / side, 0
            image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        rects, scores, _ = self._det.run(np.ascontiguousarray(image), upsample, self.min_score)
        return [Face(r.left() / scale, r.top() / scale, r.width() / scale, r.height() / scale, float(s), self.name)
                for r, s in zip(rects, scores)]


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
