"""OpenCV's Haar cascade (Viola-Jones, Lienhart's frontal-face cascade): a boosted-features family of its own,
shipped in opencv-python-headless 4.x (`cv2.data`; OpenCV 5 no longer ships it). Measured as an auditor
candidate: a detector unlike every CNN here, but a weak one (docs/benchmarks.md).

A face's score is the cascade's level weight (detectMultiScale3 with outputRejectLevels), so the harness can
cut it at a false-positive rate like any other detector's.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anonymizer.detect.base import DETECTORS
from anonymizer.faces import Face

LICENCE = "Intel License Agreement (BSD-style; OpenCV's data/haarcascades)"


def _cascade_path(cascade: str) -> Path:
    root = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(root or "") / cascade
    if not root or not path.is_file():
        raise FileNotFoundError(f"opencv_haar: cascade {cascade!r} not found in {root!r} "
                                "(opencv-python-headless 4.x ships it in cv2.data; OpenCV 5 does not)")
    return path


@DETECTORS.register("opencv_haar")
class HaarDetector:
    name = "opencv_haar"

    @staticmethod
    def weight_files(params: dict, model_dir: str | None) -> list[dict]:
        from anonymizer.models import sha256_file

        path = _cascade_path(params.get("cascade", "haarcascade_frontalface_default.xml"))
        return [{"name": "opencv_haar", "file": path.name, "sha256": sha256_file(str(path)), "licence": LICENCE,
                 "licence_class": "permissive"}]

    def __init__(self, model_dir: str | None = None, cascade: str = "haarcascade_frontalface_default.xml",
                 scale_factor: float = 1.1, min_neighbors: int = 3, min_size: int = 24, upsample: float = 1.0,
                 min_score: float = float("-inf")) -> None:
        self._cascade = cv2.CascadeClassifier(str(_cascade_path(cascade)))
        if self._cascade.empty():
            raise ValueError(f"opencv_haar: cannot load cascade {cascade!r}")
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)
        self.min_size, self.upsample, self.min_score = int(min_size), float(upsample), float(min_score)

    def detect(self, image: np.ndarray) -> list[Face]:
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        if self.upsample != 1.0:
            grey = cv2.resize(grey, None, fx=self.upsample, fy=self.upsample, interpolation=cv2.INTER_LINEAR)
        rects, _, weights = self._cascade.detectMultiScale3(
            grey, self.scale_factor, self.min_neighbors, minSize=(self.min_size, self.min_size), outputRejectLevels=True)
        s = self.upsample
        return [Face(x / s, y / s, w / s, h / s, float(wt), self.name)
                for (x, y, w, h), wt in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1))
                if wt >= self.min_score]
