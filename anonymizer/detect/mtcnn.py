"""MTCNN (Zhang et al. 2016): a cascade of three small CNNs (P-, R-, O-Net) over an image pyramid, with the
facenet-pytorch weights (MIT). A family of its own (cascaded patch classifiers, no anchors or feature
pyramid), measured as a permissively licensed auditor candidate (docs/benchmarks.md).

Networks, pyramid and decoding follow facenet-pytorch's `detect_face` (the weights only make sense with that
layout): RGB, (x - 127.5) / 128; the pyramid starts where a `min_face_size` face fills P-Net's 12 px window
and shrinks by `factor`; P-Net cells (stride 2) above `thresholds[0]` become 12 px boxes, refined by R-Net
(24 px crops) and O-Net (48 px crops), each stage regressing the box and suppressing overlaps. A face's
score is O-Net's. Our crops are resized with OpenCV's INTER_AREA (facenet-pytorch: torch's `area`).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anonymizer.detect.base import DETECTORS
from anonymizer.detect.retinaface import nms_indices
from anonymizer.faces import Face
from anonymizer.models import locate

STRIDE, CELL = 2, 12  # P-Net's output stride and window


class _PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


class _RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class _ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


def _load(net: nn.Module, name: str, model_dir: str | None) -> nn.Module:
    path = locate(name, model_dir)
    try:
        net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    except Exception as exc:  # a truncated or foreign file: say which
        raise ValueError(f"mtcnn: cannot load {path}: {exc}") from exc
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def _normalise(rgb: np.ndarray) -> torch.Tensor:
    """N x 3 x H x W network input (one image: N = 1), channels-last in memory: torch's CPU convolutions and
    pooling run these small-channel networks 2-2.5x faster that way than in NCHW."""
    x = torch.from_numpy((rgb.astype(np.float32) - 127.5) * 0.0078125)
    x = x[None] if rgb.ndim == 3 else x
    return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


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
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709, max_side: int = 4096) -> None:
        if len(thresholds) != 3:
            raise ValueError(f"mtcnn: thresholds are one per stage (P, R, O), got {list(thresholds)}")
        self.min_face_size, self.factor, self.max_side = int(min_face_size), float(factor), int(max_side)
        self.thresholds = [float(t) for t in thresholds]
        self._pnet = _load(_PNet(), "mtcnn_pnet", model_dir)
        self._rnet = _load(_RNet(), "mtcnn_rnet", model_dir)
        self._onet = _load(_ONet(), "mtcnn_onet", model_dir)

    @torch.inference_mode()
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
            reg, prob = self._pnet(_normalise(sized))
            prob, reg = prob[0, 1].numpy(), reg[0].numpy()
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

    def _crops(self, rgb: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
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

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray, net: nn.Module, size: int, threshold: float) -> np.ndarray:
        boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
        if not len(boxes):
            return boxes
        reg, prob = (t.numpy() for t in net(self._crops(rgb, boxes, size)))
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
        reg, pts, prob = (t.numpy() for t in self._onet(self._crops(rgb, boxes, 48)))
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
