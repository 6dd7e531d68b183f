"""YuNet through OpenCV's FaceDetectorYN, run at several scales so small faces are found too."""

from __future__ import annotations

import cv2
import numpy as np

from anonymizer.detect.base import DETECTORS, MultiScale
from anonymizer.faces import Face
from anonymizer.models import locate


_MIN_INPUT = 64


@DETECTORS.register("yunet")
class YuNetDetector(MultiScale):
    name = "yunet"
    MODELS = ("yunet",)  # weight files (anonymizer.models names), for the audit report

    def __init__(
        self,
        model_dir: str | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        scales: list[float] = (1.0,),
        max_side: int = 4096,
        top_k: int = 5000,
    ) -> None:
        self.model_path = locate("yunet", model_dir)
        self.scales = [float(s) for s in scales]
        self.max_side = max_side
        self.nms_threshold = nms_threshold
        self._net = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320), score_threshold, nms_threshold, top_k)

    def _detect_at(self, bgr: np.ndarray, scale: float) -> list[Face]:
        h, w = bgr.shape[:2]
        if scale != 1.0:
            bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
        if min(bgr.shape[:2]) < _MIN_INPUT:  # below the network's stride YuNet returns garbage: pad
            padded = np.zeros((max(_MIN_INPUT, bgr.shape[0]), max(_MIN_INPUT, bgr.shape[1]), 3), np.uint8)
            padded[: bgr.shape[0], : bgr.shape[1]] = bgr
            bgr = padded
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._net.detect(bgr)
        if rows is None:
            return []
        faces = []
        for r in rows:
            lm = r[4:14].reshape(5, 2).astype(np.float32) / scale
            faces.append(Face(*(float(v) / scale for v in r[:4]), float(r[14]), self.name, lm))
        return faces

    def detect_per_scale(self, image: np.ndarray) -> dict[float, list[Face]]:
        """Each usable scale's faces on its own (converted to BGR once for all scales)."""
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        return {s: self._detect_at(bgr, s) for s in self.usable_scales(bgr.shape)}
