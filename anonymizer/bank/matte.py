"""A bank face's head (face and hair) apart from its background, for the operator's `surround: bank`.

Why: around a replaced face the photo still shows the person's hair, ears and head outline, which a learning
attacker reads identity from. Blurring that ring hides them but leaves a smooth oval that no photograph has;
the bank person's own hair, warped with their face, hides them with something photographic. Only the head
may go there: the bank photo's background would paste another place into the scene, and where the matte
misses hair the operator shows the photo's surroundings there instead, a hole in the head.

`HeadMatter` picks the method a bank build records in its manifest (`matte`):
- `selfie_segmentation`: MediaPipe's selfie segmenter (Apache-2.0; a person against the background, 256×256
  in, 4 ms a face) where its file is found (`mediapipe_selfie` in anonymizer.models). The person less what
  lies a little below the chin (their clothes) and the crop's side strips, with the 68 points' hull. It keeps
  hair that GrabCut loses where the hair is lit unlike the rest of it or like the background
  (docs/benchmarks.md, "Head mattes").
- `grabcut`: OpenCV's iterated graph cut over colour models, no trained model (`head_matte`). The 68 points'
  hull is certainly head, the outline grown by HEAD_GROW is probably head, the crop's side strips are
  certainly background, and the rest (the top strip included: hair may reach it) probably background. It
  runs at 3/8 of the crop's size with two iterations: 18 ms of CPU a face.

Either way only the component around the nose is kept. The bank build stores each face's matte
(anonymizer.bank.store), so runs only read them. Where hair reaches the crop's top, the operator continues the
head above it as a cap (`crowned_matte`, `crowned_crop`, placed by `crowned_map`); where the placed head ends below
the face region's top, it stretches the head up to it (`lift`).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from anonymizer.bank import shape as sh
from anonymizer.regions import nearest_zero

log = logging.getLogger(__name__)

HEAD_GROW = 1.25   # the outline (jaw and forehead) grown about its centre: where hair and ears may be
SIDE = 0.06        # the crop's left and right strips, as a share of its width: certainly background
ITERATIONS = 2
SCALE = 0.375
NECK = 0.25        # the segmented person is kept down to this share of the brow-to-chin height below the chin
SEGMENTER_SIZE = 256
CROWN_ROWS = 12    # above the crop's top a head goes on along the circle its outline makes over this many rows
CROWN_BAND = 12    # with the texture of the crop's top rows, this many
METHODS = ("selfie_segmentation", "grabcut")
MAX_LIFT = 1.35      # a bank head short of the region's top is stretched up by this at most (`lift`)
LIFT_RAMP = 1.0      # reaching the full stretch this many eye distances above the eyes
BLEED = 4            # crop pixels inside a matte's edge that may still hold the bank photo's background


def _around_nose(fg: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """The component of `fg` (uint8 0/1) that holds the nose tip, where there is one."""
    _, labels = cv2.connectedComponents(fg)
    h, w = fg.shape
    nose = np.clip(np.round(pts[30]).astype(int), 0, (w - 1, h - 1))
    core = labels[nose[1], nose[0]]
    return (labels == core).astype(np.uint8) if core else fg


def head_matte(crop: np.ndarray, pts68: np.ndarray) -> np.ndarray:
    """uint8 0/1 over `crop`: 1 where GrabCut finds the person's head (face, hair, ears)."""
    h, w = crop.shape[:2]
    small = cv2.resize(crop, (max(8, round(w * SCALE)), max(8, round(h * SCALE))), interpolation=cv2.INTER_AREA)
    sh_, sw = small.shape[:2]
    pts = np.asarray(pts68, np.float64) * (sw / w, sh_ / h)
    ext = sh.extend(pts)
    outline = ext[sh.OUTLINE]
    c = outline.mean(0)
    mask = np.full((sh_, sw), cv2.GC_PR_BGD, np.uint8)
    cv2.fillPoly(mask, [np.round(c + HEAD_GROW * (outline - c)).astype(np.int32)], cv2.GC_PR_FGD)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), cv2.GC_FGD)
    b = max(1, int(SIDE * sw))
    mask[:, :b] = cv2.GC_BGD
    mask[:, -b:] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # GrabCut seeds its colour models by k-means from this thread's RNG: the same crop, the same matte.
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), mask, None, bgd, fgd, ITERATIONS, cv2.GC_INIT_WITH_MASK)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    return cv2.resize(_around_nose(fg, pts), (w, h), interpolation=cv2.INTER_NEAREST)


