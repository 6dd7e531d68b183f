"""Face recognizers used as attackers: if one still matches the anonymized face to the original, the
identity leaked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

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
ENCODERS.register_lazy("mobilefacenet", "anonymizer.measure.mobilefacenet:MobileFaceNetEncoder")


@ENCODERS.register("dlib_resnet")
class DlibResNetEncoder:
    """dlib's 128-d ResNet (LFW 99.38%); 0.6 is its published same-person distance (FAR about 1e-2 on LFW).
    `calibrated_distances`: the distances at FAR 1e-3 and 1e-4 set by `anonymizer eval calibrate` on LFW
    calibration identities (docs/reid.md). `landmarks` picks the shape predictor that aligns the chip:
    5 points (the default), or 68 (iBUG 300-W: research use only).

    dlib cuts the chips; the network runs on onnxruntime (anonymizer.measure.dlib_resnet_torch: the same
    weights, the same descriptors within 1e-6; its graph written with torch once and kept, so a worker does
    not import torch), all faces of a call in one batch. `device`: auto (CUDA when onnxruntime has it), cpu,
    cuda. `precision`: float32, or int8 (its 8-bit copy, anonymizer.int8: what the face bank's identity
    guard may use; over LFW faces the descriptors move by about 0.04 and distances between two faces by p99
    0.03 on a CPU with 8-bit dot products), or auto (int8 on such a CPU, anonymizer.int8.resolve)."""

    name = "dlib_resnet"
    same_person_distance = 0.6
    calibrated_distances = {1e-3: 0.5261, 1e-4: 0.4685}

    def __init__(self, model_dir: str | None = None, landmarks: int = 5, device: str = "auto",
                 precision: str = "float32") -> None:
        if landmarks not in (5, 68):
            raise ValueError(f"dlib_resnet: landmarks must be 5 or 68, got {landmarks}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"dlib_resnet: device must be auto, cpu or cuda, got {device!r}")
        import dlib  # here, not at the top: the other encoders work where dlib is not installed (the GPU machine)

        from anonymizer.int8 import int8_model, resolve
        from anonymizer.measure.dlib_resnet_torch import onnx_export
        from anonymizer.onnx_runtime import on_cuda, ort_session, torch_export, torch_source

        self._shape = dlib.shape_predictor(str(locate(f"dlib_shape{landmarks}", model_dir)))
        self.precision = resolve(precision, on_cuda(device), self.name)
        path = locate("dlib_resnet", model_dir)
        try:  # the export is made only where no copy is kept
            if self.precision == "int8":
                model = int8_model(lambda: onnx_export(path), self.name, torch_source(path))
                self._session = ort_session(model, "cpu", self.name)
            else:
                self._session = ort_session(torch_export(self.name, path, lambda: onnx_export(path)), device, self.name)
        except (ValueError, IndexError) as exc:  # a truncated or foreign file: say which
            raise ValueError(f"dlib_resnet: cannot load {path}: {exc}") from exc

    @staticmethod
    def weight_files(params: dict, model_dir: str | None) -> list[dict]:
        from anonymizer.models import describe

        rows = [describe(m, model_dir) for m in (f"dlib_shape{params.get('landmarks', 5)}", "dlib_resnet")]
        return rows[:1] + int8_rows(rows[1:], "dlib_resnet", params)

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> list[Any]:
        import dlib

        img = np.ascontiguousarray(image)
        rects = [dlib.rectangle(int(f.x), int(f.y), int(f.x + f.w), int(f.y + f.h)) for f in faces]
        return [self._shape(img, r) for r in rects]

    def chips(self, image: np.ndarray, alignments: Sequence[Any]) -> np.ndarray:
        """N x 150 x 150 x 3 RGB uint8 chips, cut by dlib as its own descriptor cuts them."""
        import dlib

        from anonymizer.measure.dlib_resnet_torch import CHIP_PADDING, CHIP_SIZE

        shapes = dlib.full_object_detections()
        shapes.extend(alignments)
        return np.stack(dlib.get_face_chips(np.ascontiguousarray(image), shapes, CHIP_SIZE, CHIP_PADDING))

    def network_input(self, image: np.ndarray, alignments: Sequence[Any]) -> np.ndarray:
        """The ONNX network's input (N x 3 x 150 x 150 float32, 0..255): its int8 copy's, and calibration's."""
        return np.ascontiguousarray(self.chips(image, alignments).transpose(0, 3, 1, 2), dtype=np.float32)

    def embed(self, image: np.ndarray, alignments: Sequence[Any]) -> np.ndarray:
        if not alignments:
            return np.zeros((0, 128), np.float32)
        return self._session.run(None, {"x": self.network_input(image, alignments)})[0]


