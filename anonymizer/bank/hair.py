"""A bank head's hair toned to the person's own hair where the photo shows it beyond the face region.

Why: with `surround: bank` the face region shows the bank person's hair, but a person's long hair goes on past
the region's edge. Where the two differ (black hair under a red crop, blonde beside dark), the head reads as
pasted on, and the photo's hair mirrored into what the bank head leaves uncovered shows as a band beside it.
Which pixels are hair is learnt from the person's hair just above the forehead, inside the region: a person
segmenter's pixels there, outside the face's outline. In a band just outside the region, down to the chin, the
pixels on the person that look like that hair (and, where hair and skin differ in colour, more like it than
like the skin) are the person's hair as the release shows it anyway, and only their colour is what a bank
head's hair takes. Blonde hair beside light skin is told apart this way where a test of unlikeness to skin
alone took it for skin. Where too few such pixels show (short hair, a head against the sky), or what they
show has no undyed hair's colour, the bank hair keeps its own colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anonymizer.bank import shape as sh

BAND = 0.35        # the band beyond the region's edge where the person's hair is read, in eye distances
MIN_SHARE = 0.10   # the fewest hair pixels read, as a share of the band: hair that goes on past the region
NEAR = 2.5         # Lab distance (in units of the spread of the hair above the forehead) of a pixel of that hair
APART = 2.0        # that hair's distance from the skin (skin_distance) above which hair must also be unlike skin
SPREAD = (0.6, 1.6)  # the bounds on scaling the bank hair's spread (per Lab channel) to the person's
FLOOR = np.array([4.0, 2.0, 2.0])  # the least spread a hair sample is taken to have when toning (Lab)
LEAST_SPREAD = (6.0, 3.0, 3.0)  # the least spread a sample of skin or hair is taken to have in a `distance` (Lab)
PERSON = 0.8       # the segmenter's probability above which a pixel is the person's
NATURAL_A, NATURAL_B = (-8.0, 30.0), (-6.0, 45.0)  # Lab a and b of undyed hair, black to red and blonde


@dataclass(frozen=True)
class HairTone:
    """Robust Lab statistics of hair: the median, and the spread (1.4826 MAD, at least FLOOR)."""

    median: np.ndarray
    spread: np.ndarray

    @classmethod
    def of(cls, lab: np.ndarray) -> "HairTone":
        return cls(*centre(lab, FLOOR))


def centre(px: np.ndarray, floor=LEAST_SPREAD) -> tuple[np.ndarray, np.ndarray]:
    """The median of Lab pixels `px` and their spread (1.4826 MAD, at least `floor`): what `distance` takes."""
    mu = np.median(px, 0)
    return mu, np.maximum(1.4826 * np.median(np.abs(px - mu), 0), floor)


def distance(lab: np.ndarray, of: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each Lab pixel's distance from a `centre`, in units of its spread."""
    mu, sd = of
    return np.sqrt((((lab - mu) / sd) ** 2).sum(-1))


def skin_distance(lab: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Each pixel's Lab distance from the skin (`skin`: a mask of pixels that are), in units of its spread."""
    return distance(lab, centre(lab[skin]))


def like(lab: np.ndarray, hair: tuple[np.ndarray, np.ndarray], skin: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Which Lab pixels look like `hair` (a `centre`) rather than `skin` (one): within NEAR of the hair and, where
    hair and skin differ by more than APART, nearer the hair than the skin."""
    near = distance(lab, hair)
    found = near <= NEAR
    if distance(hair[0], skin) > APART:
        found &= near < distance(lab, skin)
    return found


def person(image: np.ndarray, box: tuple[int, int, int, int], iod: float,
           segmenter) -> tuple[np.ndarray, tuple[int, int]]:
    """The person's pixels around the face region (`box`: x0, y0, x1, y1) of `image` (RGB), by `segmenter` (a
    person's probability per pixel of an RGB window: anonymizer.bank.matte.PersonSegmenter) over the box grown by
    BAND eye distances (`iod`), and that window's (x0, y0): what `beside` reads and regions.mirrored keeps to."""
    height, width = image.shape[:2]
    reach = int(np.ceil(BAND * iod))
    x0, y0, x1, y1 = box
    wx0, wy0 = max(0, x0 - reach), max(0, y0 - reach)
    wx1, wy1 = min(width, x1 + reach), min(height, y1 + reach)
    return segmenter(image[wy0:wy1, wx0:wx1]) >= PERSON, (wx0, wy0)


def beside(image: np.ndarray, box: tuple[int, int, int, int], alpha: np.ndarray, pts: np.ndarray,
           cheeks: np.ndarray, people: tuple[np.ndarray, tuple[int, int]]) -> HairTone | None:
    """The person's hair just beyond the face region (`box`: x0, y0, x1, y1; `alpha`: the region over it) in
    `image` (RGB), where the face's 68 points are `pts` (`cheeks`: those that bound skin) and `people` is
    `person`'s reading around it; None where too little of it shows."""
    iod = sh.eye_distance(pts)
    reach = int(np.ceil(BAND * iod))
    x0, y0, x1, y1 = box
    person, (wx0, wy0) = people
    wy1, wx1 = wy0 + person.shape[0], wx0 + person.shape[1]
    region = np.zeros((wy1 - wy0, wx1 - wx0), np.float32)
    region[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] = alpha
    inside = (region > 0).astype(np.uint8)
    band = (cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5) <= reach) & (inside == 0)
    band[max(0, int(pts[8, 1]) - wy0):] = False  # above the chin: lower down, shoulders and collars show
    skin = sh.hull_mask(pts[cheeks], inside.shape, (wx0, wy0)) > 0
    if band.sum() == 0 or skin.sum() < 16:
        return None
    lab = cv2.cvtColor(image[wy0:wy1, wx0:wx1].astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    above = (region >= 0.5) & person & (sh.outline_mask(sh.extend(pts), inside.shape, (wx0, wy0)) == 0)
    above[max(0, int(pts[17:27, 1].min()) - wy0):] = False  # above the brows: hair, or a bald head's skin
    if above.sum() < 16:
        return None
    ref, skin_centre = centre(lab[above]), centre(lab[skin])
    shown = lab[band & person]
    hair = like(shown, ref, skin_centre)
    if hair.sum() < max(16, MIN_SHARE * band.sum()):
        return None
    found = HairTone.of(shown[hair])
    # No undyed hair's colour (green, blue, magenta): a hat, or leaves, sky or a shirt the segmenter took for the person
    a, b = found.median[1:]
    return found if NATURAL_A[0] <= a <= NATURAL_A[1] and NATURAL_B[0] <= b <= NATURAL_B[1] else None


def tone(lab: np.ndarray, hair: np.ndarray, weight: np.ndarray, to: HairTone) -> None:
    """`lab` (a placed bank head, Lab) with its hair (the pixels `hair` picks) taken to `to`'s median and,
    within SPREAD, its spread, per Lab channel, by `weight` per pixel (in place)."""
    own = HairTone.of(lab[hair])
    scale = np.clip(to.spread / own.spread, *SPREAD)
    toned = (lab - own.median) * scale + to.median
    lab += weight[..., None] * (toned - lab)
