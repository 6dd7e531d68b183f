"""MTCNN (Zhang et al. 2016): a cascade of three small CNNs (P-, R-, O-Net) over an image pyramid, with the
facenet-pytorch weights (MIT). A family of its own (cascaded patch classifiers, no anchors or feature
pyramid), measured as a permissively licensed auditor candidate (docs/benchmarks.md).

Networks, pyramid and decoding follow facenet-pytorch's `detect_face` (the weights only make sense with that
layout): RGB, (x - 127.5) / 128; the pyramid starts where a `min_face_size` face fills P-Net's 12 px window
and shrinks by `factor`; P-Net cells (stride 2) above `thresholds[0]` become 12 px boxes, refined by R-Net
(24 px crops) and O-Net (48 px crops), each stage regressing the box and suppressing overlaps. A face's
score is O-Net's. Our crops are resized with OpenCV's INTER_AREA (facenet-pytorch: torch's `area`). The
three networks run on onnxruntime, their graphs written from the torch weights once and kept
(anonymizer.detect.torch_nets): R- and O-Net run slower there than in torch's channels-last
layout (79-104 against 73 us a 24 px crop, 618-690 against 431 us a 48 px one), but a worker does not import
torch (2 s), and OpenCV's DNN is slower still (docs/benchmarks.md "Where the time goes").
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from anonymizer.detect.base import DETECTORS
from anonymizer.detect.retinaface import nms_indices, onnx_graph
from anonymizer.faces import Face
from anonymizer.models import locate
from anonymizer.onnx_runtime import ort_session

STRIDE, CELL = 2, 12  # P-Net's output stride and window


def _network(name: str, model_dir: str | None, device: str):
    """One stage's onnxruntime session (its graph written from the torch weights once, then kept)."""
    return ort_session(onnx_graph(name, locate(name, model_dir)), device, "mtcnn")


CHUNK = 64  # R- and O-Net crops per network call: onnxruntime runs thousands at once up to a third slower


def _run(session, x: np.ndarray) -> list[np.ndarray]:
    if len(x) <= CHUNK:
        return session.run(None, {"input": x})
    parts = [session.run(None, {"input": x[i:i + CHUNK]}) for i in range(0, len(x), CHUNK)]
    return [np.concatenate(outs) for outs in zip(*parts)]


def _normalise(rgb: np.ndarray) -> np.ndarray:
    """N x 3 x H x W network input (one image: N = 1)."""
    x = (rgb.astype(np.float32) - 127.5) * 0.0078125
    x = x[None] if rgb.ndim == 3 else x
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes (x0 y0 x1 y1) grown to squares about their centres (facenet-pytorch's rerec)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + (w - side) / 2
    out[:, 1] = boxes[:, 1] + (h - side) / 2
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + plus_one
    h = boxes[:, 3] - boxes[:, 1] + plus_one
    return boxes[:, :4] + reg * np.stack([w, h, w, h], axis=1)


@DETECTORS.register("mtcnn")
class MtcnnDetector:
    name = "mtcnn"
    MODELS = ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")  # weight files (anonymizer.models names)

    def __init__(self, model_dir: str | None = None, min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709, max_side: int = 4096,
                 device: str = "auto") -> None:
        if len(thresholds) != 3:
            raise ValueError(f"mtcnn: thresholds are one per stage (P, R, O), got {list(thresholds)}")
        self.min_face_size, self.factor, self.max_side = int(min_face_size), float(factor), int(max_side)
        self.thresholds = [float(t) for t in thresholds]
        self._pnet, self._rnet, self._onet = (_network(name, model_dir, device) for name in self.MODELS)

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        shrink = min(1.0, self.max_side / max(h, w))
        rgb = cv2.resize(image, (round(w * shrink), round(h * shrink)), interpolation=cv2.INTER_AREA) if shrink < 1 else image
        boxes = self._proposals(rgb)
        boxes = self._refine(rgb, boxes, self._rnet, 24, self.thresholds[1])
        boxes, points = self._output(rgb, boxes)
        return [Face(float(b[0]) / shrink, float(b[1]) / shrink, float(b[2] - b[0]) / shrink, float(b[3] - b[1]) / shrink,
                     float(b[4]), self.name, (p / shrink).astype(np.float32)) for b, p in zip(boxes, points)]

    def _proposals(self, rgb: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: (n, 5) x0 y0 x1 y1 score, regressed and squared."""
        h, w = rgb.shape[:2]
        m = CELL / self.min_face_size
        scale, found = m, []
        while min(h, w) * scale >= CELL:
            sized = cv2.resize(rgb, (int(w * scale + 1), int(h * scale + 1)), interpolation=cv2.INTER_AREA)
            reg, prob = _run(self._pnet, _normalise(sized))
            prob, reg = prob[0, 1], reg[0]
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if len(ys):
                q1 = np.floor((STRIDE * np.stack([xs, ys], 1) + 1) / scale)
                q2 = np.floor((STRIDE * np.stack([xs, ys], 1) + CELL) / scale)
                b = np.concatenate([q1, q2, prob[ys, xs][:, None], reg[:, ys, xs].T], axis=1)
                found.append(b[nms_indices(b[:, :4], b[:, 4], 0.5)])
            scale *= self.factor
        if not found:
            return np.zeros((0, 5), np.float32)
        b = np.concatenate(found)
        b = b[nms_indices(b[:, :4], b[:, 4], 0.7)]
        return _square(np.concatenate([_regress(b[:, :4], b[:, 5:9], plus_one=False), b[:, 4:5]], axis=1))

    def _crops(self, rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        h, w = rgb.shape[:2]
        b = np.trunc(boxes[:, :4]).astype(int)
        x0, y0 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
        x1, y1 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
        crops = []
        for a, c, e, f in zip(x0, y0, x1, y1):
            patch = rgb[c - 1:f, a - 1:e]
            crops.append(cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA) if patch.size
                         else np.zeros((size, size, 3), np.uint8))
        return _normalise(np.stack(crops))

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray, net, size: int, threshold: float) -> np.ndarray:
        boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
        if not len(boxes):
            return boxes
        reg, prob = _run(net, self._crops(rgb, boxes, size))
        keep = prob[:, 1] > threshold
        b = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
        reg = reg[keep]
        k = nms_indices(b[:, :4], b[:, 4], 0.7)
        b, reg = b[k], reg[k]
        return _square(np.concatenate([_regress(b, reg, plus_one=True), b[:, 4:5]], axis=1))

    def _output(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
        if not len(boxes):
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        reg, pts, prob = _run(self._onet, self._crops(rgb, boxes, 48))
        keep = prob[:, 1] > self.thresholds[2]
        b, reg, pts = boxes[keep, :4], reg[keep], pts[keep]
        score = prob[keep, 1]
        bw, bh = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
        points = np.stack([bw[:, None] * pts[:, :5] + b[:, 0:1] - 1, bh[:, None] * pts[:, 5:] + b[:, 1:2] - 1], axis=-1)
        b = _regress(b, reg, plus_one=True)
        k = _nms_min(b, score, 0.7)
        return np.concatenate([b[k], score[k, None]], axis=1), points[k]


def _nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS on intersection over the smaller box (facenet-pytorch's final 'Min' NMS)."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        order = rest[iw * ih / np.minimum(areas[i], areas[rest]) <= threshold]
    return np.asarray(keep, dtype=np.int64)
