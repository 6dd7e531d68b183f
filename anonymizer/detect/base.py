"""The detector protocol, its registry, multi-scale running and the ensemble that fuses detectors."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np

from anonymizer.faces import Face, nms, valid, weighted_box_fusion
from anonymizer.registry import Registry


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, in its pixel coordinates."""


DETECTORS: Registry[Detector] = Registry("detector")


def usable_scales(scales: list[float], max_side: int, shape: tuple[int, ...]) -> list[float]:
    """The configured scales that keep the longer side within max_side (else one that fits)."""
    longest = max(shape[:2])
    return [s for s in scales if s * longest <= max_side] or [min(1.0, max_side / longest)]


class MultiScale:
    """For detectors that run the whole image at each of `scales` (`_detect_at`): which scales fit, each
    scale's faces on its own (what the ensemble's per-scale votes use), and their NMS-merged union.
    `any_size`: whether its network takes inputs of any size without cost (then an ensemble may run its
    upscaled passes on windows of the image: `Ensemble` with `focus`)."""

    scales: list[float]
    max_side: int
    nms_threshold: float
    score_threshold: float
    any_size: bool = False

    def usable_scales(self, shape: tuple[int, ...]) -> list[float]:
        return usable_scales(self.scales, self.max_side, shape)

    def prepared(self, image: np.ndarray) -> np.ndarray:
        """The RGB image as `_detect_at` takes it (YuNet: BGR), converted once for all scales."""
        return image

    def detect_per_scale(self, image: np.ndarray) -> dict[float, list[Face]]:
        """Each usable scale's faces on its own, before the cross-scale NMS (for fusion and sweeps)."""
        prepared = self.prepared(image)
        return {s: self._detect_at(prepared, s) for s in self.usable_scales(image.shape)}

    def detect(self, image: np.ndarray) -> list[Face]:
        per_scale = self.detect_per_scale(image)
        faces = [f for fs in per_scale.values() for f in fs]
        return nms(faces, self.nms_threshold) if len(per_scale) > 1 else faces

    def detect_within(self, prepared: np.ndarray, scale: float, windows: "Windows") -> list[Face]:
        """The faces `_detect_at` finds at `scale` whose centres lie in `windows.squares`, from its crops only,
        each crop grown (where the image allows) to sides that are multiples of 32 at `scale`, so the network
        sees it unstretched."""
        faces = []
        h, w = prepared.shape[:2]
        for crop in windows.crops:
            x0, x1 = _aligned(crop[0], crop[2], w, scale)
            y0, y1 = _aligned(crop[1], crop[3], h, scale)
            for f in self._detect_at(prepared[y0:y1, x0:x1], scale):
                lm = None if f.landmarks is None else f.landmarks + np.array([x0, y0], np.float32)
                moved = replace(f, x=f.x + x0, y=f.y + y0, landmarks=lm)
                if windows.holds(moved):
                    faces.append(moved)
        return faces

    def _detect_at(self, image: np.ndarray, scale: float, threshold: float | None = None) -> list[Face]:
        """Faces at `scale` scoring at least `threshold` (None: the detector's own), in `image`'s pixels."""
        raise NotImplementedError