def int8_rows(rows: list[dict], name: str, params: dict) -> list[dict]:
    """The audit report's rows of a recognizer's weights, saying where the run uses their int8 copy (the
    ranges it is made from): auto resolves as on the CPU, where the report's runs measure."""
    from anonymizer.int8 import report_note, resolve

    if resolve(params.get("precision", "float32"), params.get("device") == "cuda", name) != "int8":
        return rows
    return [dict(r, file=r["file"] + report_note(name)) for r in rows]


# ArcFace's 112x112 alignment template (insightface): the eyes, nose tip and mouth corners, in the order
# YuNet and RetinaFace give landmarks (the subject's right eye first, i.e. the one on the image's left).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
# dlib's 5-point predictor (outer and inner corner of the image-right eye, of the image-left eye, base of the
# nose) in the same 112x112 frame: the median over 120 LFW faces aligned by their YuNet landmarks.
DLIB5_TEMPLATE = np.array([[79.12, 52.39], [66.01, 52.72], [32.05, 52.22], [45.02, 52.60], [55.40, 80.96]], np.float32)


class FivePointAligner:
    """Similarity transforms onto ARCFACE_TEMPLATE (scaled to `size`) for ArcFace-style recognizers.

    Landmarks come with the face (YuNet/RetinaFace, found on the same image) or, when the face has none,
    from dlib's 5-point predictor run on `image` inside the box (so an attacker holding an anonymized image
    aligns on the anonymized pixels); that predictor is loaded on first need.
    """

    def __init__(self, size: int = 112, model_dir: str | None = None, owner: str = "encoder") -> None:
        self.size, self.owner, self._model_dir = int(size), owner, model_dir
        self._shape = None

    def points(self, image: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray]:
        """(landmarks, their template): the face's own 5 points, else dlib's 5 found on `image`."""
        if face.landmarks is not None:
            return np.asarray(face.landmarks, np.float32).reshape(5, 2), ARCFACE_TEMPLATE
        import dlib

        if self._shape is None:
            self._shape = dlib.shape_predictor(str(locate("dlib_shape5", self._model_dir)))
        r = dlib.rectangle(int(face.x), int(face.y), int(face.x + face.w), int(face.y + face.h))
        s = self._shape(np.ascontiguousarray(image), r)
        return np.array([[s.part(i).x, s.part(i).y] for i in range(5)], np.float32), DLIB5_TEMPLATE

    def __call__(self, image: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """One 2x3 matrix per face, mapping image pixels to the size x size chip."""
        import cv2

        out = []
        for f in faces:
            src, template = self.points(image, f)
            m, _ = cv2.estimateAffinePartial2D(src, template * (self.size / 112.0), method=cv2.LMEDS)
            if m is None:
                raise ValueError(f"{self.owner}: landmarks give no alignment")
            out.append(m)
        return out

    def chips(self, image: np.ndarray, matrices: Sequence[np.ndarray]) -> np.ndarray:
        """N x size x size x 3 chips of `image` (same channel order)."""
        import cv2

        img = np.ascontiguousarray(image)
        out = np.zeros((len(matrices), self.size, self.size, 3), np.uint8)
        for i, m in enumerate(matrices):
            out[i] = cv2.warpAffine(img, m, (self.size, self.size), flags=cv2.INTER_LINEAR)
        return out


def _resolve_model(model: str, model_dir: str | None) -> Path:
    """An ONNX file: an existing path, else looked up by name in the model directories."""
    from anonymizer.models import search_dirs

    path = Path(model).expanduser()
    tried = [path]
    if not path.is_absolute():
        for d in search_dirs(model_dir):
            tried += [d / model, d / Path(model).stem / Path(model).name]
    for t in tried:
        if t.is_file():
            return t
    from anonymizer.models import ModelNotFoundError

    raise ModelNotFoundError(f"face encoder ONNX model {model!r} not found; looked in: " + ", ".join(map(str, tried))
                             + " (place it in the policy's model_dir or $ANONYMIZER_MODEL_DIR)")


@ENCODERS.register("onnx")
class OnnxFaceEncoder:
    """An ArcFace-style recognizer from an ONNX file (ArcFace, SFace, ...), run by OpenCV's DNN module.

    Alignment: `FivePointAligner` (5 landmarks onto ARCFACE_TEMPLATE scaled to `input_size`; dlib's
    5-point predictor when the face has no landmarks). Embeddings are L2-normalised, so the Euclidean
    distance d relates to cosine similarity s by d = sqrt(2 - 2 s).

    `backend`: "sface" uses cv2.FaceRecognizerSF (OpenCV Zoo's SFace: BGR 112x112, its own normalisation);
    "dnn" feeds a blob ((pixel - mean) * scale, RGB unless `bgr`) to cv2.dnn. `same_person_distance` has no
    universal value: calibrate it (`anonymizer eval reid`); the default is SFace's published cosine 0.363.
    Nothing is downloaded: the file must be in the model directory.
    """

    name = "onnx"

    def __init__(self, model: str, model_dir: str | None = None, backend: str = "dnn", input_size: int = 112,
                 mean: float = 127.5, scale: float = 1 / 127.5, bgr: bool = False,
                 same_person_distance: float = float(np.sqrt(2 - 2 * 0.363)), licence: str = "see the model's source") -> None:
        import cv2

        if backend not in ("dnn", "sface"):
            raise ValueError(f"onnx encoder: backend must be 'dnn' or 'sface', got {backend!r}")
        self.path = _resolve_model(model, model_dir)
        self.backend, self.input_size = backend, int(input_size)
        self.mean, self.scale, self.bgr = float(mean), float(scale), bool(bgr)
        self.same_person_distance = float(same_person_distance)
        self.licence = licence
        self.name = f"onnx:{self.path.name}"
        if backend == "sface":
            self._net = cv2.FaceRecognizerSF.create(str(self.path), "")
        else:
            self._net = cv2.dnn.readNetFromONNX(str(self.path))
        self._aligner = FivePointAligner(self.input_size, model_dir, "onnx encoder")

    @staticmethod
    def weight_files(params: dict, model_dir: str | None) -> list[dict]:
        from anonymizer.models import describe, sha256_file

        path = _resolve_model(params["model"], model_dir)
        rows = [{"name": path.stem, "file": path.name, "sha256": sha256_file(str(path)),
                 "licence": params.get("licence", "unknown: record it in the policy (encoder params.licence)")}]
        if not params.get("landmarks_from_detector_only"):
            rows.append(describe("dlib_shape5", model_dir))
        return rows

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> list[Any]:
        return self._aligner(image, faces)

    def embed(self, image: np.ndarray, alignments: Sequence[Any]) -> np.ndarray:
        import cv2

        vecs = []
        for chip in self._aligner.chips(image, alignments):
            if self.backend == "sface":
                v = self._net.feature(cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
            else:
                chip = cv2.cvtColor(chip, cv2.COLOR_RGB2BGR) if self.bgr else chip
                blob = (chip.astype(np.float32) - self.mean) * self.scale
                self._net.setInput(blob.transpose(2, 0, 1)[None])
                v = self._net.forward()
            v = np.asarray(v, np.float32).reshape(-1)
            vecs.append(v / max(float(np.linalg.norm(v)), 1e-12))
        if not vecs:
            return np.zeros((0, 0), np.float32)
        return np.stack(vecs)


def build_encoder(name: str, params: dict, model_dir: str | None = None) -> FaceEncoder:
    return ENCODERS.create(name, model_dir=model_dir, **params)
