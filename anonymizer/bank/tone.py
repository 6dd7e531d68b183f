"""Skin tone as a photo shows it: the individual typology angle (ITA°, Chardon et al. 1991) of a face's skin.

ITA = atan2(L* − 50, b*) in degrees, from CIE L*a*b*. Del Bino et al.'s bands: > 55 very light, 41–55 light,
28–41 intermediate, 10–28 tan, −30–10 brown, < −30 dark. The colour is the median over six small discs of
skin (both upper and lower cheeks, the nose, the chin) of each disc's median, so that two of them under
sunglasses or a beard do not move it.

`ita` reads the photo, not the person: a face in shadow reads darker than the same face in the sun, and
flash or a cool white balance makes dark skin read light. `read` also reads the eye whites (the lightest
low-chroma pixels inside the eyes): a StyleGAN bank keeps only people whose eyes show white (not
sunglasses, not a squint).

`SkinTone` reads the person instead of the photo: a linear probe on dlib's face descriptor (fitted on LFW
photos labelled light, medium or dark by looking at them; training/skin_tone.py), which a photo's light
and white balance barely move. Against faces labelled by eye it ranks brown- and dark-skinned people above
light-skinned ones far more often than ITA does (docs/benchmarks.md, "Skin tone"); a StyleGAN bank's build
spreads its people over its DARKNESS_BANDS.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from anonymizer.bank.descriptor_probe import DescriptorProbe, frontal_descriptors
from anonymizer.measure.apparent_age import age_group

DISCS = ((41, 31, 2), (46, 35, 14), (48, 3, 4), (54, 13, 12), (29, 30), (57, 8))  # each disc: its points' mean
DISC_RADIUS = 0.15  # eye distances
EYES = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47))
WHITE_CHROMA = 15.0  # eye pixels below this chroma (a*, b*) may be the white of the eye
WHITE_MIN = 0.4      # "whites" darker than this share of the skin are sunglasses, lids or lashes: not seen
# Under each eye (a band 0.12 to 0.28 eye distances below its centre, half an eye distance wide), skin darker than
# this share of the face's is a lens: sunglasses, whose glints can pass for eye whites (0.36 and 0.58 on two such
# renders, 0.73 on a third with small lenses; under-eye skin reads 0.68 or more on 99 % of a bank's people)
UNDER_EYE_MIN = 0.6
BANDS = ((55.0, "very light"), (41.0, "light"), (28.0, "intermediate"), (10.0, "tan"), (-30.0, "brown"),
         (-np.inf, "dark"))
DARKNESS_BANDS = ((1.25, "dark"), (0.5, "medium"), (-np.inf, "light"))  # SkinTone.darkness: brown counts as dark


def angle(lightness: float, b: float) -> float:
    return float(np.degrees(np.arctan2(lightness - 50.0, b)))


@dataclass(frozen=True)
class Reading:
    """A face's skin lightness L* and yellowness b*, its eye whites' lightness (None: not seen), and the skin
    under its eyes as a share of its skin's lightness."""

    lightness: float
    b: float
    eye_white: float | None
    under_eye: float

    @property
    def ita(self) -> float:
        return angle(self.lightness, self.b)