def _aligned(lo: int, hi: int, length: int, scale: float, align: int = 32) -> tuple[int, int]:
    """[lo, hi) grown about its centre to a length that is a multiple of `align` at `scale`, kept inside
    [0, length) (the whole length where it does not fit)."""
    steps = int(np.ceil((hi - lo) * scale / align))
    while int(steps * align / scale) < hi - lo:
        steps += 1
    want = min(length, int(steps * align / scale))
    lo = max(0, min(lo - (want - (hi - lo)) // 2, length - want))
    return lo, lo + want


@dataclass(frozen=True)
class Windows:
    """Where an ensemble's upscaled passes look: `squares` (n, 4: x0 y0 x1 y1), one around each face the
    whole-image passes saw, and `crops`, the integer windows that cover them (overlapping squares joined)."""

    squares: np.ndarray
    crops: list[tuple[int, int, int, int]]

    def holds(self, face: Face) -> bool:
        cx, cy = face.x + face.w / 2, face.y + face.h / 2
        q = self.squares
        return bool(np.any((q[:, 0] <= cx) & (cx <= q[:, 2]) & (q[:, 1] <= cy) & (cy <= q[:, 3])))


def focus_windows(faces: Sequence[Face], shape: tuple[int, ...], reach: float, margin: int) -> Windows:
    """A square of `reach` x each face's longer side plus `margin` px a side around its centre, clipped to the
    image; squares that overlap joined into their bounding box until none do, each then padded by `margin`
    so a face near a square's edge is seen whole."""
    h, w = shape[:2]
    squares = np.array([[f.x + f.w / 2, f.y + f.h / 2, reach * max(f.w, f.h) / 2 + margin] for f in faces],
                       np.float64).reshape(-1, 3)
    squares = np.stack([np.clip(squares[:, 0] - squares[:, 2], 0, w), np.clip(squares[:, 1] - squares[:, 2], 0, h),
                        np.clip(squares[:, 0] + squares[:, 2], 0, w), np.clip(squares[:, 1] + squares[:, 2], 0, h)],
                       axis=1)
    boxes = [list(b) for b in squares]
    joined = True
    while joined:
        joined, out = False, []
        for b in boxes:
            for o in out:
                if b[0] <= o[2] and o[0] <= b[2] and b[1] <= o[3] and o[1] <= b[3]:
                    o[:] = [min(o[0], b[0]), min(o[1], b[1]), max(o[2], b[2]), max(o[3], b[3])]
                    joined = True
                    break
            else:
                out.append(b)
        boxes = out
    crops = [(max(0, int(np.floor(x0)) - margin), max(0, int(np.floor(y0)) - margin),
              min(w, int(np.ceil(x1)) + margin), min(h, int(np.ceil(y1)) + margin)) for x0, y0, x1, y1 in boxes]
    return Windows(squares, [c for c in crops if c[2] > c[0] and c[3] > c[1]])


class Ensemble:
    """Several detectors' faces merged into one list: one face, one region.

    merge="nms": the union, duplicates suppressed at `merge_iou` (recall first: every detector's face is
    kept). merge="wbf": weighted box fusion (anonymizer.faces.weighted_box_fusion): overlapping boxes
    become their score-weighted mean, scored by the detectors' weighted vote, so a face several detectors
    agree on scores higher than one only a single detector saw; `min_score` then cuts the fused score.
    With `vote_per_scale` (wbf only), each scale a detector ran at (its `detect_per_scale`) votes as a
    model of its own with the detector's weight, so a face found at several scales also scores higher;
    scales skipped for `max_side` do not vote (nor count in the denominator).
    Each detector's own score_threshold still applies before either merge.
    With `focus` (anonymizer.policy.Focus), every detector first runs its scales up to 1 on the whole image;
    the faces those passes saw mark `focus_windows`, and the scales above 1 of detectors that take any input
    size run on those windows only: the upscaled passes, most of the CPU, skip empty background.
    """

    def __init__(
        self, detectors: list[Detector], merge_iou: float, merge: str = "nms",
        weights: list[float] | None = None, min_score: float = 0.0, vote_per_scale: bool = False,
        focus=None,
    ) -> None:
        if merge not in ("nms", "wbf"):
            raise ValueError(f"merge must be nms or wbf, not {merge!r}")
        self.detectors = detectors
        self.merge_iou = merge_iou
        self.merge = merge
        self.weights = [1.0] * len(detectors) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(detectors):
            raise ValueError("one weight per detector")
        self.min_score = float(min_score)
        self.vote_per_scale = bool(vote_per_scale) and merge == "wbf"
        self.focus = focus
        self.name = "+".join(d.name for d in detectors)

    def detect(self, image: np.ndarray) -> list[Face]:
        if self.focus is not None:
            return self._fuse(image.shape, self._focused_votes(image))
        return self._fuse(image.shape, [self._votes(d, image) for d in self.detectors])

    def _focused_votes(self, image: np.ndarray, given: dict[int, list[list[Face]]] | None = None
                       ) -> list[list[list[Face]]]:
        """`_votes` of every detector, the upscaled passes run on `focus_windows` of what the others saw.
        `given`: the votes of detectors that run on the whole image (by index), found already."""
        votes: list = []
        seen: list[Face] = []
        later: list[tuple[int, MultiScale, np.ndarray, dict]] = []
        for i, d in enumerate(self.detectors):
            if not (isinstance(d, MultiScale) and d.any_size):
                votes.append(given[i] if given and i in given else self._votes(d, image))
                seen += [f for voter in votes[-1] for f in voter]
                continue
            prepared = d.prepared(image)
            low = min(d.score_threshold, self.focus.proposal_scores.get(d.name, d.score_threshold))
            per_scale: dict[float, list[Face]] = {}
            for s in d.usable_scales(image.shape):
                if s <= 1.0:
                    faces = d._detect_at(prepared, s, low)
                    seen += faces
                    per_scale[s] = [f for f in faces if f.score >= d.score_threshold]
                else:
                    per_scale[s] = []
            votes.append(None)
            later.append((i, d, prepared, per_scale))
        windows = focus_windows(seen, image.shape, self.focus.reach, self.focus.margin)
        for i, d, prepared, per_scale in later:
            for s in per_scale:
                if s > 1.0:
                    per_scale[s] = d.detect_within(prepared, s, windows)
            if self.vote_per_scale:
                votes[i] = list(per_scale.values())
            else:
                flat = [f for fs in per_scale.values() for f in fs]
                votes[i] = [nms(flat, d.nms_threshold) if len(per_scale) > 1 else flat]
        return votes

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Each image's faces; a detector that takes batches (RetinaFace's `detect_per_scale_batch`) runs
        every image in shared forward passes: on a GPU, few large calls. With `focus`, the upscaled passes
        then run on each image's windows as `detect` runs them. What it finds is what `detect` finds up to
        float rounding, except that an image or tile smaller than others in its batch is padded to the
        largest, which can move the score of a face at its border slightly."""
        if self.focus is None:
            per_detector = [self._votes_batch(d, images) for d in self.detectors]
            return [self._fuse(im.shape, [votes[k] for votes in per_detector]) for k, im in enumerate(images)]
        whole = {i: self._votes_batch(d, images) for i, d in enumerate(self.detectors)
                 if not (isinstance(d, MultiScale) and d.any_size)}
        return [self._fuse(im.shape, self._focused_votes(im, {i: v[k] for i, v in whole.items()}))
                for k, im in enumerate(images)]

    def _votes(self, d: Detector, image: np.ndarray) -> list[list[Face]]:
        """One detector's voters on one image: each scale's faces on its own (vote_per_scale), else all."""
        if self.vote_per_scale and hasattr(d, "detect_per_scale"):
            return list(d.detect_per_scale(image).values())
        return [d.detect(image)]

    def _votes_batch(self, d: Detector, images: Sequence[np.ndarray]) -> list[list[list[Face]]]:
        if self.vote_per_scale and hasattr(d, "detect_per_scale_batch"):
            return [list(per_scale.values()) for per_scale in d.detect_per_scale_batch(images)]
        if not self.vote_per_scale and hasattr(d, "detect_batch"):
            return [[faces] for faces in d.detect_batch(images)]
        return [self._votes(d, im) for im in images]

    def _fuse(self, shape: tuple[int, ...], votes: list[list[list[Face]]]) -> list[Face]:
        """The detectors' voters (votes[detector] = its lists of faces) on one image, merged."""
        h, w = shape[:2]
        if self.merge == "wbf":
            models, weights = [], []
            for voters, weight in zip(votes, self.weights):
                for faces in voters:
                    models.append([f for f in faces if valid(f, w, h)])
                    weights.append(weight)
            fused = weighted_box_fusion(models, weights, self.merge_iou)
            return [f for f in fused if f.score >= self.min_score]
        faces = [f for voters in votes for fs in voters for f in fs if valid(f, w, h)]
        return nms(faces, self.merge_iou) if len(self.detectors) > 1 else faces


def build_detector(name: str, params: dict, model_dir: str | None = None) -> Detector:
    return DETECTORS.create(name, model_dir=model_dir, **params)


def build_ensemble(detection, model_dir: str | None = None) -> Ensemble:
    """The policy's `detection:` section (anonymizer.policy.Detection) as the pipeline runs it."""
    detectors = [build_detector(c.name, c.params, model_dir) for c in detection.detectors]
    return Ensemble(detectors, detection.merge_iou, detection.merge, [c.weight for c in detection.detectors],
                    detection.min_score, detection.vote_per_scale, detection.focus)
