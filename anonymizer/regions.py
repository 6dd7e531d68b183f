"""Face regions: the window and soft mask an operator may change, and the blend that keeps the rest intact.

A FaceMask is alpha in [0, 1] over an image window; every pixel where alpha is 0 keeps its exact bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from anonymizer.faces import Face


@dataclass
class FaceMask:
    """Alpha in [0, 1] over the image window starting at (x0, y0); 0 outside it."""

    x0: int
    y0: int
    alpha: np.ndarray  # float32, h×w

    @property
    def window(self) -> tuple[slice, slice]:
        h, w = self.alpha.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the window."""
        h, w = self.alpha.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h


@dataclass
class Anonymized:
    image: np.ndarray
    masks: list[FaceMask]
    methods: list[str] = field(default_factory=list)  # the operator each face got (fallbacks differ)
    # per face, the virtual person it now shows (the bank operator; None elsewhere). For evaluation only: in a
    # run without an identity key, recording it would tell which faces share a bank person
    virtual: list[str | None] = field(default_factory=list)


def face_region(face: Face, image_shape: tuple[int, int], expand: float, shape: str, feather: float) -> FaceMask:
    """Forehead to chin, as an ellipse (or box) grown from the detector's box. Detector boxes stop at the
    eyebrows: grow them more upward, so the forehead and hairline go too."""
    height, width = image_shape
    cx = face.x + face.w / 2
    cy = face.y + face.h / 2 - 0.08 * face.h
    a = face.w * expand / 2
    b = face.h * expand * 1.12 / 2
    x0, x1 = max(0, int(np.floor(cx - a))), min(width, int(np.ceil(cx + a)) + 1)
    y0, y1 = max(0, int(np.floor(cy - b))), min(height, int(np.ceil(cy + b)) + 1)
    if x1 <= x0 or y1 <= y0:
        return FaceMask(0, 0, np.zeros((0, 0), np.float32))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = (xx + 0.5 - cx) / a, (yy + 0.5 - cy) / b
    r = np.sqrt(dx * dx + dy * dy) if shape == "ellipse" else np.maximum(np.abs(dx), np.abs(dy))
    alpha = np.clip((1.0 - r) / feather, 0.0, 1.0) if feather > 0 else (r <= 1.0).astype(np.float32)
    return FaceMask(x0, y0, alpha.astype(np.float32))


MIN_RUN = 3.0  # px: a run of one kind (the person, or not) past the region's edge thinner than this is mirrored through


def mirrored(image: np.ndarray, region: FaceMask, person: tuple[np.ndarray, tuple[int, int]] | None = None,
             own: Own | None = None) -> np.ndarray:
    """The region's window of `image`, each pixel inside the region taken from its source (mirror_sources); the
    window's mean colour where the region fills the whole photo."""
    sources = mirror_sources(image.shape[:2], region, person, own)
    if sources is None:
        window = image[region.window]
        return np.full_like(window, window.mean((0, 1)).astype(image.dtype))
    return image[sources]