def segmented_matte(person: np.ndarray, pts68: np.ndarray) -> np.ndarray:
    """uint8 0/1: the head within `person` (a segmenter's person probability over the crop)."""
    h, w = person.shape
    pts = np.asarray(pts68, np.float64)
    fg = (person >= 0.5).astype(np.uint8)
    cv2.fillConvexPoly(fg, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
    brows, chin = pts[17:27, 1].min(), pts[8, 1]
    fg[max(0, int(np.ceil(chin + NECK * (chin - brows)))):] = 0
    b = max(1, int(SIDE * w))
    fg[:, :b] = 0
    fg[:, -b:] = 0
    return _around_nose(fg, pts)


def crown_rows(width: int) -> int:
    """Rows the crown adds above a crop `width` wide: room for the tallest cap (a half-disc)."""
    return width // 2 + 1


def crowned_map(m: np.ndarray, width: int = sh.CROP_SIZE) -> np.ndarray:
    """`m` (a 2×3 map from the pixels of a crop `width` wide) for that crop with its crown's rows above it."""
    out = np.array(m, np.float64)
    out[:, 2] -= out[:, 1] * crown_rows(width)
    return out


def cap_heights(matte: np.ndarray) -> np.ndarray:
    """Per column of `matte`, how many rows the crown's cap rises above its top row (crowned_matte)."""
    h, w = matte.shape
    head = matte >= 0.5
    top = np.r_[0, head[0].astype(np.int8), 0]
    below = head[min(h - 1, CROWN_ROWS)]
    tall = np.zeros(w, np.float64)
    for a, b in zip(np.flatnonzero(np.diff(top) == 1), np.flatnonzero(np.diff(top) == -1)):  # the run [a, b)
        half, centre = (b - a) / 2.0, (a + b - 1) / 2.0
        drop = 0.0  # how far below the top row the circle's centre lies
        mid = int(round(centre))
        if below[mid]:
            gaps_left, gaps_right = np.flatnonzero(~below[:mid]), np.flatnonzero(~below[mid:])
            left = gaps_left[-1] + 1 if len(gaps_left) else 0
            right = mid + gaps_right[0] if len(gaps_right) else w
            # the circle through both rows' ends: half² + drop² = ((right - left) / 2)² + (drop - CROWN_ROWS)²
            drop = max(0.0, (((right - left) / 2.0) ** 2 - half * half + CROWN_ROWS ** 2) / (2.0 * CROWN_ROWS))
        radius = np.hypot(half, drop)
        x = np.arange(a, b) - centre
        tall[a:b] = np.maximum(np.sqrt(np.maximum(radius * radius - x * x, 0.0)) - drop, 0.0)
    return tall


def crowned_matte(matte: np.ndarray) -> np.ndarray:
    """`matte` (as float32) with crown_rows rows added above: over each run of its top row that is head, the
    head goes on as a cap of the circle through the run's ends and the head's outline CROWN_ROWS rows below
    (an outline that narrows upward fast gets a low cap, one that rises straight a half-disc); elsewhere 0.
    Why: a bank crop holds 1.6 eye distances above the eyes and the operator's region about 2, so the crown
    of a head is cut off; mirrored across the crop's top, as the crop's other edges are, the head went on
    with its own hair and then its forehead upside down, a knot of hair and skin above the head."""
    h, w = matte.shape
    pad = crown_rows(w)
    out = np.zeros((pad + h, w), np.float32)
    out[:pad] = np.arange(pad, 0, -1)[:, None] <= cap_heights(matte)[None, :]
    out[pad:] = matte
    return out


def head_colours(crop: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """`crop` with each pixel within BLEED pixels of its matte's edge or outside it taken from the nearest pixel
    further in. Why: a matte's edge lies up to a few pixels out in the bank photo's background (a soft cheek
    against a blurred wall), and a head placed over the photo showed that background's colour as a line along
    its outline: blue beside a cheek. Further in, the head keeps its own pixels."""
    core = cv2.erode((matte >= 0.5).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=BLEED)
    if not core.any():
        return crop
    nx, ny = nearest_zero(1 - core)
    out, fill = crop.copy(), core == 0
    out[fill] = crop[ny[fill], nx[fill]]
    return out


def crowned_crop(crop: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """`crop` with crown_rows rows added above: in each column the texture of its top CROWN_BAND rows (its hair,
    or a bald scalp) mirrored once and stretched over the height of the crowned matte's cap there (`matte`: the
    crop's own). Why: a band mirrored back and forth showed as stripes across the crown, its highlights and
    the skin at a cut-off forehead repeated every two bands."""
    w = crop.shape[1]
    pad = crown_rows(w)
    stretch = np.maximum(cap_heights(matte), CROWN_BAND) / CROWN_BAND
    above = np.arange(pad, 0, -1, dtype=np.float64)[:, None]  # each added row's height above the top row
    rows = np.clip((above - 0.5) / stretch[None, :] - 0.5, 0, CROWN_BAND - 1).astype(np.float32)
    cols = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], rows.shape)
    cap = cv2.remap(np.ascontiguousarray(crop[:CROWN_BAND]), np.ascontiguousarray(cols), rows, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return np.concatenate([cap, crop])


class PersonSegmenter:
    """MediaPipe's selfie segmenter: a person's probability per pixel of an RGB image."""

    def __init__(self, model_dir: str | None = None) -> None:
        from anonymizer.tflite_runtime import tflite_interpreter
        from anonymizer.models import locate

        self._it = tflite_interpreter(str(locate("mediapipe_selfie", model_dir)), "the head matte's segmenter")
        self._in = self._it.get_input_details()[0]["index"]
        self._out = self._it.get_output_details()[0]["index"]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, (SEGMENTER_SIZE, SEGMENTER_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
        self._it.set_tensor(self._in, (x / 255.0)[None])
        self._it.invoke()
        return cv2.resize(self._it.get_tensor(self._out)[0, ..., 0], (w, h), interpolation=cv2.INTER_LINEAR)


class HeadMatter:
    """Makes head mattes by `method`: `auto` (selfie_segmentation where its model and a TFLite runtime are
    found, else grabcut with a warning), or one of METHODS. `method` then says which one runs."""

    def __init__(self, method: str = "auto", model_dir: str | None = None) -> None:
        from anonymizer.models import ModelNotFoundError

        if method not in ("auto", *METHODS):
            raise ValueError(f"head matte: method must be auto or one of {METHODS}, got {method!r}")
        self._segmenter = None
        if method != "grabcut":
            try:
                self._segmenter = PersonSegmenter(model_dir)
            except (ModelNotFoundError, ImportError) as exc:
                if method != "auto":
                    raise
                log.warning("bank head mattes by GrabCut, which misses some hair: %s", exc)
        self.method = "selfie_segmentation" if self._segmenter is not None else "grabcut"

    def __call__(self, crop: np.ndarray, pts68: np.ndarray) -> np.ndarray:
        if self._segmenter is None:
            return head_matte(crop, pts68)
        return segmented_matte(self._segmenter(crop), pts68)


def lift(pts: np.ndarray, matte: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """cv2.remap maps (over `matte`'s window, where the face's 68 points are `pts`) that stretch a placed bank head
    upward about the eyes until its top meets the face region's (`region`, its alpha), by MAX_LIFT at most; None
    where the head's top reaches it already. Why: where a bank head ends below the region's top, the region shows
    the photo's surroundings mirrored inward there, a pale band between the bank hair and the person's own hair
    beyond the region's edge. Below the eyes nothing moves, so the face and jaw stay where the face goes; above
    them a point rises (and spreads) by a factor growing to the full stretch LIFT_RAMP eye distances up."""
    left, right = pts[36:42].mean(0), pts[42:48].mean(0)
    centre, iod = (left + right) / 2, sh.eye_distance(pts)
    across = (right - left) / max(iod, 1e-6)
    up = np.array([across[1], -across[0]])  # perpendicular to the eye line, toward the crown (y grows down)
    h, w = matte.shape

    def reach(inside: np.ndarray) -> float:  # how far up from the eyes `inside` holds without a break
        steps = np.arange(0.0, 4.0 * iod, 1.0)
        xy = np.round(centre + steps[:, None] * up).astype(int)
        ok = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        held = np.zeros(len(steps), bool)
        held[ok] = inside[xy[ok, 1], xy[ok, 0]]
        return float(steps[np.argmin(held)]) if not held.all() else float(steps[-1])

    head, top = reach(matte >= 0.5), reach(region >= 0.5)
    stretch = min(top / max(head, 1.0), MAX_LIFT)
    if stretch <= 1.02 or head < 0.5 * iod:
        return None
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.stack([xs - centre[0], ys - centre[1]], -1)
    height = d @ up  # above the eye line, in pixels
    grow = 1.0 + (stretch - 1.0) * np.clip(height / (LIFT_RAMP * iod), 0.0, 1.0)
    src = centre + d / grow[..., None]  # the output point's source, shrunk toward the eyes
    return src[..., 0].astype(np.float32), src[..., 1].astype(np.float32)