def read(image: np.ndarray, pts68: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> Reading | None:
    """The skin (and eye whites) of the face with 68 points `pts68` in an RGB uint8 image, or a window of it
    at `offset`; None where the discs are too small to read (an eye distance under 10 px)."""
    pts = np.asarray(pts68, np.float64) - offset
    iod = float(np.linalg.norm(pts[36:42].mean(0) - pts[42:48].mean(0)))
    radius = int(round(DISC_RADIUS * iod))
    if radius < 2:
        return None
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    medians = []
    for disc in DISCS:
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.circle(mask, tuple(int(v) for v in np.round(pts[list(disc)].mean(0))), radius, 1, -1)
        px = lab[mask > 0]
        if len(px):
            medians.append(np.median(px, 0))
    if len(medians) < 4:
        return None
    lightness, _, b = np.median(np.array(medians), 0)
    eyes = np.zeros(image.shape[:2], np.uint8)
    for eye in EYES:
        cv2.fillPoly(eyes, [np.round(pts[list(eye)]).astype(np.int32)], 1)
    px = lab[eyes > 0]
    white = px[np.hypot(px[:, 1], px[:, 2]) < WHITE_CHROMA, 0]
    seen = float(np.percentile(white, 80)) if len(white) >= 8 else 0.0
    below = np.zeros(image.shape[:2], np.uint8)
    for eye in EYES:
        centre = pts[list(eye)].mean(0)
        corners = [tuple(int(v) for v in np.round(centre + (dx * iod, dy * iod))) for dx, dy in ((-0.25, 0.12),
                                                                                                 (0.25, 0.28))]
        cv2.rectangle(below, *corners, 1, -1)
    under = float(np.median(lab[below > 0, 0])) / max(float(lightness), 1.0) if below.any() else 1.0
    open_eyes = seen >= WHITE_MIN * lightness and under >= UNDER_EYE_MIN
    return Reading(float(lightness), float(b), seen if open_eyes else None, under)


def ita(image: np.ndarray, pts68: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> float | None:
    """The face's ITA° as the photo shows it (see `read`); None where unreadable."""
    r = read(image, pts68, offset)
    return None if r is None else r.ita


def band(value: float, bands=BANDS) -> str:
    return next(name for edge, name in bands if value > edge)


def band_counts(values, bands=BANDS) -> dict[str, int]:
    """How many of `values` (ITA°, or darkness with DARKNESS_BANDS) fall in each band, in the bands' order."""
    counts = dict.fromkeys((name for _, name in bands), 0)
    for v in values:
        counts[band(v, bands)] += 1
    return counts


def shortfall(values, n: int, bands=BANDS) -> dict[str, int]:
    """How many people each band lacks for an equal share of `n` (`spread`'s share), in the bands' order;
    bands that lack none are left out."""
    share = -(-n // len(bands))
    return {name: share - c for name, c in band_counts(values, bands).items() if c < share}


def spread(tones: dict[int, float], n: int, rng: np.random.Generator,
           sexes: dict[int, str | None] | None = None, bands=BANDS, taken: Sequence[int] = ()) -> list[int]:
    """`n` people, the `taken` ones (keys of `tones`) and more of the keys of `tones` (person → ITA° with Del Bino's
    bands, or darkness with DARKNESS_BANDS), spread over the bands: the next person always from the band that has
    the fewest so far (the first in `bands` of those tied), so each gets an equal share of `n` and a band with too
    few people passes its remainder to the others; each band's people are drawn by `rng`, in an order that does not
    depend on who else is a candidate: a person left out is replaced by the next of their band, and the others stay
    (leaving one more person out for headwear changes one person of a bank, not a third). With `sexes` (person →
    "M", "F" or None: anonymizer.bank.apparent_sex), each band's draw takes men and women in turn, the sex the bank
    holds fewer of first where the band has as many of each, and people who read as neither last: a bank operator
    matching sex then has as many people for either, in each band. Sorted."""
    chosen = [int(p) for p in taken]
    draw = int(rng.integers(2 ** 63))
    pools: dict[str, list[int]] = {}
    for person in sorted(set(tones) - set(chosen), key=lambda p: np.random.default_rng([draw, p]).random()):
        pools.setdefault(band(tones[person], bands), []).append(int(person))
    sex = (lambda p: None) if sexes is None else sexes.get
    order = [name for _, name in bands]
    while len(chosen) < n and any(pools.values()):
        held = Counter(band(tones[p], bands) for p in chosen)
        name = min((name for name in order if pools.get(name)), key=lambda b: held[b])
        mine = [sex(p) for p in chosen if band(tones[p], bands) == name]
        everyone = [sex(p) for p in chosen]
        want = min(("M", "F"), key=lambda x: (mine.count(x), everyone.count(x)))
        people = pools[name]
        pick = next((p for p in people if sex(p) == want), None)
        if pick is None:
            pick = next((p for p in people if sex(p) is not None), people[0])
        people.remove(pick)
        chosen.append(pick)
    return sorted(chosen)


def by_descriptor(params: dict) -> bool:
    """Whether a `bank` operator with these params chooses bank people by the skin tone SkinTone reads (its
    `tone_reading: descriptor`, with a `tone_pool`)."""
    return params.get("tone_reading") == "descriptor" and params.get("tone_pool", 36) > 0


UNMATCHED = "-"  # a label's sex where the run does not match sex
MARKS = "".join(name[0] for _, name in DARKNESS_BANDS[::-1])  # a label's darkness band: "lmd", light to dark
SEX_WORDS = {"F": "woman", "M": "man", "f": "leaning woman", "m": "leaning man"}  # f, m: undecided, leaning
TONE_WORDS = {"l": "light skin", "m": "medium skin", "d": "dark skin"}
AGE_MARKS = "0123"  # a label's age group: its index in anonymizer.measure.apparent_age.AGE_GROUP_NAMES
AGE_WORDS = ("under 13", "aged 13-19", "aged 20-59", "60 and over")


def reads_as(sex: str | None, darkness: float | None, by_sex: bool, by_tone: bool,
             lean: str | None = None, age: float | None = None, by_age: bool = False) -> str | None:
    """What a keyed run matches a person's virtual identity by (anonymizer.pipeline.link): their apparent sex
    (M or F; where it matches skin tone too and reads them as neither, the sex they lean to in lower case, f or
    m, else UNMATCHED; UNMATCHED where the run does not match sex), then, where it matches skin tone, the
    initial of their darkness band (MARKS), then, where it matches age, their age group's digit (AGE_MARKS),
    e.g. "F", "Md", "fd", "-l", "Fd3". None where nothing is matched, or where sex alone is and reads as
    neither: a person's label is set once and kept (anonymizer.identity.Linker), and a virtual person chosen
    by sex alone waits for a decided reading."""
    label = None
    if by_tone:
        if darkness is None or not np.isfinite(darkness):
            return None
        sex = (sex or (lean.lower() if lean else UNMATCHED)) if by_sex else UNMATCHED
        label = sex + band(darkness, DARKNESS_BANDS)[0]
    elif by_sex:
        label = sex
    if not by_age or age is None or not np.isfinite(age) or (label is None and (by_sex or by_tone)):
        return label
    return (label or UNMATCHED) + AGE_MARKS[age_group(age)]


def split_age(label: str | None) -> tuple[str | None, str | None]:
    """A label (`reads_as`) as (its sex and tone, its age group's digit or None)."""
    if label and label[-1] in AGE_MARKS:
        return label[:-1], label[-1]
    return label, None


def in_words(label: str) -> str:
    """A label for the audit report: "woman, dark skin", "leaning man, light skin", "light skin",
    "woman, dark skin, 60 and over"."""
    label, age = split_age(label)
    sex, tone_mark = label[:1], label[1:2]  # as reads_as writes them
    return ", ".join(w for w in (SEX_WORDS.get(sex), TONE_WORDS.get(tone_mark),
                                 AGE_WORDS[AGE_MARKS.index(age)] if age else None) if w)


class SkinTone(DescriptorProbe):
    MODEL = "skin_tone"

    def darkness(self, descriptor: np.ndarray) -> float:
        """How dark the person's skin reads: about 0 light, 1 medium, 2 dark (a continuous score)."""
        return self.linear(descriptor)

    def of_people(self, bank) -> dict[str, float]:
        """Each bank person's darkness, from their most frontal face (frontal_descriptors, kept)."""
        return {person: self.darkness(d) for person, d in frontal_descriptors(bank, self).items()}
