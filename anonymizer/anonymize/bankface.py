"""BankFace (`bank`): replace each face by a photographic face from a face bank, in the same pose and expression.

A bank (anonymizer.bank) holds faces of nobody in particular: composites of k ≥ 8 people or StyleGAN's
synthetic people. Per face:

1. `decide`: faces smaller than `min_face_px`, without 68 points the landmarker can fit (`landmarks`, by
   default the bank's own: dlib's predictor or MediaPipe's face mesh; "no_landmarks"), whose fit
   disagrees with the detector's 5 landmarks by more than `max_landmark_error` eye distances
   ("unreliable_landmarks"), turned past `max_yaw` / `max_pitch` ("extreme_pose"), whose region the
   image border cuts ("border") or, with `occlusion: hands`, over whose outline a hand lies (a palm box at
   least OCCLUDED_SHARE inside it, anonymizer.detect.hands; "occluded": a new face would be drawn over the
   hand) get the classical `fallback`, recorded as "fallback:<name>:<reason>".
2. The bank faces nearest in pose and expression (`choices` of them; with `mirror`, each bank face also counts
   flipped left to right) are put in an order drawn from the face's RNG (fixed by run seed, image key, face index),
   so the result is deterministic. Those `choices` are the nearest in skin tone among the `tone_pool` nearest in
   pose and expression (anonymizer.bank.tone), read as `tone_reading` says: "ita", the skin's pixels as the photo
   shows them, alike on the bank faces (colour photos and banks only); "descriptor", the person's skin as a probe
   on dlib's descriptor reads it, on the face and on each bank person's most frontal face, which a photo's light
   and white balance barely move; there, the choices are drawn from the face's RNG among the people within
   TONE_CLOSE of the face's tone, not ranked by closeness (two photos of one person would draw the same few), and
   only those are tried (where none is in the pool, the alike bank faces nearest in pose; where the bank holds
   none, the face gets the fallback: "skin_tone"). A light-skinned face made dark (or the reverse) looks
   recoloured, and a dataset whose people change skin misrepresents them. With `match_sex`, a face that reads as a
   man's or a woman's looks only at bank people who read alike (anonymizer.bank.apparent_sex). With `match_age`, a
   face looks only at bank people of its apparent age group (anonymizer.measure.apparent_age: under 13, 13-19,
   20-59, 60 and over; a bank person's, the median over their faces turned 30° at most), at those of their faces that
   read in it too, where the bank holds at least AGE_MIN_PEOPLE of them among those allowed (and, with the
   `descriptor` tone reading, near the face's tone: skin tone comes first). A face that carries a virtual identity
   (`Face.identity`, set by a keyed run's linking, which matches the person's apparent sex, skin tone and age group
   as the operator does) tries only that identity's faces, nearest first: one person, one face. Otherwise
   the bank people the image already shows on another face are tried after all the rest, however little the
   rest's heads cover or however far their results turn the head (steps 5, 6): two faces of one bank person
   in one photo look like twins.
3. Shape: the bank face's 68 points, similarity-aligned to the face's on eye corners and nose, replace the
   face's identity-bearing geometry (brows, eyes, nose, lips) while the rigid pose stays; eye and mouth
   opening are set to the face's own (the lids' and lower lip's distance to their lines), so a blink or a
   laugh is kept. Each jaw point is the bank's or the face's, whichever lies further out: the new face
   covers the old jaw with its own skin instead of exposing what lies beyond the bank face's outline (its
   background, hair or neck); so a jaw wider than the bank face's keeps its width. The bank face is
   warped piecewise-affinely onto that shape.
4. Light and colour: anonymizer.anonymize.generated.harmonize (Lab: the face's lightness mean and spread, its
   low-passed chroma), taken from the photo's face with what is not skin (beard, glasses) painted in its
   cheeks' skin colour, and matched to the bank face's read the same way; then a Poisson blend for the seam
   (`poisson`: it fades out half an eye distance inside, so the face keeps harmonize's tone; its lightness
   only, the colour stays harmonize's) over the union of the two face outlines, with the forehead cut at
   `forehead` of its height (a bank face's fringe of hair would otherwise land on the photo's forehead), and a
   feathered alpha at the edge. Pixels where the alpha is 0 keep their exact bytes. Outside the inner face
   (brows to chin) the alpha also fades where the bank face is not skin (a fringe, hair at the temples, its
   background): the photo's own pixels stay there; but not below its eye line inside its own outline, where a
   shadowed or bearded jaw is still its own (`cheeks_and_jaw`).
5. `surround` changes the policy's face region (the ellipse the classical operators change) around the bank face too:
   hair, ears and the face's outline, which a learning attacker reads identity from (docs/reid.md). `blur` (or True):
   the fallback's blur (`surround_strength`: that blur's own strength; default the fallback's), a smooth oval around a
   sharp face. `bank`: the bank person's own head (their crop, warped by the similarity that places their eyes and nose
   on the face's; their skin's light and colour taken to the photo's skin, as their face's are, their hair (told by its
   colour, and where that is near their skin's, by the hair above their forehead) lit alike but not tinted, or with
   `hair_tone`, where its colour alone tells it from their skin, toned to the person's own hair where the photo shows it
   past the region (anonymizer.bank.hair); a grey bank's takes the photo's light and low-passed colour), cut from its
   background by a matte (anonymizer.bank.matte, stored in the bank; along its edge, which lies a few pixels out in that
   background, head and face take the head's own colours, Site.crop; above the crop's top, which cuts most heads, the
   head goes on as its outline's circle with its top rows' hair, and a head whose top falls short of the region's is
   stretched up to it above the eyes; under its chin, where bank photos often hold a hand, a scarf or a collar, and past
   a StyleGAN crop's render, which the crop continues mirrored, the photo's own neck and clothes stay); where the bank
   photo shows background, the region shows the photo's surroundings mirrored inward across its edge, each pixel within
   the person or the background it continues (regions.mirrored, with a person segmenter's pixels; where their hair goes
   on past the region, each of the person's pixels continues the person, Site.sources); the whole Poisson-blended into
   the photo at the region's edge where it crosses the person (where it crosses their background, the head keeps its own
   light, and ends inside the region's feathered edge, HEAD_EDGE). Each bank face the guard tries brings its own head,
   and those whose head covers more of the region, and of the person's place where the backdrop would show what is not
   them, are tried first (BankFace.by_cover).
6. With `identity_guard` (True: BankGuardConfig's defaults; a dict: its settings; None or False: off),
   each recognizer (dlib_resnet, and mobilefacenet where registered) compares the result with the
   original; a face one still matches (closer than its same-person distance + `margin`) tries the next
   bank face, up to `candidates`; a cover group (5) that keeps none of them tries up to `more_if_turned`
   bank faces next nearest in pose that fall in it; then the fallback ("fallback:<name>:reidentifiable"). A
   bank face whose result YuNet reads as turned by more than `max_pose_error_deg` (as the release gate reads
   pose) is kept for later: those are tried, least turned first, when nothing else of its cover group
   passes. The bank's nearest face is a few degrees off, and a warp moves points, not the shading that also
   tells a detector where a head turns.
"""

from __future__ import annotations

import itertools
from functools import cached_property
from typing import Iterable, Iterator, Literal, Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from anonymizer.anonymize.base import ANONYMIZERS, Anonymized
from anonymizer.anonymize.generated import harmonize as hz
from anonymizer.bank import hair as hr
from anonymizer.bank import shape as sh
from anonymizer.bank import tone
from anonymizer.bank.descriptor_probe import face_ages, person_ages
from anonymizer.bank.matte import PersonSegmenter, crowned_crop, crowned_map, crowned_matte, head_colours, lift
from anonymizer.bank.store import Bank, BankError, load_bank, locate_bank, sha256_path
from anonymizer.bank.warp import warp
from anonymizer.detect.hands import HandDetector
from anonymizer.faces import Face
from anonymizer.headpose import Pose
from anonymizer.measure.apparent_age import AgeReader, age_group
from anonymizer.measure.pose import PoseChange, PoseMeter
from anonymizer.regions import MIN_RUN, FaceMask, Own, blend, face_region, merge, mirror_sources, mirrored

