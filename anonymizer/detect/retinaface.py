"""RetinaFace MobileNet-0.25 on onnxruntime, from the biubug6 torch weights without their package.

The network (anonymizer.detect.torch_nets, written to ONNX once and kept), anchors and decoding follow
biubug6/Pytorch_Retinaface exactly (the weights only make sense with that layout). onnxruntime runs its
forward pass in about half torch's time on one CPU thread (768x1024: 52 against 95 ms), and a worker does
not import torch. What we add: multi-scale and tiled inference, because a 10 px face in a 4K frame is below
what the network sees at any whole-image scale that fits in memory, and batching, so tiles and images share
one forward pass (on the GPU when onnxruntime has CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from anonymizer.detect.base import DETECTORS, usable_scales
from anonymizer.faces import Face
from anonymizer.models import locate
from anonymizer.onnx_runtime import derived, ort_session, torch_source

MEAN_BGR = (104.0, 117.0, 123.0)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
STRIDE = 32  # the coarsest step: padding to a multiple of it makes every feature map line up


# --- anchors and decoding ----------------------------------------------------------------------------


@lru_cache(maxsize=16)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """Anchors (cx, cy, w, h) in pixels, in the network's output order (level, row, column, size)."""
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = -(-height // step), -(-width // step)  # ceil: what stride-2 convs with padding 1 produce
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step, (np.arange(fw) + 0.5) * step, indexing="ij")
        per_size = [np.stack([cx, cy, np.full_like(cx, s), np.full_like(cx, s)], axis=-1) for s in sizes]
        levels.append(np.stack(per_size, axis=2).reshape(-1, 4))
    return np.concatenate(levels).astype(np.float32)


def decode_priors(loc: np.ndarray, ldm: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1) and landmarks (5, 2) in pixels, as biubug6's decode/decode_landm."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * VARIANCE[1])
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    pts = priors[:, None, :2] + ldm.reshape(-1, 5, 2) * VARIANCE[0] * priors[:, None, 2:]
    return boxes, pts


