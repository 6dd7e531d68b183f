"""SCRFD-2.5G with keypoints (Guo et al. 2021, InsightFace) through onnxruntime, run at several scales.

A different network family from YuNet, RetinaFace and CenterFace (a searched backbone and neck, trained with
sample redistribution), so it can audit their work: faces they all miss for a shared reason are less likely
to be missed by it too. Its weights are InsightFace's, **for non-commercial research only**
(anonymizer.models: licence_class non-commercial): a policy that names it must accept that licence
(`accept_licences`), and a commercial user brings weights licensed to them.

The export fixes its input at 1x3x640x640 and its two upsampling steps at 40x40 and 80x80 outputs, so before
the session is built the input's batch, height and width and the outputs' anchor count are renamed free and
each Resize is given a scale of 2 instead of a fixed size: one session then takes any input whose sides are
multiples of 32 (the image is padded to that, bottom and right, as InsightFace pads to its 640 canvas).

Pre- and post-processing follow InsightFace's `SCRFD.forward`/`detect`: RGB, (x - 127.5) / 128; per stride
8, 16, 32 a score (after a sigmoid), four distances (left, top, right, bottom) and five (dx, dy) keypoints,
all in stride units from an anchor centre; two anchors per feature-map location, listed consecutively.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from anonymizer.detect.base import DETECTORS, MultiScale
from anonymizer.detect.retinaface import nms_indices
from anonymizer.faces import Face
from anonymizer.models import locate
from anonymizer.onnx_runtime import derived, ort_session

STRIDES = (8, 16, 32)
ANCHORS = 2  # anchors per feature-map location
ALIGN = 32  # input sides must be multiples of the coarsest stride
MIN_INPUT = 64
MEAN, STD = 127.5, 128.0


@DETECTORS.register("scrfd")
class ScrfdDetector(MultiScale):
    """SCRFD-2.5G; `scales` resize the whole image (each scale can vote on its own in an ensemble)."""

    name = "scrfd"
    MODELS = ("scrfd",)  # weight files (anonymizer.models names), for the audit report and the licence gate

    def __init__(
        self,
        model_dir: str | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        scales: Sequence[float] = (1.0,),
        max_side: int = 4096,
        device: str = "auto",
    ) -> None:
        self.model_path = locate("scrfd", model_dir)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.scales = [float(s) for s in scales]
        self.max_side = int(max_side)
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"scrfd: device must be auto, cpu or cuda, got {device!r}")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ImportError("scrfd: needs `pip install onnxruntime onnx` (onnxruntime-gpu for CUDA)") from None
        try:
            raw = self.model_path.read_bytes()
            self._session = ort_session(derived("scrfd-dynamic", raw, lambda: _dynamic(raw)), device, "scrfd")
        except Exception as exc:  # a truncated or foreign file: say which (a missing CUDA says so itself)
            if str(exc).startswith("scrfd:"):
                raise
            raise ValueError(f"scrfd: cannot load {self.model_path}: {exc}") from exc
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]  # score_8..32, bbox_8..32, kps_8..32

    any_size = True  # the dynamic-sized graph

    def _detect_at(self, rgb: np.ndarray, scale: float, threshold: float | None = None) -> list[Face]:
        h, w = rgb.shape[:2]
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = rgb if (sw, sh) == (w, h) else cv2.resize(
            rgb, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        ph, pw = (max(MIN_INPUT, -(-n // ALIGN) * ALIGN) for n in (sh, sw))
        canvas = np.zeros((ph, pw, 3), np.float32)  # black padding, as InsightFace's canvas
        canvas[:sh, :sw] = resized
        blob = ((canvas - MEAN) / STD).transpose(2, 0, 1)[None]
        outs = self._session.run(self._outputs, {self._input: np.ascontiguousarray(blob)})
        boxes, scores, points = decode(outs, (ph, pw), self.score_threshold if threshold is None else threshold)
        keep = nms_indices(boxes, scores, self.nms_threshold)
        sx, sy = sw / w, sh / h
        boxes = boxes[keep] / np.array([sx, sy, sx, sy], np.float32)
        points = points[keep] / np.array([sx, sy], np.float32)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        return [Face(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), float(s), self.name, p)
                for b, s, p in zip(boxes, scores[keep], points.astype(np.float32))]


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """(height * width * ANCHORS, 2) x, y centres in input pixels, row by row, each location's anchors adjacent."""
    ys, xs = np.mgrid[:height, :width]
    centres = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
    return np.repeat(centres, ANCHORS, axis=0)


def decode(outputs: Sequence[np.ndarray], shape: tuple[int, int], threshold: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (n, 4: x0 y0 x1 y1), scores (n,) and keypoints (n, 5, 2) in the input's pixels, from the nine
    outputs (scores, boxes, keypoints, each at strides 8, 16, 32) of an input of `shape` (height, width)."""
    n = len(STRIDES)
    boxes, scores, points = [], [], []
    for i, stride in enumerate(STRIDES):
        score = outputs[i].reshape(-1)
        bbox = outputs[i + n].reshape(-1, 4) * stride
        kps = outputs[i + 2 * n].reshape(-1, 5, 2) * stride
        centres = anchor_centres(shape[0] // stride, shape[1] // stride, stride)
        if len(centres) != len(score):
            raise ValueError(f"scrfd: stride {stride} gave {len(score)} anchors for a {shape} input, expected {len(centres)}")
        hit = np.flatnonzero(score >= threshold)
        c = centres[hit]
        boxes.append(np.concatenate([c - bbox[hit, :2], c + bbox[hit, 2:]], axis=1))
        scores.append(score[hit])
        points.append(c[:, None, :] + kps[hit])
    return (np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32),
            np.concatenate(points).astype(np.float32))


def _dynamic(model: bytes) -> bytes:
    """The export with free input/output sizes and its fixed-size upsampling made a fixed 2x scale."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError("scrfd: needs `pip install onnxruntime onnx` (onnxruntime-gpu for CUDA)") from None

    m = onnx.load_from_string(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, name in zip((dims[0], dims[2], dims[3]), ("N", "H", "W")):
        d.dim_param = name
    for out in m.graph.output:
        out.type.tensor_type.shape.dim[1].dim_param = "anchors_" + out.name
    two = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scrfd_upsample_x2")
    m.graph.initializer.append(two)
    for node in m.graph.node:
        if node.op_type == "Resize":  # inputs: X, roi, scales, sizes -> X, roi, scales (x2)
            x, roi = node.input[0], node.input[1]
            del node.input[:]
            node.input.extend([x, roi, two.name])
    return m.SerializeToString()
