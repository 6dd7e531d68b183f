"""A bank head's hair toned to the person's own hair where the photo shows it beyond the face region.

Why: with `surround: bank` the face region shows the bank person's hair, but a person's long hair goes on past
the region's edge. Where the two differ (black hair under a red crop, blonde beside dark), the head reads as
pasted on, and the photo's hair mirrored into what the bank head leaves uncovered shows as a band beside it.
Only hair the release shows anyway is read: the pixels in a band just outside the region that a person
segmenter finds on the person, above the nose and unlike their skin. Where it finds too few (short hair, a
head against the sky), or what it finds has no undyed hair's colour, the bank hair keeps its own colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anonymizer.bank import shape as sh

BAND = 0.35        # the band beyond the region's edge where the person's hair is read, in eye distances
MIN_SHARE = 0.15   # the fewest hair pixels read, as a share of the band: hair that goes on past the region
SKIN_FAR = 4.0     # Lab distance (in units of the skin's spread, skin_distance) beyond which a pixel is not skin
SPREAD = (0.6, 1.6)  # the bounds on scaling the bank hair's spread (per Lab channel) to the person's
FLOOR = np.array([4.0, 2.0, 2.0])  # the least spread a hair sample is taken to have (Lab)
PERSON = 0.8       # the segmenter's probability above which a pixel is the person's
NATURAL_A, NATURAL_B = (-8.0, 30.0), (-6.0, 45.0)  # Lab a and b of undyed hair, black to red and blonde


@dataclass(frozen=True)
class HairTone:
    """Robust Lab statistics of hair: the median, and the spread (1.4826 MAD, at least FLOOR)."""

    median: np.ndarray
    spread: np.ndarray

    @classmethod
    def of(cls, lab: np.ndarray) -> "HairTone":
        median = np.median(lab, 0)
        return cls(median, np.maximum(1.4826 * np.median(np.abs(lab - median), 0), FLOOR))


def skin_distance(lab: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Each pixel's Lab distance from the median over `skin` (a mask of pixels that are), in units of their
    spread (1.4826 MAD, at least 6, 3, 3)."""
    px = lab[skin]
    mu = np.median(px, 0)
    sd = np.maximum(1.4826 * np.median(np.abs(px - mu), 0), (6.0, 3.0, 3.0))
    return np.sqrt((((lab - mu) / sd) ** 2).sum(-1))


def beside(image: np.ndarray, box: tuple[int, int, int, int], alpha: np.ndarray, pts: np.ndarray,
           cheeks: np.ndarray, segmenter) -> HairTone | None:
    """The person's hair just beyond the face region (`box`: x0, y0, x1, y1; `alpha`: the region over it) in
    `image` (RGB), where the face's 68 points are `pts` (`cheeks`: those that bound skin); None where too little
    of it shows. `segmenter`: a person's probability per pixel of an RGB window
    (anonymizer.bank.matte.PersonSegmenter)."""
    height, width = image.shape[:2]
    iod = sh.eye_distance(pts)
    reach = int(np.ceil(BAND * iod))
    x0, y0, x1, y1 = box
    wx0, wy0 = max(0, x0 - reach), max(0, y0 - reach)
    wx1, wy1 = min(width, x1 + reach), min(height, y1 + reach)
    inside = np.zeros((wy1 - wy0, wx1 - wx0), np.uint8)
    inside[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] = alpha > 0
    band = (cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5) <= reach) & (inside == 0)
    band[max(0, int(pts[33, 1]) - wy0):] = False  # above the nose's base: lower down, shoulders may show
    if band.sum() == 0:
        return None
    window = image[wy0:wy1, wx0:wx1]
    lab = cv2.cvtColor(window.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    skin = sh.hull_mask(pts[cheeks], inside.shape, (wx0, wy0)) > 0
    if skin.sum() < 16:
        return None
    hair = band & (segmenter(window) >= PERSON) & (skin_distance(lab, skin) > SKIN_FAR)
    if hair.sum() < max(16, MIN_SHARE * band.sum()):
        return None
    found = HairTone.of(lab[hair])
    # No undyed hair's colour (green, blue, magenta): the segmenter took leaves, sky or a shirt for the person
    a, b = found.median[1:]
    return found if NATURAL_A[0] <= a <= NATURAL_A[1] and NATURAL_B[0] <= b <= NATURAL_B[1] else None


def tone(lab: np.ndarray, hair: np.ndarray, weight: np.ndarray, to: HairTone) -> None:
    """`lab` (a placed bank head, Lab) with its hair (the pixels `hair` picks) taken to `to`'s median and,
    within SPREAD, its spread, per Lab channel, by `weight` per pixel (in place)."""
    own = HairTone.of(lab[hair])
    scale = np.clip(to.spread / own.spread, *SPREAD)
    toned = (lab - own.median) * scale + to.median
    lab += weight[..., None] * (toned - lab)