def nms_indices(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS, highest score first (ties in input order): a box is dropped when its IoU with a kept one
    exceeds `iou_threshold`. OpenCV's, in C++: a P-Net pyramid level or a RetinaFace tile has thousands of
    raw candidates. Scores are probabilities; OpenCV keeps only positive ones, so a 0 is raised to the
    smallest positive float (its order among equal scores is kept)."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    b = np.asarray(boxes, np.float64)
    rects = np.column_stack([b[:, 0], b[:, 1], np.maximum(b[:, 2] - b[:, 0], 0), np.maximum(b[:, 3] - b[:, 1], 0)])
    positive = np.maximum(np.asarray(scores, np.float32), np.finfo(np.float32).tiny)
    return np.asarray(cv2.dnn.NMSBoxes(rects, positive, 0.0, float(iou_threshold)), np.int64).reshape(-1)


@dataclass
class _Raw:
    """Candidates in one coordinate frame before they become Faces (cheap to shift, scale and filter)."""

    boxes: np.ndarray  # (n, 4) x0 y0 x1 y1
    scores: np.ndarray  # (n,)
    landmarks: np.ndarray  # (n, 5, 2)

    @staticmethod
    def empty() -> "_Raw":
        return _Raw(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))

    def select(self, idx: np.ndarray) -> "_Raw":
        return _Raw(self.boxes[idx], self.scores[idx], self.landmarks[idx])

    def transformed(self, dx: float, dy: float, scale: float) -> "_Raw":
        """Shift by (dx, dy) then divide by scale: tile frame -> scaled image -> original image."""
        off = np.array([dx, dy], np.float32)
        return _Raw(
            (self.boxes + np.tile(off, 2)) / scale, self.scores, (self.landmarks + off) / scale
        )

    @staticmethod
    def concat(parts: list["_Raw"]) -> "_Raw":
        parts = [p for p in parts if len(p.scores)] or [_Raw.empty()]
        return _Raw(*(np.concatenate(a) for a in zip(*((p.boxes, p.scores, p.landmarks) for p in parts))))


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` px; the last one ends at the border."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def onnx_graph(name: str, weights: object) -> bytes:
    """The ONNX graph of a network whose weights come for torch (`torch_nets` names it)."""
    path = Path(str(weights))

    def export() -> bytes:
        from anonymizer.detect.torch_nets import to_onnx

        return to_onnx(name, path)

    # Kept per weights, torch version and network definitions: an edited torch_nets writes new graphs.
    definitions = (Path(__file__).parent / "torch_nets.py").read_bytes()
    return derived(f"{name}-torch-export", torch_source(path) + definitions, export)


_Job = tuple[int, np.ndarray, float, int, int, tuple[bool, bool, bool, bool]]  # image, crop, scale, x, y, inner edges


# --- the detector -------------------------------------------------------------------------------------


@DETECTORS.register("retinaface")
class RetinaFaceDetector:
    """RetinaFace MobileNet-0.25; `scales` rescale the whole image, `tile` splits big scaled images.

    Tiling is what finds ~10 px faces in 4K frames: upscaling a whole 4K frame 2x needs a 7680 px input,
    while tiles of `tile` px keep memory flat. Detections cut by an inner tile edge are dropped, since the
    neighbouring tile (overlapping by `tile_overlap` px) sees those faces whole; set the overlap above the
    largest face you need the tiles for (larger faces are found at the whole-image scales).
    `max_side` caps the scaled image's longer side with or without tiles: it bounds time as well as memory.
    """

    name = "retinaface"
    MODELS = ("retinaface",)  # weight files (anonymizer.models names), for the audit report

    def __init__(
        self,
        model_dir: str | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        scales: Sequence[float] = (1.0,),
        max_side: int = 4096,
        tile: int | None = None,
        tile_overlap: int = 128,
        batch_size: int = 8,
        pre_nms_top_k: int = 5000,
        device: str = "auto",
    ) -> None:
        self.model_path = locate("retinaface", model_dir)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.scales = [float(s) for s in scales]
        self.max_side = int(max_side)
        self.tile = int(tile) if tile else None
        self.tile_overlap = int(tile_overlap)
        self.batch_size = max(1, int(batch_size))
        self.pre_nms_top_k = int(pre_nms_top_k)
        self._session = ort_session(onnx_graph("retinaface", self.model_path), device, self.name)

    # public API

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one RGB uint8 image."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces in each RGB uint8 image; scales and tiles of all images share padded, batched forwards."""
        raws: list[list[_Raw]] = [[] for _ in images]
        for (idx, _), raw in self._run(self._jobs(images)):
            raws[idx].append(raw)
        return [self._to_faces(_Raw.concat(r)) for r in raws]

    def detect_per_scale(self, image: np.ndarray) -> dict[float, list[Face]]:
        """Each usable scale's faces on its own, before the cross-scale NMS (for fusion and sweeps)."""
        return self.detect_per_scale_batch([image])[0]

    def detect_per_scale_batch(self, images: Sequence[np.ndarray]) -> list[dict[float, list[Face]]]:
        """`detect_per_scale` of each image; scales and tiles of all images share batched forwards."""
        raws: list[dict[float, list[_Raw]]] = [
            {s: [] for s in usable_scales(self.scales, self.max_side, im.shape)} for im in images]
        for (idx, scale), raw in self._run(self._jobs(images)):
            raws[idx][scale].append(raw)
        return [{s: self._to_faces(_Raw.concat(r)) for s, r in per_scale.items()} for per_scale in raws]

    def _run(self, jobs: Iterator[_Job]) -> Iterator[tuple[tuple[int, float], _Raw]]:
        """((image index, scale), candidates in that image's frame) per crop, in batched forwards."""
        for chunk in self._batches(jobs):
            for (idx, crop, scale, x, y, inner), raw in zip(chunk, self._forward([j[1] for j in chunk])):
                raw = raw.select(self._whole_boxes(raw.boxes, crop.shape[:2], inner))
                yield (idx, scale), raw.transformed(x, y, scale)

    # internals

    def _jobs(self, images: Sequence[np.ndarray]) -> Iterator[_Job]:
        """Crops lazily, so only about one scaled image is in memory at a time."""
        for idx, image in enumerate(images):
            bgr = np.ascontiguousarray(image[..., ::-1]).astype(np.float32)
            for scale in usable_scales(self.scales, self.max_side, bgr.shape):
                for crop, x, y, inner in self._crops(bgr, scale):
                    yield idx, crop, scale, x, y, inner

    def _batches(self, jobs: Iterator[_Job]) -> Iterator[list[_Job]]:
        """Up to batch_size crops, cut early where padding to a common size would waste over half the batch."""
        batch: list[_Job] = []
        for job in jobs:
            candidate = batch + [job]
            shapes = [j[1].shape[:2] for j in candidate]
            padded = len(shapes) * max(h for h, _ in shapes) * max(w for _, w in shapes)
            if batch and (len(batch) >= self.batch_size or padded > 2 * sum(h * w for h, w in shapes)):
                yield batch
                candidate = [job]
            batch = candidate
        if batch:
            yield batch

    # internals

    def _crops(self, bgr: np.ndarray, scale: float) -> Iterator[tuple[np.ndarray, int, int, tuple[bool, bool, bool, bool]]]:
        """The scaled image, or its overlapping tiles, with their offsets and which edges are inner."""
        h, w = bgr.shape[:2]
        if scale != 1.0:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
        sh, sw = bgr.shape[:2]
        if not self.tile or max(sh, sw) <= self.tile:
            yield bgr, 0, 0, (False, False, False, False)
            return
        for y in _tile_starts(sh, self.tile, self.tile_overlap):
            for x in _tile_starts(sw, self.tile, self.tile_overlap):
                crop = bgr[y : y + self.tile, x : x + self.tile]
                inner = (x > 0, y > 0, x + crop.shape[1] < sw, y + crop.shape[0] < sh)
                yield crop, x, y, inner

    @staticmethod
    def _whole_boxes(boxes: np.ndarray, shape: tuple[int, int], inner: tuple[bool, bool, bool, bool]) -> np.ndarray:
        """Indices of boxes not touching an inner tile edge (a face cut there is whole in the neighbour)."""
        h, w = shape
        margin = 2.0
        ok = np.ones(len(boxes), bool)
        if inner[0]:
            ok &= boxes[:, 0] > margin
        if inner[1]:
            ok &= boxes[:, 1] > margin
        if inner[2]:
            ok &= boxes[:, 2] < w - margin
        if inner[3]:
            ok &= boxes[:, 3] < h - margin
        return np.flatnonzero(ok)

    def _forward(self, crops: list[np.ndarray]) -> list[_Raw]:
        """One batched forward; crops are padded (with the mean colour) to a common multiple of 32."""
        ph = -(-max(c.shape[0] for c in crops) // STRIDE) * STRIDE
        pw = -(-max(c.shape[1] for c in crops) // STRIDE) * STRIDE
        batch = np.zeros((len(crops), ph, pw, 3), np.float32)
        for i, c in enumerate(crops):
            batch[i, : c.shape[0], : c.shape[1]] = c - np.asarray(MEAN_BGR, np.float32)
        loc, conf, ldm = self._session.run(None, {"input": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))})
        priors = prior_boxes(ph, pw)
        return [self._candidates(loc[i], conf[i], ldm[i], priors, c.shape[:2]) for i, c in enumerate(crops)]

    def _candidates(
        self, loc: np.ndarray, conf: np.ndarray, ldm: np.ndarray, priors: np.ndarray, shape: tuple[int, ...]
    ) -> _Raw:
        """Thresholded, decoded, NMS-ed candidates of one crop, without what only its padding produced."""
        keep = np.flatnonzero(conf >= self.score_threshold)
        if keep.size > self.pre_nms_top_k:
            keep = keep[np.argsort(-conf[keep], kind="stable")[: self.pre_nms_top_k]]
        boxes, pts = decode_priors(loc[keep], ldm[keep], priors[keep])
        raw = _Raw(boxes, conf[keep], pts)
        h, w = shape
        centres = (raw.boxes[:, :2] + raw.boxes[:, 2:]) / 2  # drop what the padding alone produced
        raw = raw.select(np.flatnonzero((centres[:, 0] < w) & (centres[:, 1] < h)))
        return raw.select(nms_indices(raw.boxes, raw.scores, self.nms_threshold))

    def _to_faces(self, raw: _Raw) -> list[Face]:
        raw = raw.select(nms_indices(raw.boxes, raw.scores, self.nms_threshold))
        return [
            Face(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), float(s), self.name, lm.astype(np.float32))
            for b, s, lm in zip(raw.boxes, raw.scores, raw.landmarks)
        ]