WINDOW_MARGIN = 0.6   # the working window: the face outline's box grown by this many eye distances each way
MASK_GROW = 0.08      # the blend mask: the union of both outlines, dilated by this many eye distances
FEATHER = 0.12        # the alpha's ramp at the mask's edge, in eye distances
CHEEKS = np.array([36, 45, 15, 14, 13, 35, 33, 31, 3, 2, 1])  # eye corners, cheeks and nose: skin, rarely beard
CONTRAST = 1.3       # the most harmonisation may scale the bank face's lightness spread, up or down
SKIN_NEAR, SKIN_FAR = 2.5, 4.0  # outside the inner face, bank pixels this far from its skin (in spreads) fade out
MATTE_FEATHER = 0.03  # the head matte's edge, blurred over this many eye distances
TONE_READINGS = ("ita", "descriptor")  # BankFace's tone_reading (the module doc, step 2)
AGE_MIN_PEOPLE = 4  # `match_age` keeps to a face's age group only where the bank allows this many people of it
TONE_CLOSE = 0.5  # darkness (anonymizer.bank.tone.SkinTone) within which a bank person's skin counts as alike
SURROUNDS = {False: None, None: None, "none": None, True: "blur", "blur": "blur", "bank": "bank"}
INNER = np.arange(17, 68)  # brows, eyes, nose, mouth: the inner face, whose light a grey bank's head layer takes
COVER_MIN = 0.6  # bank heads that cover less of the surround than this are tried last
FOREIGN_MAX = 0.5  # square eye distances: so are those leaving more of the person's place to a backdrop not theirs
EXTRA_BLOCKS = 4  # with bank heads, the extra bank faces (`further`) come from 4 × more_if_turned next nearest
NOSE_SHARES = np.array([0.0, 0.33, 0.67, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # points 27-35: bridge top to tip
POISSON_SCALE = 0.5  # the Poisson blends' membrane is solved at this share of the window's size
SEAM_REACH = 0.5     # and fades out this many eye distances inside the mask: the seam, not the face's tone
MAX_GAIN = 1.6       # the most a bank head's L + 16 is scaled to meet the photo's skin (4x its luminance)
CHIN = np.arange(4, 13)  # the jaw under the chin: below it a bank head leaves the photo as it is
JAW_INSET = 0.05  # eye distances inside a bank face's outline where its cheeks and jaw are drawn whole (render)
OCCLUSIONS = (None, "hands")  # BankFace's occlusion (the module doc, step 1)
OCCLUDED_SHARE = 0.1  # a hand whose palm box lies this much inside the face's outline occludes it
RENDER_RAMP = 6.0  # crop pixels (a tenth of its eye distance) over which a render's bottom edge hands over to the photo
SKIN_REACH = 0.4   # eye distances over which a bank head's own skin colour is read around each pixel (skin_colour)
HEAD_EDGE = (0.6, 0.9)  # over the photo's background a bank head ends where the region's alpha falls from 0.9 to 0.6
OWN_REACH = 2.0  # eye distances further than its nearest pixel outside the region a pixel of the person may continue
OWN_DEPTH = 0.1  # eye distances: a strip of the person past the region thinner than this is no source (Site.sources)


def poisson(src: np.ndarray, dst: np.ndarray, mask: np.ndarray, reach: float) -> np.ndarray:
    """`src` Poisson-blended into `dst` inside `mask` (uint8, nonzero inside), for the seam only: `src` plus
    the smooth membrane that takes it to `dst` at the mask's edge, faded to nothing `reach` px inside.
    Carried all the way in, the membrane set the whole face's lightness from what surrounds it: on a white
    background a dark-skinned person got a pale face, whatever harmonize had matched. The membrane is solved
    (cv2.seamlessClone) at POISSON_SCALE and enlarged: it is smooth, so little is lost, and the solve costs
    a quarter. It is solved by itself, not as src cloned: seamlessClone's 8-bit result clipped where src plus
    the membrane left 0-255 (dark hair at a white edge), and src's own edges came back, enlarged, as a ghost
    beside them. Outside the mask, `dst`."""
    h, w = mask.shape
    sw, sh_ = max(8, round(w * POISSON_SCALE)), max(8, round(h * POISSON_SCALE))
    small = cv2.resize(mask, (sw, sh_), interpolation=cv2.INTER_NEAREST)
    small[:1], small[-1:], small[:, :1], small[:, -1:] = 0, 0, 0, 0  # seamlessClone needs a free border
    bx, by, bw, bh = cv2.boundingRect(small)
    if bw <= 2 or bh <= 2:
        return np.where(mask[..., None] > 0, src, dst)
    s = cv2.resize(src, (sw, sh_), interpolation=cv2.INTER_AREA).astype(np.float32)
    d = cv2.resize(np.ascontiguousarray(dst), (sw, sh_), interpolation=cv2.INTER_AREA).astype(np.float32)
    # flat inside, dst - src at the edge: halved about 128, so that any difference fits in 8 bits
    diff = np.clip(np.rint((d - s) / 2.0 + 128.0), 0, 255).astype(np.uint8)
    cloned = cv2.seamlessClone(np.full_like(diff, 128), diff, small, (bx + bw // 2, by + bh // 2), cv2.NORMAL_CLONE)
    membrane = cv2.resize((cloned.astype(np.float32) - 128.0) * 2.0, (w, h), interpolation=cv2.INTER_LINEAR)
    depth = cv2.distanceTransform((mask > 0).astype(np.uint8), cv2.DIST_L2, 5)
    membrane *= np.clip(1.0 - depth / max(reach, 1.0), 0.0, 1.0)[..., None]
    out = np.clip(src.astype(np.float32) + membrane + 0.5, 0, 255).astype(np.uint8)
    return np.where(mask[..., None] > 0, out, dst)


def _greyscale(window: np.ndarray, tolerance: int = 3) -> bool:
    """Whether the photo's window is black and white (its channels within `tolerance` of one another:
    JPEG's chroma rounding)."""
    w = window.astype(np.int16)
    return int(np.abs(w[..., 0] - w[..., 1]).max()) <= tolerance and int(np.abs(w[..., 1] - w[..., 2]).max()) <= tolerance


class BankGuardConfig(BaseModel):
    """Identity guard settings: bank faces tried per face, recognizers (None: dlib_resnet and mobilefacenet
    where registered), the margin above each one's same-person distance a kept face must reach, and the
    head-pose change (the largest of |Δyaw|, |Δpitch|, |Δroll|, read as the release gate reads it: YuNet's
    landmarks found again) above which a bank face is tried only after the others of its cover group; None:
    no pose check. When a cover group keeps none of its bank faces (each turned the head past that or stayed
    too close to the person, or the group has none), up to `more_if_turned` bank faces next nearest in pose and
    expression are tried in that group before the least turned is kept (with bank heads, those of the group
    among the EXTRA_BLOCKS × `more_if_turned` next nearest). With `pose_target_deg`, a kept bank face whose
    result turns the head by more than that (but not past `max_pose_error_deg`) is held while up to
    `pose_tries` more of its group are tried: the first within the target is kept, else the least turned.
    None here, 4° in `realistic`: with 128 bank people a bank face kept by how its result reads links one
    person's photos more; with 256 (the default build) it does not.
    `precision`: the recognizers' (anonymizer.int8; auto: their 8-bit copies on a CPU with 8-bit dot
    products, float32 elsewhere). The release gate measures with its own float32 recognizers either way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates: int = Field(6, ge=1, le=32)
    encoders: list[str] | None = None
    margin: float = Field(0.05, ge=0)
    max_pose_error_deg: float | None = Field(8.0, gt=0)
    more_if_turned: int = Field(6, ge=0, le=32)
    pose_target_deg: float | None = Field(None, gt=0)
    pose_tries: int = Field(2, ge=0, le=32)
    precision: Literal["float32", "int8", "auto"] = "auto"


class _Guard:
    """One anonymizer.anonymize.generated.guard.IdentityGuard per recognizer; a candidate passes when every
    one of them finds it far enough from the original. With `max_pose_error_deg`, also the pose check that
    BankFace.choose orders bank faces by."""

    def __init__(self, config: BankGuardConfig, model_dir: str | None) -> None:
        from anonymizer.anonymize.generated.guard import IdentityGuard, IdentityGuardConfig
        from anonymizer.bank.composite import available_encoders

        self.config = config
        self.guards = []
        for name in available_encoders(config.encoders):
            g = IdentityGuard(IdentityGuardConfig(candidates=config.candidates, encoder=name,
                                                  encoder_params={"precision": config.precision}), model_dir)
            g.config = g.config.model_copy(update={"min_distance": g.encoder.same_person_distance + config.margin})
            self.guards.append(g)
        self.pose_meter = None
        if config.max_pose_error_deg is not None:
            from anonymizer.detect import build_detector

            self.pose_meter = PoseMeter(build_detector("yunet", {"scales": [1.0], "score_threshold": 0.5}, model_dir))

    def references(self, image: np.ndarray, face: Face, region: FaceMask) -> tuple[list, Pose | None]:
        """Each recognizer's reference, and the face's pose read in their (shared) window."""
        ids = [g.reference(image, face, region) for g in self.guards]
        pose = None
        if self.pose_meter is not None:
            pose = self._pose(ids, self.patch(ids, image), image.shape, fallback=ids[0].face.landmarks)
        return ids, pose

    @staticmethod
    def patch(ids: list, image: np.ndarray, pixels: np.ndarray | None = None,
              window: tuple | None = None) -> np.ndarray:
        """The recognizers' references' (shared) window of `image`, with `pixels` placed at `window` (x0, y0,
        x1, y1) when given: what the recognizers and the pose check judge."""
        x0, y0, x1, y1 = ids[0].window
        patch = image[y0:y1, x0:x1].copy()
        if pixels is not None:
            patch[window[1] - y0:window[3] - y0, window[0] - x0:window[2] - x0] = pixels
        return patch

    def _pose(self, ids: list, patch: np.ndarray, image_shape: tuple,
              fallback: np.ndarray | None = None) -> Pose | None:
        """The pose YuNet reads in `patch`, solved in the whole image's camera, as the release gate reads it."""
        return self.pose_meter.pose(patch, ids[0].face, fallback, frame=(ids[0].window[:2], image_shape[:2]))

    def pose_error(self, refs: tuple, patch: np.ndarray, image_shape: tuple) -> float:
        """The pose change from the original to `patch` (a candidate's judged window; inf: no face found
        again; 0: not checked)."""
        ids, before = refs
        if self.pose_meter is None or before is None:
            return 0.0
        error = PoseChange(before, self._pose(ids, patch, image_shape)).error
        return np.inf if error is None else error

    def accepts(self, refs: tuple, patch: np.ndarray) -> bool:
        """Whether `patch` (a candidate's judged window) passes every recognizer."""
        return all(g.judge(ref, patch).identity_ok for g, ref in zip(self.guards, refs[0]))


class Site:
    """One face being replaced, and what every bank face tried on it shares, computed once rather than per
    bank face: the photo's windows, its skin and light, and each bank head's placement. `region`: the face
    region a bank head fills (`surround: bank`), else None."""

    def __init__(self, op: "BankFace", image: np.ndarray, pts: np.ndarray, window: tuple,
                 region: FaceMask | None = None) -> None:
        self.op, self.image, self.pts, self.window, self.region = op, image, pts, window, region
        x0, y0, x1, y1 = window
        self.origin, self.shape = (x0, y0), (y1 - y0, x1 - x0)
        self.orig_win = image[y0:y1, x0:x1]
        self.iod = sh.eye_distance(pts)
        self._mattes: dict[int, tuple] = {}
        self._crops: dict[int, np.ndarray] = {}

    @cached_property
    def grey(self) -> bool:
        return _greyscale(self.orig_win)

    @cached_property
    def outline(self) -> np.ndarray:
        return sh.outline_mask(sh.extend(self.pts, self.op.forehead), self.shape, self.origin)

    @cached_property
    def hull(self) -> np.ndarray:
        return sh.hull_mask(self.pts, self.shape, self.origin)

    @cached_property
    def skin(self) -> hz.Target | None:
        """The photo's skin light and colour (BankFace.skin_only over its cheeks); None where the cheeks are too
        small to read, and each bank face takes it from the inner face both share."""
        cheeks = sh.hull_mask(self.pts[CHEEKS], self.shape, self.origin) > 0
        return hz.target(BankFace.skin_only(self.orig_win, cheeks)) if cheeks.sum() >= 16 else None

    @cached_property
    def ita(self) -> float | None:
        """The face's skin tone as the photo shows it (ITA°); None in a greyscale photo."""
        return None if self.grey else tone.ita(self.orig_win, self.pts, self.origin)

    def placed_matte(self, k: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        if k not in self._mattes:
            self._mattes[k] = self.op.placed_matte(self.pts, k, self.region)
        return self._mattes[k]

    def crop(self, k: int) -> np.ndarray:
        """Bank face k's crop with its head's colours out past its matte's edge (anonymizer.bank.matte.head_colours):
        what its face and head are placed from, so that its photo's background never lines their outline."""
        if k not in self._crops:
            self._crops[k] = head_colours(self.op.bank.crop(k), self.op.bank.matte(k))
        return self._crops[k]

    @cached_property
    def head_win(self) -> np.ndarray:
        x0, y0, x1, y1 = self.region.box
        return self.image[y0:y1, x0:x1]

    @cached_property
    def head_inner(self) -> np.ndarray:
        """The face's inner face in the region's window: where a bank head takes the photo's light from."""
        x0, y0, x1, y1 = self.region.box
        return sh.hull_mask(self.pts[INNER], (y1 - y0, x1 - x0), (x0, y0)) > 0

    @cached_property
    def head_target(self) -> hz.Target:
        return hz.target(self.head_win)

    @cached_property
    def head_skin(self) -> np.ndarray | None:
        """The photo's skin (Lab, the median over its cheeks) in the region's window: where a bank head's skin
        goes, as its face's does (render); None where the cheeks are too small to read."""
        x0, y0, x1, y1 = self.region.box
        cheeks = sh.hull_mask(self.pts[CHEEKS], (y1 - y0, x1 - x0), (x0, y0)) > 0
        return np.median(hz.to_lab(self.head_win)[cheeks], 0) if cheeks.sum() >= 16 else None

    @cached_property
    def head_grey(self) -> bool:
        return _greyscale(self.head_win)

    @cached_property
    def person(self) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The person's pixels around the region (anonymizer.bank.hair.person): what its backdrop keeps to and its
        hair is read from; None without a region."""
        if self.op.segmenter is None or self.region is None:
            return None
        return hr.person(self.image, self.region.box, self.iod, self.op.segmenter)

    @cached_property
    def background(self) -> np.ndarray | None:
        """Over the region's window, how surely the photo shows no one there (the segmenter's people, Site.person,
        softened over a twentieth of an eye distance); None without a segmenter."""
        if self.person is None:
            return None
        mask, (mx, my) = self.person
        x0, y0, x1, y1 = self.region.box
        people = mask[y0 - my:y1 - my, x0 - mx:x1 - mx].astype(np.float32)
        return 1.0 - cv2.GaussianBlur(people, (0, 0), max(0.5, 0.05 * self.iod))

    @cached_property
    def hair_beside(self) -> hr.HairTone | None:
        """The person's hair as the photo shows it beyond the region (anonymizer.bank.hair.beside); None without a
        segmenter or where too little of it shows."""
        if self.person is None:
            return None
        return hr.beside(self.image, self.region.box, self.region.alpha, self.pts, CHEEKS, self.person)

    @property
    def hair(self) -> hr.HairTone | None:
        """The person's hair beyond the region, which a bank head's hair is toned to (`hair_tone`); None without."""
        return self.hair_beside if self.op.hair_tone else None

    def backdrop(self, out: np.ndarray) -> np.ndarray:
        """The region's window of `out` as a bank head's backdrop (shown where the head leaves the region
        uncovered), each pixel from its source (`sources`)."""
        return mirrored(out, self.region) if self.sources is None else out[self.sources]

    @cached_property
    def sources(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Where each pixel of the region's window takes its backdrop from (regions.mirror_sources): its
        surroundings mirrored inward, and, where the person's hair goes on past the region (`hair_beside`), the
        person's pixels inside it above the nose's tip continuing the person's nearest pixels outside it above the
        chin (regions.Own: at least OWN_DEPTH eye distances deep, at most OWN_REACH further than the nearest pixel
        of any kind). Long hair whose edge meets the region's brought the wall beyond it in: a wedge of wall
        between a short bank head and the hair below it."""
        shape = self.image.shape[:2]
        if self.hair_beside is None:
            return mirror_sources(shape, self.region, self.person)
        mask, (mx, my) = self.person
        x0, y0, x1, y1 = self.region.box
        chin = float(self.pts[8, 1])
        pixels = mask[y0 - my:y1 - my, x0 - mx:x1 - mx] & (np.arange(y0, y1)[:, None] < self.pts[33, 1])
        own = Own(pixels, OWN_REACH * self.iod, max(MIN_RUN, OWN_DEPTH * self.iod), chin)
        return mirror_sources(shape, self.region, self.person, own)

    @cached_property
    def foreign(self) -> np.ndarray | None:
        """Over the region's window: where the photo shows the person (their hair, their ears) but the backdrop
        shows what is not them (the wall, someone behind), which a bank head leaving it uncovered lets in beside
        its own head; None without a segmenter."""
        if self.person is None or self.sources is None:
            return None
        mask, (mx, my) = self.person
        h, w = mask.shape
        ys, xs = self.sources[0] - my, self.sources[1] - mx
        known = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        theirs = ~known | mask[ys.clip(0, h - 1), xs.clip(0, w - 1)]
        x0, y0, x1, y1 = self.region.box
        return mask[y0 - my:y1 - my, x0 - mx:x1 - mx] & (self.region.alpha > 0) & ~theirs


def _bank_people(bank: Bank, probe):
    """The bank people's apparent sex (anonymizer.bank.apparent_sex.BankPeople): a StyleGAN build's recorded
    readings where this probe made them, else read now."""
    from anonymizer.bank.apparent_sex import BankPeople
    from anonymizer.bank.stylegan import recorded_sexes

    return BankPeople(bank, probe, recorded_sexes(bank, probe))


class BankFace:
    name = "bank"

    @staticmethod
    def weight_files(params: dict, model_dir: str | None) -> list[dict]:
        """What the audit report and the licence gate see: the bank (its manifest's hash, licence and licence
        class) and the landmarker it was built with, the landmarker this run uses where it is another, and
        the identity guard's recognizers and pose detector."""
        from anonymizer.bank.composite import available_encoders
        from anonymizer.measure.encoder import ENCODERS
        from anonymizer.models import describe

        try:
            bank = load_bank(locate_bank(params["bank"], model_dir))
        except BankError as exc:
            raise BankError(f"policy key 'anonymization.operator.params.bank': {exc}") from None
        m = bank.manifest
        rows = [{"component": "bank", "name": "face bank", "file": str(bank.root / "manifest.json"),
                 "sha256": sha256_path(bank.root / "manifest.json"), "licence": m["licence"],
                 "licence_class": m.get("licence_class", "unknown")},
                {"component": "bank", **describe(bank.landmarker, model_dir)}]
        run_landmarks = params.get("landmarks") or bank.landmarker
        if run_landmarks != bank.landmarker:
            rows.append({"component": "landmarks", **describe(run_landmarks, model_dir)})
        guard = params.get("identity_guard", True)
        if guard:
            cfg = BankGuardConfig(**({} if guard is True else guard))
            for name in available_encoders(cfg.encoders):
                rows += [dict(r, component=f"identity_guard:{name}")
                         for r in ENCODERS.factory(name).weight_files({"precision": cfg.precision}, model_dir)]
            if cfg.max_pose_error_deg is not None:
                rows.append({"component": "identity_guard:pose", **describe("yunet", model_dir)})
        if params.get("match_sex"):
            rows += [{"component": "apparent_sex", **describe(m, model_dir)} for m in ("apparent_sex", "dlib_resnet")]
        if tone.by_descriptor(params):
            rows += [{"component": "skin_tone", **describe(m, model_dir)} for m in ("skin_tone", "dlib_resnet")]
        if params.get("match_age"):
            rows += [{"component": "apparent_age", **describe(m, model_dir)} for m in ("apparent_age", "dlib_shape5")]
        if params.get("occlusion") == "hands":
            rows += [{"component": "occlusion", **describe(m, model_dir)} for m in ("mediapipe_palm", "mediapipe_hand")]
        if SURROUNDS.get(params.get("surround", False)) == "bank":
            rows.append({"component": "surround", **describe("mediapipe_selfie", model_dir)})
        return rows

    @staticmethod
    def virtual_identities(params: dict, model_dir: str | None) -> list[str | None]:
        """The bank's virtual identities, in order, each as the label a keyed run matches a person to: their
        apparent sex (with `match_sex`), skin tone (with `tone_reading: descriptor`) and age group (`match_age`), as
        anonymizer.bank.tone.reads_as writes it (None each where neither is matched). A keyed run
        gives each person one of them (anonymizer.pipeline.link)."""
        bank = load_bank(locate_bank(params["bank"], model_dir))
        by_sex, by_age = bool(params.get("match_sex")), bool(params.get("match_age"))
        by_tone = tone.by_descriptor(params)
        sexes, darkness, ages = {}, {}, {}
        if by_sex:
            from anonymizer.bank.apparent_sex import ApparentSex

            sexes = _bank_people(bank, ApparentSex(model_dir)).of_person
        if by_tone:
            darkness = tone.SkinTone(model_dir).of_people(bank)
        if by_age:
            ages = person_ages(bank, AgeReader(model_dir))
        return [tone.reads_as(sexes.get(name), darkness.get(name), by_sex, by_tone, age=ages.get(name), by_age=by_age)
                for name in bank.identities]

    def __init__(self, bank: str, fallback: str = "blur", fallback_strength: float = 0.35, min_face_px: float = 40,
                 max_yaw: float = 45.0, max_pitch: float = 35.0, max_landmark_error: float = 0.3, choices: int = 6,
                 mirror: bool = True, poisson: bool = True,
                 identity_guard: dict | bool | None = True, model_dir: str | None = None,
                 forehead: float = 0.7, surround: bool | str = False, surround_strength: float | None = None,
                 expand: float = 1.35, shape: str = "ellipse", feather: float = 0.15,
                 landmarks: str | None = None, tone_pool: int = 36, tone_reading: str = "ita",
                 match_sex: bool = False, match_age: bool = False, occlusion: str | None = None,
                 hair_tone: bool = False) -> None:
        if fallback in (self.name, "generated"):
            raise ValueError(f"bank: the fallback must be a classical operator, got {fallback!r}")
        if occlusion not in OCCLUSIONS:
            raise ValueError(f"bank: occlusion must be one of {', '.join(map(str, OCCLUSIONS))}, got {occlusion!r}")
        self.bank: Bank = load_bank(locate_bank(bank, model_dir))
        if len(self.bank) == 0:
            raise ValueError(f"bank: face bank {bank} has no faces")
        self.fallback_name = fallback
        region = {"expand": expand, "shape": shape, "feather": feather}
        self.fallback = ANONYMIZERS.create(fallback, strength=fallback_strength, **region)
        self.around = (self.fallback if surround_strength is None
                       else ANONYMIZERS.create(fallback, strength=surround_strength, **region))
        self.min_face_px, self.max_yaw, self.max_pitch = float(min_face_px), float(max_yaw), float(max_pitch)
        self.max_landmark_error = float(max_landmark_error)
        self.bank.mirrored = bool(mirror)
        self.poisson = bool(poisson)
        self.choices = max(1, min(int(choices), self.bank.choices))
        if tone_reading not in TONE_READINGS:
            raise ValueError(f"bank: tone_reading must be one of {', '.join(TONE_READINGS)}, got {tone_reading!r}")
        self.tone_pool = int(tone_pool) if self.bank.in_colour or tone_reading == "descriptor" else 0
        if not 0.0 <= forehead <= 1.0:
            raise ValueError(f"bank: forehead must be in [0, 1], got {forehead}")
        self.forehead = float(forehead)
        if surround not in SURROUNDS:
            raise ValueError(f"bank: surround must be one of none, blur, bank (or true / false), got {surround!r}")
        self.surround = SURROUNDS[surround]
        if hair_tone and self.surround != "bank":
            raise ValueError(f"bank: hair_tone tones a bank head's hair and needs surround: bank, got {surround!r}")
        self.landmarker = sh.landmarker(landmarks or self.bank.landmarker, model_dir)
        self.hands = HandDetector(model_dir) if occlusion == "hands" else None
        self.hair_tone = bool(hair_tone)
        self.segmenter = PersonSegmenter(model_dir) if self.surround == "bank" else None
        if identity_guard is True:
            identity_guard = {}
        self.guard = _Guard(BankGuardConfig(**identity_guard), model_dir) if isinstance(identity_guard, dict) else None
        self.triangles = sh.triangles()
        self.sex = self.bank_people = None
        if match_sex:
            from anonymizer.bank.apparent_sex import ApparentSex

            self.sex = ApparentSex(model_dir, self._guard_encoder("dlib_resnet"))
            self.bank_people = _bank_people(self.bank, self.sex)
        self.skin_tone = (tone.SkinTone(model_dir, self._guard_encoder("dlib_resnet"))
                          if tone_reading == "descriptor" and self.tone_pool > 0 else None)
        self.tones = self._bank_tones() if self.tone_pool > 0 else None
        self.age = self.age_groups = None
        if match_age:
            self.age = AgeReader(model_dir)
            ages = person_ages(self.bank, self.age)
            people = np.array([age_group(ages[str(p)]) for p in self.bank.index["identity"]])
            own = np.array([age_group(a) for a in face_ages(self.bank, self.age)])
            self.age_groups = np.where(own == people, people, -1)

    def _bank_tones(self) -> np.ndarray:
        """Each bank face's skin tone, read as the faces' are (`tone_reading`): its person's, by the probe."""
        if self.skin_tone is None:
            return self.bank.tones
        people = self.skin_tone.of_people(self.bank)
        return np.array([people[str(p)] for p in self.bank.index["identity"]])

    def _guard_encoder(self, name: str):
        """The guard's recognizer `name`, where it runs one (one model in memory, not two), else None."""
        for g in self.guard.guards if self.guard else ():
            if g.config.encoder == name:
                return g.encoder
        return None

    def readings(self, image: np.ndarray, face: Face, refs: tuple | None, site: Site
                 ) -> tuple[float | None, np.ndarray | None]:
        """The face's skin tone as `tone_reading` reads it (None: not chosen by tone), and with `match_sex` the
        bank faces that may go on it (anonymizer.bank.apparent_sex; None: any). Both probes read the guard's
        descriptor of the original where it has one."""
        probes = [p for p in (self.skin_tone, self.sex) if p is not None]
        descriptor = None
        if probes:
            names = [g.config.encoder for g in self.guard.guards] if refs is not None else []
            probe = probes[0]
            descriptor = (refs[0][names.index(probe.recognizer)].embedding if probe.recognizer in names
                          else probe.describe(image, face))
        skin = (None if self.tone_pool <= 0 else self.skin_tone.darkness(descriptor) if self.skin_tone
                else site.ita)
        allowed = None
        if self.sex is not None:
            p = self.sex.probability(descriptor)
            allowed = self.bank_people.allowed(self.sex.decide(p), self.sex.lean(p))
        return skin, self.of_age(image, face, allowed, skin)

    def of_age(self, image: np.ndarray, face: Face, allowed: np.ndarray | None,
               skin: float | None = None) -> np.ndarray | None:
        """`allowed` narrowed to the bank faces of the face's apparent age group (`match_age`: faces whose person
        reads in it and which read in it themselves; a person's faces turned one way can read a decade younger, and
        the result reads as the bank face does), where at least AGE_MIN_PEOPLE of them remain (with the
        `descriptor` tone reading, of them within TONE_CLOSE of the face's `skin`: the StyleGAN bank's people over
        60 are nearly all light-skinned, and a face made another skin tone looks recoloured, where one made younger
        still looks like a photograph); else `allowed`."""
        if self.age is None:
            return allowed
        mine = self.age_groups == age_group(float(self.age.read(image, [face])[0]))
        if allowed is not None:
            mine &= allowed
        return mine if len(self.people(self.open_faces(skin, mine))) >= AGE_MIN_PEOPLE else allowed

    def people_open_to(self, image: np.ndarray, face: Face) -> int | None:
        """How many bank people `face` may be given: those alike in skin tone, sex and age group as the policy
        matches them (None: the face falls back). Two photos of one person show one bank person about once in
        this many pairs, whatever else varies: the floor on linking them through the bank, which only a bank
        with more people of each kind lowers."""
        reason, pts, window = self.decide(image, face)
        if reason is not None:
            return None
        skin, allowed = self.readings(image, face, None, Site(self, image, pts, window))
        return len(self.people(self.open_faces(skin, allowed)))

    def open_faces(self, skin: float | None, allowed: np.ndarray | None) -> np.ndarray:
        """Per bank face, whether a face of tone `skin` may be given it: alike in tone, and `allowed`."""
        alike = ~self.unlike(np.arange(len(self.bank)), skin)
        return alike if allowed is None else alike & allowed

    def people(self, faces: np.ndarray) -> np.ndarray:
        """The bank people whose faces `faces` (a bool per bank face) marks."""
        return np.unique(self.bank.index["identity"].to_numpy()[faces])

    # ------------------------------------------------------------ per face

    def decide(self, image: np.ndarray, face: Face) -> tuple[str | None, np.ndarray | None, tuple | None]:
        """(why this face falls back or None, its 68 points, its working window x0, y0, x1, y1)."""
        if face.size < self.min_face_px:
            return "small", None, None
        if face.landmarks is not None and not np.all(np.isfinite(face.landmarks)):
            return "no_landmarks", None, None
        pts = self.landmarker(image, face)
        if not np.all(np.isfinite(pts)) or sh.eye_distance(pts) < 1.0:
            return "no_landmarks", None, None
        if self.landmarker.reliability(pts, face) > self.max_landmark_error:
            return "unreliable_landmarks", pts, None
        try:
            f = sh.features(pts)
        except ValueError:
            return "unreliable_landmarks", pts, None
        if abs(f.yaw) > self.max_yaw or abs(f.pitch) > self.max_pitch:
            return "extreme_pose", pts, None
        outline = sh.extend(pts)[sh.OUTLINE]
        m = WINDOW_MARGIN * sh.eye_distance(pts)
        x0, y0 = np.floor(outline.min(0) - m).astype(int)
        x1, y1 = np.ceil(outline.max(0) + m).astype(int)
        h, w = image.shape[:2]
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            return "border", pts, None
        if self.hands is not None and self.hands.covering(image, face, outline) >= OCCLUDED_SHARE:
            return "occluded", pts, None
        return None, pts, (int(x0), int(y0), int(x1), int(y1))

    def nearest(self, pts: np.ndarray, n: int, skin: float | None = None,
                allowed: np.ndarray | None = None, draw: np.ndarray | None = None) -> np.ndarray:
        """The n bank faces that fit the face best, best first: nearest in pose and expression; with `skin`
        (the face's tone, `readings`) and a `tone_pool`, among the `tone_pool` (at least n) nearest in pose and
        expression, one face per virtual identity (its nearest in pose) before any second, the nearest in skin
        tone first, ties in pose order. A person's views (and their mirror images) share a tone: without that
        rule they would fill the choices and leave the identity guard fewer people to try. With the
        `descriptor` reading and `draw` (a random number per pool face, from the face's RNG), those alike in
        tone (`unlike`) come first in the draw's order, not by closeness: ranked by tone, two photos of one
        person drew the same few bank people, and a recognizer linked the two through them. With `allowed` (a
        bool per bank face: `match_sex`, `match_age`), among those only."""
        vector = sh.features(pts).vector()
        if skin is None or self.tone_pool <= 0:
            return self.bank.nearest(vector, n, allowed=allowed)
        pool = self.bank.nearest(vector, max(n, self.tone_pool), allowed=allowed)
        people = self.bank.index["identity"].to_numpy()[pool % len(self.bank)]
        seen: dict = {}
        repeat = np.zeros(len(pool), np.int64)  # 0 for a person's first face in the pool, 1 for the second…
        for j, person in enumerate(people):
            repeat[j] = seen[person] = seen.get(person, -1) + 1
        gap = np.nan_to_num(np.abs(self.tones[pool % len(self.bank)] - skin), nan=np.inf)
        if draw is None or self.skin_tone is None:
            return pool[np.lexsort((np.arange(len(pool)), gap, repeat))][:n]
        return pool[np.lexsort((draw[:len(pool)], gap > TONE_CLOSE, repeat))][:n]

    def order(self, pts: np.ndarray, rng: np.random.Generator, identity: int | None = None,
              skin: float | None = None, allowed: np.ndarray | None = None,
              draw: np.ndarray | None = None) -> list[int]:
        """The bank faces to try: the `choices` that fit best (`nearest`), in an order from the RNG, less those of
        another skin tone (`alike`); for a face assigned a virtual identity (a keyed run), that identity's faces,
        nearest in pose first."""
        if identity is not None:
            return [int(k) for k in self.bank.nearest(sh.features(pts).vector(), self.bank.choices, identity)]
        near = self.nearest(pts, self.choices, skin, allowed, draw)
        return self.alike([int(near[i]) for i in rng.permutation(len(near))], skin)

    def candidates(self, pts: np.ndarray, rng: np.random.Generator, identity: int | None, skin: float | None,
                   allowed: np.ndarray | None, blocks: int) -> tuple[list[int], list[int]]:
        """The bank faces `choose` tries: `order`'s, and with the guard `further`'s, drawn from one `nearest`
        ranking. Where none of them is alike in skin tone, the alike bank faces nearest in pose instead: a face
        a little further in pose looks better than a blur."""
        more = self.guard.config.more_if_turned if identity is None and self.guard is not None else 0
        draw = (rng.random(max(self.tone_pool, self.choices + blocks * more))
                if identity is None and skin is not None and self.skin_tone is not None else None)
        order = self.order(pts, rng, identity, skin, allowed, draw)
        extras = self.further(pts, more, rng, skin, allowed, blocks, draw)
        if order or extras or draw is None:
            return order, extras
        alike = self.open_faces(skin, allowed)
        return (self.order(pts, rng, None, skin, alike, draw),
                self.further(pts, more, rng, skin, alike, blocks, draw))

    def alike(self, faces: list[int], skin: float | None) -> list[int]:
        """`faces` less those whose person's tone lies further than TONE_CLOSE from the face's `skin`. Where the
        guard turns away every bank face of the person's tone, the face falls back rather than change skin: a
        dark-skinned child made light-skinned misrepresents the dataset's people."""
        return [k for k, far in zip(faces, self.unlike(faces, skin)) if not far]

    def unlike(self, faces: Sequence[int], skin: float | None) -> np.ndarray:
        """Per bank face, whether its person's tone lies further than TONE_CLOSE from the face's `skin`; none
        does without the `descriptor` reading."""
        faces = np.asarray(faces, np.int64)
        if skin is None or self.skin_tone is None:
            return np.zeros(len(faces), bool)
        return np.abs(self.tones[faces % len(self.bank)] - skin) > TONE_CLOSE

    def further(self, pts: np.ndarray, n: int, rng: np.random.Generator, skin: float | None = None,
                allowed: np.ndarray | None = None, blocks: int = 1, draw: np.ndarray | None = None) -> list[int]:
        """The n bank faces that fit next best after `order`'s, in an order from the RNG: tried only where a
        cover group keeps none of those (BankGuardConfig.more_if_turned). With `blocks`, as many blocks
        of n, each after the nearer one, each in its own order: `by_cover` sorts them into cover groups, and
        a group that the first n leave short of good-cover faces finds some further on."""
        if n <= 0:
            return []
        more = self.nearest(pts, self.choices + blocks * n, skin, allowed, draw)[self.choices:]
        return self.alike([int(more[j + i]) for j in range(0, len(more), n)
                           for i in rng.permutation(min(n, len(more) - j))], skin)

    def target_shape(self, pts: np.ndarray, bank_pts: np.ndarray) -> np.ndarray:
        """The bank face's 68 points placed on the face (similarity on the stable points), with the face's
        own eye and mouth opening."""
        new = sh.apply(sh.similarity(bank_pts[sh.STABLE], pts[sh.STABLE]), bank_pts)
        for i0 in (36, 42):  # eyelids: their distance to the corner-to-corner line, scaled to the face's
            a, b = new[i0], new[i0 + 3]
            u = (b - a) / max(np.linalg.norm(b - a), 1e-9)
            nrm = np.array([-u[1], u[0]])
            ratio = np.clip(sh.eye_aspect(pts, i0) / max(sh.eye_aspect(new, i0), 1e-3), 0.3, 3.0)
            for j in (1, 2, 4, 5):
                off = (new[i0 + j] - a) @ nrm
                new[i0 + j] += (ratio - 1.0) * off * nrm
        _, d = sh.eye_line(new)
        down = np.array([-d[1], d[0]])
        delta = sh.mouth_gap(pts) - sh.mouth_gap(new)  # the lower lip and chin follow the face's mouth opening
        for idx, share in (((56, 57, 58, 65, 66, 67), 1.0), ((55, 59), 0.6), ((6, 7, 8, 9, 10), 0.6), ((5, 11), 0.3)):
            new[list(idx)] += share * delta * down
        # Yaw: the nose tip and the mouth sit across the eye line where the face's turn puts them. The nearest
        # bank face is a few degrees off, and its nose, placed by the similarity, would carry its own turn: so
        # the nose (its tip fully, its bridge less, the top not) and the mouth move along the eye line to the
        # face's offsets, their shapes kept.
        def across(p: np.ndarray, at: np.ndarray) -> float:  # offset from the eye line's middle, along it
            return float((at - (p[36] + p[45]) / 2) @ d)

        nose = across(pts, pts[30]) - across(new, new[30])
        new[sh.NOSE] += np.outer(NOSE_SHARES * nose, d)
        mouth = across(pts, (pts[48] + pts[54]) / 2) - across(new, (new[48] + new[54]) / 2)
        new[sh.MOUTH] += mouth * d
        c = pts[sh.JAW].mean(0)
        further = np.linalg.norm(pts[sh.JAW] - c, axis=1) > np.linalg.norm(new[sh.JAW] - c, axis=1)
        new[sh.JAW[further]] = pts[sh.JAW[further]]
        return new

    def render(self, base: np.ndarray, site: Site, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(the site's window of `base` with bank face k in place, alpha over the window)."""
        pts, (x0, y0, x1, y1), shape, iod = site.pts, site.window, site.shape, site.iod
        bank_68 = self.bank.landmarks(k)
        new = sh.extend(self.target_shape(pts, bank_68))
        # Drawn in its head's colours (Site.crop), read as its photo is for what is skin: where that photo shows its
        # background the alpha still fades, so the colours carried out there do not show as a smear
        both, covered = warp(np.concatenate([site.crop(k), self.bank.crop(k)], 2), sh.extend(bank_68), new,
                             self.triangles, shape, (x0, y0))
        new_m = sh.outline_mask(sh.extend(new[:68], self.forehead), shape, (x0, y0))
        union = np.maximum(new_m, site.outline)
        grow = max(1, int(round(MASK_GROW * iod)))
        union = cv2.dilate(union, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
        union[~covered] = 0
        union[:2], union[-2:], union[:, :2], union[:, -2:] = 0, 0, 0, 0  # the alpha reaches 0 inside the window
        orig_win = site.orig_win
        base_win = base[y0:y1, x0:x1]
        both[~covered] = np.tile(orig_win[~covered], 2)
        face_img, as_is = np.ascontiguousarray(both[..., :3]), np.ascontiguousarray(both[..., 3:])
        # The inner face: inside both faces' 68 points (brows down to the chin), no forehead: a bank face's
        # fringe of hair must neither set the lightness harmonize matches nor count as its skin.
        core = np.minimum(sh.hull_mask(new[:68], shape, (x0, y0)), site.hull)
        inner = cv2.erode(core, np.ones((3, 3), np.uint8), iterations=max(1, int(0.15 * iod))) > 0
        if inner.sum() < 16:
            inner = union > 0
        face_lab = hz.to_lab(face_img)
        skin = self.skin(hz.to_lab(as_is), inner, iod)
        photo = site.skin if site.skin is not None else hz.target(self.skin_only(orig_win, inner))
        face_img = self.harmonize(face_img, photo, inner, face_lab, sh.hull_mask(new[CHEEKS], shape, (x0, y0)) > 0)
        if site.grey:  # a black-and-white photo: a face in colour would give itself away
            face_img = cv2.cvtColor(cv2.cvtColor(face_img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        if self.poisson:
            cloned = poisson(face_img, base_win, union, SEAM_REACH * iod)
            # Lightness from the Poisson blend, colour from harmonize: a beard or a collar on the mask's edge
            # would otherwise tint the whole chin (green, grey) through the blend.
            lab = cv2.cvtColor(cloned.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
            lab[..., 1:] = cv2.cvtColor(face_img.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[..., 1:]
            cloned = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            cloned = face_img
        ramp = max(1.0, FEATHER * iod)
        dist = cv2.distanceTransform((union > 0).astype(np.uint8), cv2.DIST_L2, 5)
        alpha = np.clip(dist / ramp, 0.0, 1.0)
        # Below the eyes, inside its own outline, the bank face is its cheeks and jaw, shadowed or bearded: read as
        # not skin there, it let the base through, and a jaw against a white wall faded into it
        skin = np.maximum(skin, self.cheeks_and_jaw(new, site))
        alpha = np.where(inner, alpha, alpha * skin).astype(np.float32)
        return blend(base_win, cloned, alpha), alpha

    @staticmethod
    def cheeks_and_jaw(new: np.ndarray, site: Site) -> np.ndarray:
        """Over the site's window: the placed bank face's outline (`new`: its 105 points) below its eye line, short
        of its edge by JAW_INSET eye distances and softened over as much (1 inside, 0 outside)."""
        (x0, y0, _, _), shape, iod = site.window, site.shape, site.iod
        left, d = sh.eye_line(new)
        ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
        below = (xs + x0 - left[0]) * -d[1] + (ys + y0 - left[1]) * d[0] > 0
        inset = max(1, int(round(JAW_INSET * iod)))
        face = cv2.erode(sh.outline_mask(sh.extend(new[:68]), shape, (x0, y0)), np.ones((3, 3), np.uint8),
                         iterations=inset) > 0
        return cv2.GaussianBlur((face & below).astype(np.float32), (0, 0), inset)

    def placed_matte(self, pts: np.ndarray, k: int, region: FaceMask
                     ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """(the similarity placing bank face k's crop on the face, in the region's window; its head matte
        there; the remap maps that raise the head's top to the region's (anonymizer.bank.matte.lift), None
        where it reaches it). Past the crop's sides and bottom the matte is reflected like the crop itself;
        above its top, crowned (anonymizer.bank.matte.crowned_matte)."""
        x0, y0, x1, y1 = region.box
        m = sh.similarity(self.bank.landmarks(k)[sh.STABLE], pts[sh.STABLE])
        m[:, 2] -= (x0, y0)
        matte = cv2.warpAffine(crowned_matte(self.bank.matte(k)), crowned_map(m), (x1 - x0, y1 - y0),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        maps = lift(pts - (x0, y0), matte, region.alpha)
        if maps is not None:
            matte = cv2.remap(matte, *maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        return m, matte, maps

    def ranked(self, order: list[int], extras: list[int], site: Site, cover: bool, first_group: int
               ) -> Iterable[tuple[int, int, bool]]:
        """(bank face, group, extra) for `choose`: `order` then `extras`, in `by_cover`'s groups where `cover`,
        numbered from `first_group`."""
        if cover:
            return ((k, group + first_group, extra) for k, group, extra in self.by_cover(order, site, extras))
        return [(k, first_group, False) for k in order] + [(k, first_group, True) for k in extras]

    def by_cover(self, candidates: list[int], site: Site, extras: Sequence[int] = ()
                 ) -> Iterator[tuple[int, int, bool]]:
        """(bank face, group, extra): `candidates`, then `extras` (BankFace.further), with those whose head
        covers less than COVER_MIN of the region around the face (outside its outline), or leaves more than
        FOREIGN_MAX square eye distances of the person's place whose backdrop is not theirs (`Site.foreign`)
        uncovered, moved last (group 1), each group in its own order: what a bank head leaves uncovered shows the
        mirrored surroundings, which beside hair give the replacement away (a white shirt behind a woman's ears,
        between a short bank head and her long hair). Only a cut, not a ranking: ranked, the head that fits a
        person's hair best would be picked in every photo of them, linking them. Lazily: only the candidates looked
        at are placed (most faces keep their first good one)."""
        tagged = [(k, False) for k in candidates] + [(k, True) for k in extras]
        region = site.region
        outside = sh.outline_mask(sh.extend(site.pts), region.alpha.shape, (region.x0, region.y0)) == 0
        ring = (region.alpha >= 0.5) & outside
        if ring.sum() < 16:
            yield from ((k, 0, extra) for k, extra in tagged)
            return
        foreign, most = site.foreign, FOREIGN_MAX * site.iod ** 2
        short = []
        for k, extra in tagged:
            matte = site.placed_matte(k)[1]
            if float(matte[ring].mean()) >= COVER_MIN and (foreign is None or (foreign & (matte < 0.5)).sum() <= most):
                yield k, 0, extra
            else:
                short.append((k, extra))
        yield from ((k, 1, extra) for k, extra in short)

    def choose(self, out: np.ndarray, site: Site, ranked: Iterable[tuple[int, int, bool]], refs: tuple | None,
               backdrop: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(pixels, alpha, bank face) over the site's window of the first bank face the guard accepts, its head
        (where the site has a region) left in `out`; None when it accepts none. `ranked`: (bank face, group,
        extra) triples, of which the guard tries up to `candidates` that are not extra; in each group, the bank
        faces the pose check passes come in their order (one kept but turned past `pose_target_deg` is held
        while up to `pose_tries` more are tried), then, where none was kept (turned too far, too close to the
        person, or none in the group), up to `more_if_turned` extra ones, then those it finds turned, least
        turned first. Without a guard, the first."""
        left = self.guard.config.candidates if self.guard else 1
        tolerance = (self.guard.config.max_pose_error_deg if self.guard else None) or np.inf
        target = (self.guard.config.pose_target_deg if self.guard else None) or tolerance
        region, window = site.region, site.window
        if region is not None:
            rys, rxs = region.window
            before = out[rys, rxs].copy()
        for _, group in itertools.groupby(ranked, key=lambda c: c[1]):
            turned = []  # (pose change, order, head window, judged window, pixels, alpha, bank face)
            held = None  # (pose change, head window, pixels, alpha, bank face): kept, turned past the target
            more = self.guard.config.more_if_turned if self.guard else 0
            tries = self.guard.config.pose_tries if self.guard else 0
            for k, _, extra in group:
                if held is not None and (extra or tries == 0):
                    break
                if extra:  # only where no bank face of the group was kept
                    if more == 0:
                        continue
                    more -= 1
                elif left == 0:
                    continue
                else:
                    left -= 1
                if held is not None:
                    tries -= 1
                head = self.head(out, site, k, backdrop) if region is not None else None
                if head is not None:
                    out[rys, rxs] = head
                pixels, alpha = self.render(out, site, k)
                if refs is None:
                    return pixels, alpha, k
                patch = self.guard.patch(refs[0], out, pixels, window)
                if region is not None:
                    out[rys, rxs] = before
                error = self.guard.pose_error(refs, patch, out.shape)
                if error > tolerance:
                    turned.append((error, len(turned), head, patch, pixels, alpha, k))
                elif (held is None or error < held[0]) and self.guard.accepts(refs, patch):
                    if error <= target:
                        return self._keep(out, region, head, pixels, alpha, k)
                    held = (error, head, pixels, alpha, k)
            if held is not None:
                return self._keep(out, region, *held[1:])
            for _, _, head, patch, pixels, alpha, k in sorted(turned, key=lambda t: t[:2]):
                if self.guard.accepts(refs, patch):
                    return self._keep(out, region, head, pixels, alpha, k)
        return None

    @staticmethod
    def _keep(out: np.ndarray, region: FaceMask | None, head: np.ndarray | None, pixels: np.ndarray,
              alpha: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The chosen bank face k: its head (if any) into `out`, its (pixels, alpha, k) returned."""
        if head is not None:
            rys, rxs = region.window
            out[rys, rxs] = head
        return pixels, alpha, k

    def head(self, out: np.ndarray, site: Site, k: int, backdrop: np.ndarray) -> np.ndarray:
        """The site region's window of `out` with bank face k's head in place (`surround: bank`, module doc 5);
        `backdrop`: the region's window of `out` filled from its surroundings, shown where the bank photo is
        background."""
        region = site.region
        x0, y0, x1, y1 = region.box
        size = (x1 - x0, y1 - y0)
        m, matte, maps = site.placed_matte(k)
        layer = cv2.warpAffine(crowned_crop(site.crop(k), self.bank.matte(k)), crowned_map(m), size,
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        if maps is not None:
            layer = cv2.remap(layer, *maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        matte = cv2.GaussianBlur(matte, (0, 0), max(0.5, MATTE_FEATHER * site.iod))
        if site.background is not None:
            # Faded over the region's whole ramp, hair against a wall was a translucent smudge: over the background
            # the head ends in the ramp's upper part, and past that the backdrop (the wall, continued) meets the photo
            lo, hi = HEAD_EDGE
            ends = np.clip((region.alpha - lo) / (hi - lo), 0.0, 1.0)
            matte = matte * (1.0 - site.background + site.background * ends)
        matte = matte[..., None]
        if not self.bank.in_colour and site.head_inner.sum() >= 16:
            # A grey bank's head would stay grey in a colour photo: the photo's light and low-passed colour,
            # as its face gets them (render)
            layer = hz.harmonize(layer, site.head_target, site.head_inner).astype(np.float32)
        else:
            # The bank person's skin taken to the photo's, as their face is (render): else a forehead in the bank
            # photo's light shows above the face's forehead cut. Lightness as a change of exposure would move it
            # (a gain in luminance is L + 16 scaled), so dark hair stays dark where an added lightness greyed it;
            # colour only as far as a pixel is skin (BankFace.skin), or hair takes the skin's tint (teal, green).
            lab = hz.to_lab(layer)
            placed = sh.apply(m, self.bank.landmarks(k))
            theirs = sh.hull_mask(placed[CHEEKS], size[::-1]) > 0
            if theirs.sum() >= 16 and site.head_skin is not None:
                bank_skin = np.median(lab[theirs], 0)
                gain = np.clip((site.head_skin[0] + 16.0) / max(bank_skin[0] + 16.0, 1.0), 1 / MAX_GAIN, MAX_GAIN)
                by_colour = self.skin(lab, theirs, site.iod)
                # hair near their skin's colour (light brown on light skin) reads as skin by colour alone, and took
                # the photo's skin colour: orange-brown over black hair
                hair = self.own_hair(lab, matte[..., 0], placed, theirs)
                skin = (by_colour if hair is None else np.minimum(by_colour, 1.0 - cv2.GaussianBlur(
                    hair.astype(np.float32), (0, 0), max(0.5, 0.1 * site.iod))))[..., None]
                own = self.skin_colour(lab, skin[..., 0], bank_skin, site.iod)
                lab[..., 0] = gain * (lab[..., 0] + 16.0) - 16.0
                lab[..., 1:] += skin * (site.head_skin[1:] - own)
                if site.hair is not None:
                    # toned only where colour alone finds no skin: toning the hair told apart above too, a learning
                    # attacker named more people from their originals (docs/benchmarks.md)
                    self.tone_hair(lab, matte[..., 0], placed, by_colour, site.hair, site.iod)
            layer = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255.0 + 0.5, 0, 255)
        if site.head_grey:
            layer = np.repeat(cv2.cvtColor(layer.astype(np.uint8), cv2.COLOR_RGB2GRAY)[..., None], 3, 2)
        layer = layer * matte + backdrop.astype(np.float32) * (1.0 - matte)
        base = out[y0:y1, x0:x1]
        # Past the render's bottom edge the crop is the render mirrored, and under the chin the bank photo often
        # holds a hand, a scarf or a collar, which the matte keeps with the person and which showed, toned as skin,
        # as a second chin: the photo stays there (its own neck and clothes; the face's render covers its jaw)
        below = self.under_chin(k, m, size, site.iod)
        if self.bank.rendered:
            below = np.maximum(below, self.below_render(k, m, maps, size))
        layer = layer * (1.0 - below) + base * below
        layer = np.rint(layer).astype(np.uint8)
        if self.poisson:
            # The seam takes the head to the photo's light where the photo shows the person; where it shows their
            # background, a membrane from bank hair to a white wall brightened the hair into a grey halo
            seam = base if site.background is None else blend(base, layer, site.background)
            mask = (region.alpha > 0).astype(np.uint8) * 255
            layer = poisson(layer, seam, mask, SEAM_REACH * site.iod)
        return blend(base, layer, region.alpha)

    def under_chin(self, k: int, m: np.ndarray, size: tuple[int, int], iod: float) -> np.ndarray:
        """Per pixel of the region's window (`size`: width, height), whether it lies under bank face k's chin (its
        jaw points CHIN, placed by `m`), straight down to the window's bottom; softened over a twentieth of an eye
        distance. `lift` moves nothing below the eyes, so `m` alone places the jaw."""
        chin = sh.apply(m, self.bank.landmarks(k))[CHIN]
        poly = np.vstack([chin, [[chin[-1, 0], size[1] + 1.0], [chin[0, 0], size[1] + 1.0]]])
        under = np.zeros(size[::-1], np.uint8)
        cv2.fillPoly(under, [np.round(poly).astype(np.int32)], 1)
        return cv2.GaussianBlur(under.astype(np.float32), (0, 0), max(0.5, 0.05 * iod))[..., None]

    def below_render(self, k: int, m: np.ndarray, maps: tuple[np.ndarray, np.ndarray] | None,
                     size: tuple[int, int]) -> np.ndarray | None:
        """Per pixel of the region's window (`size`: width, height), how far bank face k's crop, placed there by `m`
        and the lift's `maps` (placed_matte), lies past its render's bottom edge (anonymizer.bank.stylegan.
        render_frame): 1 past it, falling to 0 RENDER_RAMP crop pixels above it; None for a bank of composites,
        whose crops are photographs' own pixels. Past the edge the crop holds the render mirrored (the chin
        again, upside down, under the chin): `head` keeps the photo's neck and clothes there."""
        if not self.bank.rendered:
            return None
        from anonymizer.bank.stylegan import render_frame

        top_left, a, _, _ = render_frame(self.bank.landmarks(k))
        down = (a - top_left) / max(float(np.linalg.norm(a - top_left)), 1e-9)
        if maps is None:
            xs, ys = np.meshgrid(np.arange(size[0], dtype=np.float64), np.arange(size[1], dtype=np.float64))
        else:
            xs, ys = maps[0].astype(np.float64), maps[1].astype(np.float64)
        in_crop = sh.apply(cv2.invertAffineTransform(np.asarray(m, np.float64)), np.stack([xs, ys], -1))
        depth = ((in_crop - a) @ down).reshape(xs.shape)
        return np.clip(depth / RENDER_RAMP + 1.0, 0.0, 1.0).astype(np.float32)[..., None]

    @staticmethod
    def own_hair(lab: np.ndarray, matte: np.ndarray, placed: np.ndarray, cheeks: np.ndarray) -> np.ndarray | None:
        """A placed bank head's hair (`lab`: its Lab pixels): on its head (`matte`) outside its face's outline
        (`placed`: its 68 points), what looks like its hair above the forehead rather than its skin (`cheeks`: a
        mask), as hair.beside reads the person's; None where too little shows there or it looks like skin (a bald
        crown)."""
        head = (matte >= 0.5) & (sh.outline_mask(sh.extend(placed), matte.shape) == 0)
        above = head.copy()
        above[max(0, int(placed[17:27, 1].min())):] = False
        if above.sum() < 16:
            return None
        hair, skin = hr.centre(lab[above]), hr.centre(lab[cheeks])
        if hr.distance(hair[0], skin) <= hr.APART:
            return None
        return head & hr.like(lab, hair, skin)

    @staticmethod
    def tone_hair(lab: np.ndarray, matte: np.ndarray, placed: np.ndarray, skin: np.ndarray, to: hr.HairTone,
                  iod: float) -> None:
        """A placed bank head's hair (`lab`, in place) toned to the person's (`to`) outside its face's outline
        (`placed`: its 68 points), by how far each pixel is not skin: its colour read over the head (`matte`)
        there, above its chin. Inside the outline a highlight reads as not skin, and the face goes there anyway."""
        face = sh.outline_mask(sh.extend(placed), skin.shape).astype(np.float32) / 255.0
        hair = (matte >= 0.5) & (face == 0) & (skin < 0.2)
        hair[max(0, int(placed[8, 1])):] = False
        if hair.sum() >= 16:
            face = cv2.GaussianBlur(face, (0, 0), max(0.5, 0.1 * iod))
            hr.tone(lab, hair, (1.0 - skin) * (1.0 - face), to)

    @staticmethod
    def harmonize(face: np.ndarray, original: np.ndarray | hz.Target, inner: np.ndarray,
                  face_lab: np.ndarray | None = None, cheeks: np.ndarray | None = None) -> np.ndarray:
        """generated.harmonize (the photo's lightness and low-passed colour), with the lightness spread it
        imposes held within CONTRAST of the bank face's own: a beard, dark glasses or a shadow inflate the
        original's spread, and the bank face, stretched to match, turns harsh. The bank face's light is read
        from its skin alone (`cheeks`: where its skin is read; `inner` where that is missing or too small), as the
        photo's is (`skin_only`): read over its beard too, a bearded bank face came out with skin brighter than the
        photo's and its beard lifted to grey."""
        face_lab = hz.to_lab(face) if face_lab is None else face_lab
        light = BankFace.skin_lab(face_lab, cheeks if cheeks is not None and cheeks.sum() >= 16 else inner)
        return hz.harmonize(face, original, inner, face_lab, max_contrast=CONTRAST, light=light)

    @staticmethod
    def skin_colour(lab: np.ndarray, skin: np.ndarray, fallback: np.ndarray, iod: float) -> np.ndarray:
        """A placed bank head's own skin colour (Lab a, b) around each pixel: its colour weighted by `skin`
        (BankFace.skin) and low-passed over SKIN_REACH eye distances; `fallback`'s a, b where little skin is near.
        The head takes the photo's skin colour as a shift from this, not from its cheeks' median: flushed cheeks
        set against a paler forehead moved that forehead past the photo's skin, a grey-green band above the
        face's cut."""
        sigma = SKIN_REACH * iod
        weight = hz.low(np.ascontiguousarray(skin), sigma)[..., None]
        local = hz.low(np.ascontiguousarray(lab[..., 1:] * skin[..., None]), sigma) / np.maximum(weight, 1e-6)
        share = np.clip(weight / 0.25, 0.0, 1.0)  # under a quarter of skin around (hair, background): the cheeks'
        return share * local + (1.0 - share) * fallback[1:]

    @staticmethod
    def skin_only(original: np.ndarray, cheeks: np.ndarray) -> np.ndarray:
        """The photo's window with what is not skin (a beard, glasses, a shadow) painted in its cheeks'
        median skin colour: harmonize then takes skin light and skin colour from it, not a beard's grey."""
        lab = BankFace.skin_lab(hz.to_lab(original), cheeks)
        return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)

    @staticmethod
    def skin_lab(lab: np.ndarray, cheeks: np.ndarray) -> np.ndarray:
        """A copy of the Lab pixels `lab` with what is not skin painted in the median colour of `cheeks` (a mask)."""
        lab = lab.copy()
        lab[hr.skin_distance(lab, cheeks) > SKIN_FAR] = np.median(lab[cheeks], 0)
        return lab

    @staticmethod
    def skin(face_lab: np.ndarray, inner: np.ndarray, iod: float) -> np.ndarray:
        """How much each pixel of the warped bank face (`face_lab`: in Lab) looks like its inner face's skin (1) or
        not (0: hair, background, a hand at the edge of its outline), by its Lab distance from the inner face's
        mean in units of that region's spread; smoothed over a tenth of an eye distance."""
        d = hr.skin_distance(face_lab, inner)  # median and MAD: the eyes, brows and mouth inside are not skin
        s = np.clip((SKIN_FAR - d) / (SKIN_FAR - SKIN_NEAR), 0.0, 1.0).astype(np.float32)
        return cv2.GaussianBlur(s, (0, 0), max(0.5, 0.1 * iod))

    # ------------------------------------------------------------ image

    def anonymize(self, image: np.ndarray, faces: Sequence[Face], rngs: Sequence[np.random.Generator]) -> Anonymized:
        """Fallback faces first (so a neighbour's fallback region never blurs a replaced face), then each other
        face in order: its landmarks and identity reference from the input image, its pixels into the output
        so far. A face the guard still matches with every tried bank face gets the fallback last."""
        out = image.copy()
        masks: list[FaceMask | None] = [None] * len(faces)
        methods = [self.name] * len(faces)
        virtual: list[str | None] = [None] * len(faces)
        decided = [self.decide(image, face) for face in faces]

        def fall_back(i: int, reason: str) -> None:
            nonlocal out
            res = self.fallback.anonymize(out, [faces[i]], [rngs[i]])
            out, masks[i], methods[i] = res.image, res.masks[0], f"fallback:{self.fallback_name}:{reason}"

        for i, (reason, _, _) in enumerate(decided):
            if reason is not None:
                fall_back(i, reason)
        around: dict[int, FaceMask] = {}
        if self.surround == "blur":  # every replaced face's region is blurred before any bank face goes in
            for i, (reason, _, _) in enumerate(decided):
                if reason is None:
                    res = self.around.anonymize(out, [faces[i]], [rngs[i]])
                    out, around[i] = res.image, res.masks[0]
        rejected, unmatched, shown = [], [], set()
        for i, (reason, pts, window) in enumerate(decided):
            if reason is not None:
                continue
            x0, y0, x1, y1 = window
            refs = None
            if self.guard is not None:
                refs = self.guard.references(image, faces[i], FaceMask(x0, y0, np.ones((y1 - y0, x1 - x0), np.float32)))
            region = backdrop = None
            if self.surround == "bank":
                region = face_region(faces[i], image.shape[:2], self.around.expand, self.around.shape,
                                     self.around.feather)
            site = Site(self, image, pts, window, region)
            if region is not None:
                backdrop = site.backdrop(out)
            skin, allowed = self.readings(image, faces[i], refs, site) if faces[i].identity is None else (None, None)
            guarded = faces[i].identity is None and self.guard is not None
            order, extras = self.candidates(pts, rngs[i], faces[i].identity, skin, allowed,
                                            EXTRA_BLOCKS if region is not None else 1)
            if not order and not extras:
                unmatched.append(i)  # the bank holds nobody of the person's skin tone (among those allowed)
                continue
            # People the image already shows go after all the rest (module doc 2): no twins in one photo
            seen = {k for k in (*order, *extras) if faces[i].identity is None and self.bank.person(k) in shown}
            cover = guarded and region is not None
            ranked = itertools.chain(*(self.ranked([k for k in order if (k in seen) == last],
                                                   [k for k in extras if (k in seen) == last], site, cover, group)
                                       for last, group in ((False, 0), (True, 2))))
            done = self.choose(out, site, ranked, refs, backdrop)
            if done is None:
                rejected.append(i)
                continue
            out[y0:y1, x0:x1] = done[0]
            virtual[i] = self.bank.person(done[2])
            shown.add(virtual[i])
            if region is not None:
                around[i] = region
            masks[i] = merge(around[i], FaceMask(x0, y0, done[1])) if i in around else FaceMask(x0, y0, done[1])
        for i in rejected:
            fall_back(i, "reidentifiable")
        for i in unmatched:
            fall_back(i, "skin_tone")
        return Anonymized(out, masks, methods, virtual)
