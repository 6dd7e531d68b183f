"""Give a generated face the light and colour of the photo it goes into.

The generator learned from LFW's greyscale copy and sees only the face's context, so its face has neither
the colour nor the exposure of the one it replaces: a grey face in a colour photo is what gives it away
first. In CIE Lab, in the aligned crop, the generated face keeps its own structure but takes
- the original face's lightness mean and spread (two numbers, over the inner face), and
- the original's chroma (a, b) low-passed at `CHROMA_SIGMA` of the crop (a third of an eye distance): skin
  tone, lips and cheeks as colour blobs, none of the edges a face recognizer works from.
The identity guard and the evaluation judge the harmonised face (docs/generation.md has the measurements).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anonymizer.anonymize.generated import align as al

CHROMA_SIGMA = 0.08   # of the crop side
LOW_SIGMA = 8.0       # px: the smallest Gaussian _low takes on a reduced copy
INNER_FEATHER = 0.5   # the inner face: where al.face_mask with this feather is above 0.5 (no hair, no background)


def inner_face(size: int) -> np.ndarray:
    return al.face_mask(size, INNER_FEATHER) > 0.5


def to_lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _low(x: np.ndarray, size: int) -> np.ndarray:
    """x low-passed by a Gaussian of CHROMA_SIGMA × size (`low`)."""
    return low(x, CHROMA_SIGMA * size)


def low(x: np.ndarray, sigma: float) -> np.ndarray:
    """x low-passed by a Gaussian of `sigma` px. A low pass that wide keeps nothing a smaller copy loses, so it
    is taken at 1/f size (sigma ≥ LOW_SIGMA px there) and enlarged. On windows of the photos (120-520 px,
    a*/b*, sigma 8 % of the side) it stays within 1.4 of the full-size blur at the window's edge and 0.3
    inside, at a twentieth of the cost, which at full size grows with the cube of the window's side (160 ms
    at 500 px)."""
    f = max(1, int(sigma // LOW_SIGMA))
    if f == 1:
        return cv2.GaussianBlur(np.ascontiguousarray(x), (0, 0), sigma)
    h, w = x.shape[:2]
    small = cv2.resize(x, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / f), (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class Target:
    """The original's side of `harmonize`, for an operator that tries several faces in one place: its Lab and
    low-passed chroma, computed once."""

    lab: np.ndarray
    low_chroma: np.ndarray


def target(original: np.ndarray) -> Target:
    lab = to_lab(original)
    return Target(lab, _low(lab[..., 1:], original.shape[0]))


def harmonize(generated: np.ndarray, original: np.ndarray | Target, inner: np.ndarray,
              generated_lab: np.ndarray | None = None, max_contrast: float | None = None,
              light: np.ndarray | None = None) -> np.ndarray:
    """`generated` (an aligned uint8 RGB crop; `generated_lab`: its Lab, where the caller has it) with the light
    and low-passed colour of `original` (the same crop of the input image, or its `target`); `inner` is
    `inner_face(size)`. `max_contrast`: the most the lightness spread may be scaled, up or down. It is held
    in Lab, before the one conversion to RGB: a highlight stretched past white there loses its colour.
    `light`: the Lab crop whose lightness over `inner` stands for the generated face's (default: its own), as
    `original`'s stands for the photo's."""
    o = original if isinstance(original, Target) else target(original)
    g = to_lab(generated) if generated_lab is None else generated_lab
    out = np.empty_like(g)
    lg = g if light is None else light
    mg, sg = lg[inner, 0].mean(), lg[inner, 0].std()
    mo, so = o.lab[inner, 0].mean(), o.lab[inner, 0].std()
    ratio = so / max(sg, 1e-3)
    if max_contrast is not None:
        ratio = float(np.clip(ratio, 1.0 / max_contrast, max_contrast))
    out[..., 0] = (g[..., 0] - mg) * ratio + mo
    out[..., 1:] = g[..., 1:] - _low(g[..., 1:], generated.shape[0]) + o.low_chroma
    rgb = cv2.cvtColor(out, cv2.COLOR_Lab2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
