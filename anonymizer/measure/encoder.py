"""Face recognizers used as attackers: if one still matches the anonymized face to the original, the
identity leaked."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import dlib
import numpy as np

from anonymizer.faces import Face
from anonymizer.models import locate
from anonymizer.registry import Registry


class FaceEncoder(Protocol):
    name: str
    same_person_distance: float  # the library's own decision threshold

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> list[Any]:
        """Per-face alignment found on `image`; reusable on another image of the same geometry."""

    def embed(self, image: np.ndarray, alignments: Sequence[Any]) -> np.ndarray:
        """N×D embeddings; distances between them are Euclidean."""


ENCODERS: Registry[FaceEncoder] = Registry("face encoder")


@ENCODERS.register("dlib_resnet")
class DlibResNetEncoder:
    """dlib's 128-d ResNet (LFW 99.38%); 0.6 is its published same-person distance."""

    name = "dlib_resnet"
    same_person_distance = 0.6

    def __init__(self, model_dir: str | None = None) -> None:
        self._shape = dlib.shape_predictor(str(locate("dlib_shape5")))
        self._net = dlib.face_recognition_model_v1(str(locate("dlib_resnet")))

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> list[Any]:
        img = np.ascontiguousarray(image)
        rects = [dlib.rectangle(int(f.x), int(f.y), int(f.x + f.w), int(f.y + f.h)) for f in faces]
        return [self._shape(img, r) for r in rects]

    def embed(self, image: np.ndarray, alignments: Sequence[Any]) -> np.ndarray:
        if not alignments:
            return np.zeros((0, 128), np.float32)
        shapes = dlib.full_object_detections()
        shapes.extend(alignments)
        vecs = self._net.compute_face_descriptor(np.ascontiguousarray(image), shapes)
        return np.array([np.array(v) for v in vecs], np.float32)


def build_encoder(name: str, params: dict, model_dir: str | None = None) -> FaceEncoder:
    return ENCODERS.create(name, model_dir=model_dir, **params)
