"""The classical operators the seed study compares: blur, pixelate, noise, mask.

Each takes one `strength`, in units that do not depend on the face's size in pixels:
- blur: Gaussian sigma as a fraction of the face size;
- pixelate: block size as a fraction of the face size;
- noise: share of the region's pixels replaced by uniform random colours (the study's k%, as 0–1);
- mask: opacity of a flat fill (1 = blackout).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from anonymizer.anonymize.base import ANONYMIZERS, Anonymized
from anonymizer.faces import Face
from anonymizer.regions import blend, face_region


class RegionOperator:
    """Applies `transform` to each face's window and blends it in through the face's mask."""

    name = "region"

    def __init__(self, strength: float, expand: float = 1.35, shape: str = "ellipse", feather: float = 0.15) -> None:
        if strength < 0:
            raise ValueError(f"{self.name}: strength must be ≥ 0, got {strength}")
        self.strength = float(strength)
        self.expand, self.shape, self.feather = expand, shape, feather

    def transform(self, crop: np.ndarray, face: Face, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def anonymize(self, image: np.ndarray, faces: Sequence[Face], rngs: Sequence[np.random.Generator]) -> Anonymized:
        out = image.copy()
        masks = []
        for face, rng in zip(faces, rngs):
            mask = face_region(face, image.shape[:2], self.expand, self.shape, self.feather)
            masks.append(mask)
            if mask.alpha.size == 0:
                continue
            ys, xs = mask.window
            crop = out[ys, xs]
            out[ys, xs] = blend(crop, self.transform(crop, face, rng), mask.alpha)
        return Anonymized(out, masks, [self.name] * len(masks))


@ANONYMIZERS.register("blur")
class Blur(RegionOperator):
    name = "blur"

    def transform(self, crop, face, rng):
        sigma = max(0.5, self.strength * face.size)
        if sigma <= 6:
            return cv2.GaussianBlur(crop, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        # A wide kernel is slow: blur a downscaled copy instead (same result up to interpolation).
        h, w = crop.shape[:2]
        f = sigma / 3
        small = cv2.resize(crop, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), 3, borderType=cv2.BORDER_REFLECT)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


@ANONYMIZERS.register("pixelate")
class Pixelate(RegionOperator):
    name = "pixelate"

    def transform(self, crop, face, rng):
        block = max(1.0, self.strength * face.size)
        h, w = crop.shape[:2]
        small = cv2.resize(crop, (max(1, round(w / block)), max(1, round(h / block))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


@ANONYMIZERS.register("noise")
class Noise(RegionOperator):
    name = "noise"

    def transform(self, crop, face, rng):
        out = crop.copy()
        hit = rng.random(crop.shape[:2]) < min(1.0, self.strength)
        out[hit] = rng.integers(0, 256, size=(int(hit.sum()), crop.shape[2]), dtype=np.uint8)
        return out


@ANONYMIZERS.register("mask")
class Mask(RegionOperator):
    name = "mask"

    def __init__(self, strength: float = 1.0, color: tuple[int, int, int] = (0, 0, 0), **kw) -> None:
        super().__init__(strength, **kw)
        self.color = np.array(color, np.float32)

    def transform(self, crop, face, rng):
        a = min(1.0, self.strength)
        return crop.astype(np.float32) * (1 - a) + self.color * a
