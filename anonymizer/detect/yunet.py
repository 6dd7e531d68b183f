"""YuNet, run at several scales so small faces are found too.

Two backends give the same faces: OpenCV's FaceDetectorYN, and onnxruntime (the default when installed)
running the same ONNX file with FaceDetectorYN's pre- and post-processing done here (pad to a multiple of
32, BGR 0-255 in, per stride sqrt(cls x obj) scores, box and landmark decoding, OpenCV's NMS on integer
boxes). onnxruntime runs this network about 2.5x faster on a CPU core, and on CUDA where there is one.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from anonymizer.detect.base import DETECTORS, MultiScale
from anonymizer.faces import Face
from anonymizer.models import locate
from anonymizer.onnx_runtime import derived, ort_session, session_for_backend

_MIN_INPUT = 64
ALIGN = 32  # FaceDetectorYN pads the input's sides up to multiples of this
STRIDES = (8, 16, 32)
OUTPUTS = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)


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
        backend: str = "auto",
        device: str = "auto",
    ) -> None:
        self.model_path = locate("yunet", model_dir)
        self.scales = [float(s) for s in scales]
        self.max_side = max_side
        self.score_threshold, self.nms_threshold, self.top_k = float(score_threshold), float(nms_threshold), int(top_k)
        self._session = session_for_backend(lambda: _ort_session(self.model_path.read_bytes(), device), backend,
                                            "yunet")
        self.backend = "onnxruntime" if self._session is not None else "opencv"
        self._net = None if self._session is not None else cv2.FaceDetectorYN.create(
            str(self.model_path), "", (320, 320), score_threshold, nms_threshold, top_k)

    any_size = True  # onnxruntime's free input size, or FaceDetectorYN's input size set per call

    def prepared(self, image: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)

    def _detect_at(self, bgr: np.ndarray, scale: float, threshold: float | None = None) -> list[Face]:
        threshold = self.score_threshold if threshold is None else float(threshold)
        h, w = bgr.shape[:2]
        if scale != 1.0:
            bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
        if min(bgr.shape[:2]) < _MIN_INPUT:  # below the network's stride YuNet returns garbage: pad
            padded = np.zeros((max(_MIN_INPUT, bgr.shape[0]), max(_MIN_INPUT, bgr.shape[1]), 3), np.uint8)
            padded[: bgr.shape[0], : bgr.shape[1]] = bgr
            bgr = padded
        rows = self._rows_ort(bgr, threshold) if self._session is not None else self._rows_opencv(bgr, threshold)
        faces = []
        for r in rows:
            lm = r[4:14].reshape(5, 2).astype(np.float32) / scale
            faces.append(Face(*(float(v) / scale for v in r[:4]), float(r[14]), self.name, lm))
        return faces

    def detect_many(self, images: Sequence[np.ndarray], per_call: int = 64) -> list[list[Face]]:
        """`detect` of each of many small images (the pose check's face windows) in few network calls: the
        images of one padded size run as one batch (at 1x; another scale, or the OpenCV backend, runs them
        one by one). On a GPU that is a few large calls instead of one per face; the faces are those
        `detect` finds, as each image is padded as it alone would be."""
        if self._session is None or self.scales != [1.0]:
            return [self.detect(im) for im in images]
        prepared = [self.prepared(im) for im in images]
        sizes = [tuple(-(-max(_MIN_INPUT, n) // ALIGN) * ALIGN for n in bgr.shape[:2]) for bgr in prepared]
        faces: list[list[Face]] = [[] for _ in images]
        for size in dict.fromkeys(sizes):
            same = [i for i, s in enumerate(sizes) if s == size]
            for start in range(0, len(same), per_call):
                chunk = same[start:start + per_call]
                blob = np.zeros((len(chunk), 3, *size), np.float32)
                for b, i in zip(blob, chunk):
                    b[:, :prepared[i].shape[0], :prepared[i].shape[1]] = prepared[i].transpose(2, 0, 1)
                out = dict(zip(OUTPUTS, self._session.run(list(OUTPUTS), {"input": blob})))
                for k, i in enumerate(chunk):  # the graph flattens the batch into its cells, image after image
                    rows = decode({n: v.reshape(len(chunk), -1, v.shape[-1])[k] for n, v in out.items()}, size,
                                  self.score_threshold, self.nms_threshold, self.top_k)
                    faces[i] = [Face(*(float(v) for v in r[:4]), float(r[14]), self.name,
                                     r[4:14].reshape(5, 2).astype(np.float32)) for r in rows]
        return faces

    def _rows_opencv(self, bgr: np.ndarray, threshold: float) -> np.ndarray:
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        self._net.setScoreThreshold(threshold)
        _, rows = self._net.detect(bgr)
        return np.zeros((0, 15), np.float32) if rows is None else rows

    def _rows_ort(self, bgr: np.ndarray, threshold: float) -> np.ndarray:
        """FaceDetectorYN's rows (x, y, w, h, 5 landmarks, score), computed by onnxruntime."""
        h, w = bgr.shape[:2]
        ph, pw = -(-h // ALIGN) * ALIGN, -(-w // ALIGN) * ALIGN
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :h, :w] = bgr.transpose(2, 0, 1)
        out = dict(zip(OUTPUTS, self._session.run(list(OUTPUTS), {"input": blob})))
        return decode(out, (ph, pw), threshold, self.nms_threshold, self.top_k)


def _ort_session(model: bytes, device: str):
    """A session whose input takes any batch, height and width (the file fixes 1 x 640 x 640; its reshapes
    use -1)."""
    return ort_session(derived("yunet-free-batch", model, lambda: free_sized(model)), device, "yunet")


def free_sized(model: bytes) -> bytes:
    import onnx

    m = onnx.load_from_string(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
    for v in m.graph.output:
        v.type.tensor_type.shape.dim[1].dim_param = "cells_" + v.name.split("_")[1]
    return m.SerializeToString()


def decode(out: dict[str, np.ndarray], padded: tuple[int, int], score_threshold: float, nms_threshold: float,
           top_k: int) -> np.ndarray:
    """OpenCV FaceDetectorYN's post-processing, in float32 as it does it: rows of x, y, w, h, the 5
    landmarks (x, y) and the score, the faces NMS keeps in its order."""
    ph, pw = padded
    rows = []
    for s in STRIDES:
        cols = pw // s
        score = np.sqrt(np.clip(out[f"cls_{s}"].reshape(-1), 0, 1) * np.clip(out[f"obj_{s}"].reshape(-1), 0, 1))
        idx = np.nonzero(score >= score_threshold)[0]
        if not len(idx):
            continue
        r, c = (idx // cols).astype(np.float32), (idx % cols).astype(np.float32)
        b = out[f"bbox_{s}"].reshape(-1, 4)[idx]
        k = out[f"kps_{s}"].reshape(-1, 5, 2)[idx]
        stride = np.float32(s)
        bw, bh = np.exp(b[:, 2]) * stride, np.exp(b[:, 3]) * stride
        x1 = (c + b[:, 0]) * stride - bw / np.float32(2)
        y1 = (r + b[:, 1]) * stride - bh / np.float32(2)
        lx, ly = (k[..., 0] + c[:, None]) * stride, (k[..., 1] + r[:, None]) * stride
        rows.append(np.column_stack([x1, y1, bw, bh, np.stack([lx, ly], -1).reshape(-1, 10), score[idx]]))
    if not rows:
        return np.zeros((0, 15), np.float32)
    faces = np.concatenate(rows).astype(np.float32)
    if len(faces) <= 1:
        return faces
    boxes = faces[:, :4].astype(np.int32).tolist()  # OpenCV's Rect2i: truncated toward zero
    keep = cv2.dnn.NMSBoxes(boxes, faces[:, 14].tolist(), score_threshold, nms_threshold, 1.0, top_k)
    return faces[np.asarray(keep, np.int64).reshape(-1)]