def nearest_zero(src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of `src` (uint8, with at least one 0), the x and y of its nearest 0 pixel (L2, OpenCV's 5×5 mask)."""
    _, labels = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    zy, zx = np.nonzero(src == 0)
    nearest = np.zeros((labels.max() + 1, 2), np.int64)
    nearest[labels[zy, zx]] = np.stack([zx, zy], 1)
    return nearest[labels, 0], nearest[labels, 1]


def mirror_sources(shape: tuple[int, int], region: FaceMask, person: tuple[np.ndarray, tuple[int, int]] | None = None,
                   own: Own | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """For each pixel of the region's window in a photo of `shape`, the (row, column) arrays of the photo's pixel
    it shows: itself outside the region, and inside it (alpha > 0) its mirror image across the region's nearest
    edge (None where the region fills the whole photo): the photo's own surroundings continued inward, with their
    texture, and equal to them at the edge. A bank head leaves part of the region uncovered; a blur there showed a
    smooth oval of the person's own hair and background, which no photograph has. No pixel of the region is ever a
    source: a mirror image that leaves the photo is clamped to its edge, and one that lands in the region takes the
    nearest pixel outside it instead.

    `person`: a mask of the person's pixels over a window holding the region, and that window's (x0, y0). Each
    pixel's source then stays within the kind (the person, or not) of its nearest pixel outside the region, the
    mirror image turning back where that kind ends, as between two mirrors. Where the person's hair ends just
    past the region's edge, a plain mirror image showed the background beyond it as a pale band inside the
    hair, and the hair again past that band as a second outline.

    `own` (with `person`): the person's own pixels inside the region (Own), which continue the person even where
    their nearest pixel outside the region is background or a strip of the person too thin to be a source. Long hair
    whose edge meets the region's brought the wall beyond it in: a wedge of wall between a short bank head and the
    hair below it. Sources are still only pixels outside the region, which the release shows anyway."""
    x0, y0, x1, y1 = region.box
    height, width = shape
    inside = region.alpha > 0
    # One pixel of "outside" around the window, except where the window meets the photo's edge
    frame = np.pad(inside.astype(np.uint8), 1)
    for cut, edge in ((y0 == 0, np.s_[0, :]), (y1 == height, np.s_[-1, :]), (x0 == 0, np.s_[:, 0]),
                      (x1 == width, np.s_[:, -1])):
        if cut:
            frame[edge] = 1
    if frame.all():  # the region fills the whole photo: nothing outside it to show
        return None
    bx, by = (c[1:-1, 1:-1] - 1 for c in nearest_zero(frame))
    py, px = np.mgrid[0:y1 - y0, 0:x1 - x0]
    if person is None:
        tx, ty = 2 * bx - px, 2 * by - py
    else:
        theirs = _theirs(person, region)
        if own is not None and own.pixels.any():
            bx, by = _to_person(theirs, region, frame, (bx, by), (px, py), own)
        depth = np.hypot(bx - px, by - py)
        run = _run(theirs, region, (np.clip(bx + x0, 0, width - 1), np.clip(by + y0, 0, height - 1)))
        back = (run >= MIN_RUN) & (depth > run)
        # back and forth within the run, short of the edge (whose pixels may be a sliver of the other kind)
        span = np.maximum(run - MIN_RUN / 2, 1.0)
        turned = run - span + np.abs(np.mod(depth - run, 2 * span) - span)
        scale = np.where(back, turned / np.maximum(depth, 1e-9), 1.0)
        tx, ty = np.rint(bx + (bx - px) * scale).astype(np.int64), np.rint(by + (by - py) * scale).astype(np.int64)
    tx = np.clip(tx + x0, 0, width - 1) - x0
    ty = np.clip(ty + y0, 0, height - 1) - y0
    within = (tx >= 0) & (tx < x1 - x0) & (ty >= 0) & (ty < y1 - y0)
    hit = within & inside[ty.clip(0, y1 - y0 - 1), tx.clip(0, x1 - x0 - 1)]
    tx, ty = np.where(hit, bx, tx), np.where(hit, by, ty)
    tx, ty = np.where(inside, tx, px), np.where(inside, ty, py)
    return ty + y0, tx + x0


def _theirs(person: tuple[np.ndarray, tuple[int, int]], region: FaceMask
            ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """`person`'s mask with the region counted as the person's and closed over slivers (a sliver of background
    between the region, a face, and the person's hair past it is theirs), the region's pixels in that window,
    and the window's (x0, y0)."""
    mask, (mx, my) = person
    inside = np.zeros(mask.shape, bool)
    rx0, ry0, rx1, ry1 = region.box
    inside[ry0 - my:ry1 - my, rx0 - mx:rx1 - mx] = region.alpha > 0
    mask = cv2.morphologyEx((mask | inside).astype(np.uint8), cv2.MORPH_CLOSE,
                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))) > 0
    return mask, inside, (mx, my)


class Own(NamedTuple):
    """For `mirrored`: the person's pixels inside the region that continue the person (`pixels`, over the region's
    window), each from the person's nearest pixel outside the region that goes on for `depth` px or more (a thin
    strip of hair ends in the wall's colour) and lies above image row `above` (below it, clothes), where that is at
    most `reach` px further than its nearest pixel outside the region of any kind."""

    pixels: np.ndarray
    reach: float
    depth: float
    above: float


def _to_person(theirs: tuple[np.ndarray, np.ndarray, tuple[int, int]], region: FaceMask, frame: np.ndarray,
               nearest: tuple[np.ndarray, np.ndarray], at: tuple[np.ndarray, np.ndarray], own: Own
               ) -> tuple[np.ndarray, np.ndarray]:
    """`nearest` (bx, by: each region-window pixel's nearest pixel outside the region, window coordinates), with
    each of `own`'s pixels whose nearest is no source of `own`'s taken to its nearest source instead (`frame`: the
    window padded by one, 0 outside the region)."""
    mask, _, (mx, my) = theirs
    bx, by = nearest
    px, py = at
    h, w = frame.shape
    ys, xs = np.mgrid[0:h, 0:w]
    ys, xs = ys + region.y0 - 1 - my, xs + region.x0 - 1 - mx
    within = (xs >= 0) & (xs < mask.shape[1]) & (ys >= 0) & (ys < mask.shape[0])
    kind = within & mask[ys.clip(0, mask.shape[0] - 1), xs.clip(0, mask.shape[1] - 1)] & (ys + my < own.above)
    # past the mask's window the kind is unknown
    other = np.pad(~kind & (frame == 0), 1, constant_values=True)
    deep = kind & (frame == 0) & (cv2.distanceTransform((~other).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
                                  > own.depth)
    sources = (~deep).astype(np.uint8)
    if sources.all():
        return bx, by
    qx, qy = (c[1:-1, 1:-1] - 1 for c in nearest_zero(sources))
    change = own.pixels & ~deep[by + 1, bx + 1]
    change &= np.hypot(qx - px, qy - py) <= np.hypot(bx - px, by - py) + own.reach
    return np.where(change, qx, bx), np.where(change, qy, by)


def _run(theirs: tuple[np.ndarray, np.ndarray, tuple[int, int]], region: FaceMask,
         at: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """At image pixels `at` (xs, ys) outside the region: how far their kind (the person's, `_theirs`, or not) goes
    on outside the region: the distance to the nearest pixel of the other kind there or to the mask window's edge,
    less a pixel and a half of rounding (unbounded where `at` lies outside the window)."""
    mask, inside, (mx, my) = theirs
    h, w = mask.shape
    far = float(h + w)
    xs, ys = at[0] - mx, at[1] - my
    ok = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    xs, ys = xs.clip(0, w - 1), ys.clip(0, h - 1)
    out = np.full(xs.shape, far, np.float32)
    for kind in (True, False):
        # past the mask's window the kind is unknown: the run ends at its edge too
        other = np.pad(~inside & (mask != kind), 1, constant_values=True)
        reach = cv2.distanceTransform((~other).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        mine = ok & (mask[ys, xs] == kind)
        out[mine] = np.minimum(reach[ys[mine], xs[mine]] - 1.5, far)
    return out


def blend(crop: np.ndarray, new: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`new` over `crop` through `alpha` (h×w); where alpha is 0 the crop's exact bytes are kept."""
    a = alpha[:, :, None]
    blended = np.rint(new.astype(np.float32) * a + crop.astype(np.float32) * (1.0 - a)).astype(np.uint8)
    return np.where(a > 0, blended, crop)


def merge(a: FaceMask, b: FaceMask) -> FaceMask:
    """One mask over both windows, each pixel's alpha the larger of the two."""
    if not a.alpha.size or not b.alpha.size:
        return b if not a.alpha.size else a
    x0, y0 = min(a.x0, b.x0), min(a.y0, b.y0)
    x1, y1 = max(a.box[2], b.box[2]), max(a.box[3], b.box[3])
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    for m in (a, b):
        h, w = m.alpha.shape
        view = alpha[m.y0 - y0:m.y0 - y0 + h, m.x0 - x0:m.x0 - x0 + w]
        np.maximum(view, m.alpha, out=view)
    return FaceMask(x0, y0, alpha)


def union_mask(masks: Sequence[FaceMask], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for m in masks:
        ys, xs = m.window
        np.maximum(out[ys, xs], m.alpha, out=out[ys, xs])
    return out
