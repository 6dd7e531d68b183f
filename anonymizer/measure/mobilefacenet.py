"""MobileFaceNet as a face encoder: a recognizer independent of dlib's ResNet (another architecture, another
training set), so that a face one attacker no longer matches can still be checked by a second.

The network (foamliu/MobileFaceNet, ONNX) takes 112x112 RGB chips aligned by 5 landmarks onto the ArcFace
template, normalised with ImageNet's per-channel mean and std, and returns 128-d vectors compared by cosine.
Here they are L2-normalised, so the protocol's Euclidean distance is d = sqrt(2 - 2 cos).

Licence: the code is Apache-2.0, but the weights were trained on MS-Celeb-1M, which Microsoft withdrew; the
model is marked `non-commercial` in anonymizer.models.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from anonymizer.faces import Face
from anonymizer.measure.encoder import FivePointAligner
from anonymizer.models import describe, locate
from anonymizer.onnx_runtime import derived, ort_session

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
INPUT_SIZE = 112

# Distances at a false-accept rate, set by `anonymizer eval calibrate` on the LFW calibration identities
# (anonymizer.eval.lfw.split_of), disjoint from the evaluation identities (docs/reid.md).
CALIBRATED_DISTANCES = {1e-3: 1.1503, 1e-4: 1.0902}  # cosine 0.338 and 0.406


def preprocess(chips: np.ndarray) -> np.ndarray:
    """N x 112 x 112 x 3 RGB uint8 chips -> the network's N x 3 x 112 x 112 float input."""
    x = (chips.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def free_batch(model: bytes) -> bytes:
    """The model taking any batch size: the export fixes N = 1 on its input and flattens its output to
    (1, -1), so the batch dimensions are freed and the output is reshaped per face."""
    import onnx

    m = onnx.load_from_string(model)
    for v in list(m.graph.input) + list(m.graph.output):
        for d, name in zip(v.type.tensor_type.shape.dim, ("N", "D")):
            d.dim_param = name
    return m.SerializeToString()


class MobileFaceNetEncoder:
    """Registered as `mobilefacenet` in anonymizer.measure.encoder.ENCODERS.

    `same_person_distance` defaults to the calibrated distance at FAR 1e-3 (CALIBRATED_DISTANCES).
    Alignment: the face's own 5 landmarks, else dlib's 5-point predictor (FivePointAligner). All faces of
    an image go through the network in one call. `device`: auto (CUDA when onnxruntime has it), cpu, cuda.
    `precision`: float32, int8 (its 8-bit copy, anonymizer.int8: what the face bank's identity guard may
    use) or auto (int8 on a CPU with 8-bit dot products, anonymizer.int8.resolve).
    """

    name = "mobilefacenet"
    MODELS = ("mobilefacenet", "dlib_shape5")  # weight files (anonymizer.models names), for the audit report
    calibrated_distances = CALIBRATED_DISTANCES

    def __init__(self, model_dir: str | None = None, same_person_distance: float | None = None,
                 device: str = "auto", precision: str = "float32") -> None:
        import onnxruntime as ort

        from anonymizer.int8 import int8_model, resolve
        from anonymizer.onnx_runtime import on_cuda

        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"mobilefacenet: device must be auto, cpu or cuda, got {device!r}")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("mobilefacenet: device cuda asked for, but onnxruntime has no CUDA provider "
                               "(pip install onnxruntime-gpu)")
        self.model_path = locate("mobilefacenet", model_dir)
        self.same_person_distance = float(CALIBRATED_DISTANCES[1e-3] if same_person_distance is None
                                          else same_person_distance)
        self.precision = resolve(precision, on_cuda(device), self.name)
        try:
            raw = self.model_path.read_bytes()
            model = derived("mobilefacenet-free-batch", raw, lambda: free_batch(raw))
            if self.precision == "int8":
                model, device = int8_model(model, self.name), "cpu"
            self._session = ort_session(model, device, self.name)
        except Exception as exc:  # a truncated or foreign file: say which
            raise ValueError(f"mobilefacenet: cannot load {self.model_path}: {exc}") from exc
        self._input = self._session.get_inputs()[0].name
        self._aligner = FivePointAligner(INPUT_SIZE, model_dir, self.name)

    @staticmethod
    def weight_files(params: dict, model_dir: str | None) -> list[dict]:
        from anonymizer.measure.encoder import int8_rows

        network, aligner = (describe(m, model_dir) for m in MobileFaceNetEncoder.MODELS)
        return int8_rows([network], "mobilefacenet", params) + [aligner]

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> list[Any]:
        return self._aligner(image, faces)

    def embed(self, image: np.ndarray, alignments: Sequence[Any]) -> np.ndarray:
        if not alignments:
            return np.zeros((0, 128), np.float32)
        return self.embed_chips(self._aligner.chips(image, alignments))

    def network_input(self, image: np.ndarray, alignments: Sequence[Any]) -> np.ndarray:
        """The network's input for these faces (its int8 copy's calibration feeds it)."""
        return preprocess(self._aligner.chips(image, alignments))

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """N x 128 L2-normalised embeddings of aligned N x 112 x 112 x 3 RGB chips, in one network call."""
        out = self._session.run(None, {self._input: preprocess(chips)})[0]
        v = np.asarray(out, np.float32).reshape(len(chips), -1)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
