"""The detector protocol, its registry, multi-scale running and the ensemble that fuses detectors."""

from __future__ import annotations

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
    scale's faces on its own (what the ensemble's per-scale votes use), and their NMS-merged union."""

    scales: list[float]
    max_side: int
    nms_threshold: float

    def usable_scales(self, shape: tuple[int, ...]) -> list[float]:
        return usable_scales(self.scales, self.max_side, shape)

    def detect_per_scale(self, image: np.ndarray) -> dict[float, list[Face]]:
        """Each usable scale's faces on its own, before the cross-scale NMS (for fusion and sweeps)."""
        return {s: self._detect_at(image, s) for s in self.usable_scales(image.shape)}

    def detect(self, image: np.ndarray) -> list[Face]:
        per_scale = self.detect_per_scale(image)
        faces = [f for fs in per_scale.values() for f in fs]
        return nms(faces, self.nms_threshold) if len(per_scale) > 1 else faces

    def _detect_at(self, image: np.ndarray, scale: float) -> list[Face]:
        raise NotImplementedError


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
    """

    def __init__(
        self, detectors: list[Detector], merge_iou: float, merge: str = "nms",
        weights: list[float] | None = None, min_score: float = 0.0, vote_per_scale: bool = False,
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
        self.name = "+".join(d.name for d in detectors)

    def detect(self, image: np.ndarray) -> list[Face]:
        return self._fuse(image.shape, [self._votes(d, image) for d in self.detectors])

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Each image's faces; a detector that takes batches (RetinaFace's `detect_per_scale_batch`) runs
        every image in shared forward passes: on a GPU, few large calls. What it finds is what `detect` finds
        up to float rounding, except that a crop smaller than others in its batch is padded to the largest,
        which can move the score of a face at its border slightly. The pipeline calls `detect`."""
        per_detector = [self._votes_batch(d, images) for d in self.detectors]
        return [self._fuse(im.shape, [votes[i] for votes in per_detector]) for i, im in enumerate(images)]

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
                    detection.min_score, detection.vote_per_scale)
