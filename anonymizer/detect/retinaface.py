"""RetinaFace MobileNet-0.25 as our own torch module, so the biubug6 weights run without their package.

The network, anchors and decoding follow biubug6/Pytorch_Retinaface exactly (the weights only make sense
with that layout). What we add: multi-scale and tiled inference, because a 10 px face in a 4K frame is
below what the network sees at any whole-image scale that fits in memory, and batching, so tiles and
images share one forward pass (on the GPU when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anonymizer.detect.base import DETECTORS, usable_scales
from anonymizer.faces import Face
from anonymizer.models import locate

MEAN_BGR = (104.0, 117.0, 123.0)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
STRIDE = 32  # the coarsest step: padding to a multiple of it makes every feature map line up


# --- network (layer names mirror the state dict's keys) ---------------------------------------------


def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def _conv_bn_no_relu(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, 1, 1, bias=False), nn.BatchNorm2d(oup))


def _conv_bn1x1(inp: int, oup: int, leaky: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True))


def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(leaky, inplace=True),
    )


class _MobileNetV1Body(nn.Module):
    """MobileNet-0.25 without its classifier: only stages 1-3 feed the FPN (and exist in the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1), _conv_dw(32, 64, 2), _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class _FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.output1 = _conv_bn1x1(in_channels[0], out, leaky)
        self.output2 = _conv_bn1x1(in_channels[1], out, leaky)
        self.output3 = _conv_bn1x1(in_channels[2], out, leaky)
        self.merge1 = _conv_bn(out, out, leaky=leaky)
        self.merge2 = _conv_bn(out, out, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
        return [o1, o2, o3]


class _SSH(nn.Module):
    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.conv3X3 = _conv_bn_no_relu(inp, out // 2)
        self.conv5X5_1 = _conv_bn(inp, out // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn_no_relu(out // 4, out // 4)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn_no_relu(out // 4, out // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), c7], dim=1))


class _Head(nn.Module):
    """A 1x1 conv whose output is laid out (batch, H*W*anchors, k), the order the priors use."""

    def __init__(self, inp: int, k: int, anchors: int = 2) -> None:
        super().__init__()
        self.k = k
        self.conv1x1 = nn.Conv2d(inp, anchors * k, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.k)


class RetinaFaceNet(nn.Module):
    """Outputs (box deltas, face probability, landmark deltas) per prior, for a BGR-minus-mean batch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _MobileNetV1Body()
        self.fpn = _FPN([64, 128, 256], 64)
        self.ssh1, self.ssh2, self.ssh3 = _SSH(64, 64), _SSH(64, 64), _SSH(64, 64)
        self.ClassHead = nn.ModuleList([_Head(64, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(64, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(64, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.fpn(self.body(x))
        feats = [self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(conf, dim=-1)[..., 1], ldm


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


def decode_priors(loc: torch.Tensor, ldm: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (x0, y0, x1, y1) and landmarks (5, 2) in pixels, as biubug6's decode/decode_landm."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    pts = priors[:, None, :2] + ldm.view(-1, 5, 2) * VARIANCE[0] * priors[:, None, 2:]
    return boxes, pts


def nms_indices(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Vectorised greedy NMS: thousands of raw candidates per tile make the pure-Python one too slow."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes.T
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        ih = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


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
        device: str | None = None,
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
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = self._load(self.model_path, self.device)

    @staticmethod
    def _load(path: object, device: torch.device) -> RetinaFaceNet:
        net = RetinaFaceNet()
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        net.load_state_dict(state, strict=True)
        return net.eval().to(device)

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

    @torch.inference_mode()
    def _forward(self, crops: list[np.ndarray]) -> list[_Raw]:
        """One batched forward; crops are padded (with the mean colour) to a common multiple of 32."""
        ph = -(-max(c.shape[0] for c in crops) // STRIDE) * STRIDE
        pw = -(-max(c.shape[1] for c in crops) // STRIDE) * STRIDE
        batch = np.zeros((len(crops), ph, pw, 3), np.float32)
        for i, c in enumerate(crops):
            batch[i, : c.shape[0], : c.shape[1]] = c - np.asarray(MEAN_BGR, np.float32)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
        loc, conf, ldm = self.net(x)
        priors = torch.from_numpy(prior_boxes(ph, pw)).to(self.device)
        return [self._candidates(loc[i], conf[i], ldm[i], priors, c.shape[:2]) for i, c in enumerate(crops)]

    def _candidates(
        self, loc: torch.Tensor, conf: torch.Tensor, ldm: torch.Tensor, priors: torch.Tensor, shape: tuple[int, ...]
    ) -> _Raw:
        """Thresholded, decoded, NMS-ed candidates of one crop, without what only its padding produced."""
        keep = torch.nonzero(conf >= self.score_threshold).squeeze(1)
        if keep.numel() > self.pre_nms_top_k:
            keep = keep[torch.topk(conf[keep], self.pre_nms_top_k).indices]
        boxes, pts = decode_priors(loc[keep], ldm[keep], priors[keep])
        raw = _Raw(boxes.cpu().numpy(), conf[keep].cpu().numpy(), pts.cpu().numpy())
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
