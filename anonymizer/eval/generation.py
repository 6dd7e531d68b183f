"""Face-replacing operators (the face bank, the generator) against classical ones: identity removed, pose and
expression kept, still a face, plausibly real, background kept, and how fast.

Conventions (fixed so runs stay comparable):

* Data: held-out LFW identities (the generator's training split leaves them out: `anonymizer.eval.lfw.split_of`;
  no bank holds an LFW identity of that split), the first `images_per_identity` images of each, at most
  `limit`; the face nearest the centre, found by YuNet at scale 1. Optionally the photos folder: every face
  the policy's detectors find, scored when its shorter side is at least the policy's `min_reid_face_px`.
* Operators: the policy's region settings; the per-face RNG `face_rngs(seed, key, n)`; a JPEG round trip at
  the policy's quality (what a release holds). `generated` takes the policy's (or `--weights`) generator;
  `bank` the face bank at `--bank` (else the policy's own bank operator) with its identity guard on, and
  `bank-noguard` the same without it.
* Re-identification, same image (naive): the distance between the original face and the same face after
  anonymization, aligned on the original (the attacker's best crop), by the policy's encoder (the rate under
  0.6, dlib's own threshold, and under the policy's `same_person_distance`) and by each recognizer in
  RECOGNIZERS at its distance calibrated at FAR 1e-3 on LFW (`calibrated_distances` of its class).
* Re-identification, re-aligned: dlib's network aligned by its 68-point predictor found on each image itself
  (the attacker aligns what it sees). The identity guards select draws by the first measure; this one
  checks that they are not just past the line for that one crop.
* Re-identification across images (LFW only): the naive attacker holds another original photo of the person;
  closed-set rank-1 (`across_images`), with chance (1 / gallery) and the same attack on the originals
  (`rank1_clean`, the attacker's ceiling). And how often two photos of one person show the same virtual
  person (`same_virtual_person`, the bank operator): two anonymized photos then match each other. On the
  photos, how many faces show the same virtual person as another face of their photo (`twins_in_image`).
* Pose: `measure.pose.PoseMeter` (YuNet's landmarks re-found in windows around the face, their mean solved
  by solvePnP) on the original and the anonymized image; median and p95 of |Δyaw|, |Δpitch|, |Δroll| over
  faces found again, the operator's fallbacks left out (the angles read on a blurred face are noise;
  `replaced` counts them). `pose_shifted` per set is the same change from each original to itself moved by
  one pixel: the meter's noise floor.
  Five landmarks read yaw coarsely (YuNet's and dlib's readings of one face differ by p95 11°), so |Δyaw| is
  also read from dlib's 68 points' five (`yaw_68`, the same solve): two readers, each on both sides.
* Expression: the mouth opening (inner-lip gap over eye distance, `bank.shape.features`) from dlib's 68 points
  on the original and on the output (fitted in the face YuNet finds again there); median and p95 of the
  absolute difference.
* Age: the apparent age in years (`measure.apparent_age`, dlib-models' age predictor) on the original and on
  the output in the same box; median and p95 of the absolute difference over replaced faces, and the share
  of them whose age group (AGE_GROUPS: under 13, 13-19, 20-59, 60 and over) stays the same, per group of the
  original (`age_groups_kept`). The reader errs by years on one face, so the groups are coarse on purpose.
* Detectability: the share of anonymized faces found again (IoU >= 0.3 with the original box) by YuNet, by
  SCRFD (a network no operator here uses) and by dlib HOG, each in a window around the face scaled so the
  face is ~112 px (dlib HOG needs ~80 px).
* Realism proxies (each can be fooled; see their functions): `sharpness_ratio`, `seam_ratio` and
  `frechet_distance` (MobileFaceNet embeddings of the originals against those of the anonymized faces;
  `frechet_real_halves` per set is the same distance between two halves of the originals: its noise floor).
* Diversity: dlib distance between the outputs of two seeds for the same face (a new identity per seed
  means a distance above 0.6; blur gives 0: it is a function of the face).
* Colour: CIE76 ΔE between the mean Lab colour of the face box's central half before and after (median
  over faces). A grey or wrongly exposed face in a colour photo is what first gives a generated face away;
  a classical operator that keeps the face's average (blur) scores low here too, so it is a check, not
  a measure of realism.
* Background: the share of images whose pixels outside the operator's masks are byte-identical before the
  JPEG round trip.
* Speed: faces/s of each operator's `anonymize` call after one warm-up call, by the wall clock and per core
  (faces per second of the process's CPU time, which sums its threads: comparable on a loaded machine),
  and images/s. Every face the detectors found counts, the fallbacks' too: on the photos most are too small
  to replace and take the fast fallback, so their faces/s is not the replacing speed; LFW's one face an
  image is.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from anonymizer.anonymize import face_rngs
from anonymizer.regions import FaceMask, union_mask
from anonymizer.detect import build_detector
from anonymizer.eval.reid import _jpeg, _read_rgb, central_face
from anonymizer.faces import Face
from anonymizer.measure.apparent_age import AGE_GROUP_NAMES, AgeReader, age_group
from anonymizer.measure.pose import PoseMeter, find_again
from anonymizer.policy import Policy, load_policy

DEFAULT_OPERATORS: tuple[tuple[str, float], ...] = (
    ("generated", 1.0), ("blur", 0.15), ("blur", 0.35), ("pixelate", 0.2), ("noise", 0.8), ("mask", 1.0))
SAME_PERSON = 0.6  # dlib's published threshold: the definition of a naive re-identification
FAR = 1e-3         # the false-accept rate whose calibrated distance decides a re-identification per recognizer
RECOGNIZERS = ("dlib_resnet", "mobilefacenet")
BANK_GUARD = {"bank": True, "bank-noguard": False}  # operator names for the face bank, with and without guard
STOCHASTIC = ("generated", "bank", "bank-noguard")  # a new face per seed: three seeds in the sample grid
INNER = np.arange(17, 68)  # dlib's brows, eyes, nose and mouth: the inner face, whatever replaced its outline


def label(name: str, strength: float) -> str:
    return name if name in STOCHASTIC else f"{name} {strength:g}"


@dataclass
class Sample:
    key: str
    rgb: np.ndarray
    faces: list[Face]    # the faces to anonymize
    scored: list[int]    # indices of the faces that are measured


def lfw_samples(lfw_images: Path, policy: Policy, limit: int, images_per_identity: int = 2) -> list[Sample]:
    from anonymizer.eval.lfw import list_images

    detector = build_detector("yunet", {"scales": [1.0]}, policy.model_dir)
    per_id: dict[str, int] = {}
    out: list[Sample] = []
    for identity, path in list_images(lfw_images, "eval"):
        if per_id.get(identity, 0) >= images_per_identity:
            continue
        rgb = _read_rgb(path)
        face = central_face(detector.detect(rgb), rgb.shape[:2])
        if face is None:
            continue
        per_id[identity] = per_id.get(identity, 0) + 1
        out.append(Sample(f"lfw/{path.parent.name}/{path.name}", rgb, [face], [0]))
        if len(out) >= limit:
            break
    return out


def photo_samples(photos: Path, policy: Policy) -> list[Sample]:
    from anonymizer.detect import build_ensemble

    detector = build_ensemble(policy.detection, policy.model_dir)
    out = []
    for path in sorted(p for p in photos.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}):
        rgb = _read_rgb(path)
        faces = detector.detect(rgb)
        scored = [i for i, f in enumerate(faces) if f.size >= policy.measurement.min_reid_face_px]
        out.append(Sample(f"photos/{path.name}", rgb, faces, scored))
    return out


# ---------------------------------------------------------------- per-face measures

def colour_shift(before: np.ndarray, after: np.ndarray, face: Face) -> float:
    h, w = before.shape[:2]
    x0, y0 = int(max(0, face.x + face.w / 4)), int(max(0, face.y + face.h / 4))
    x1, y1 = int(min(w, face.x + 3 * face.w / 4)) + 1, int(min(h, face.y + 3 * face.h / 4)) + 1
    lab = [cv2.cvtColor(img[y0:y1, x0:x1].astype(np.float32) / 255, cv2.COLOR_RGB2Lab) for img in (before, after)]
    return float(np.linalg.norm(lab[0].reshape(-1, 3).mean(0) - lab[1].reshape(-1, 3).mean(0)))


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)


def inner_face(face: Face, pts68: np.ndarray | None, shape: tuple[int, int]) -> FaceMask | None:
    """The inner face (brows to mouth: the hull of dlib's points 17-67) of the original, as a 0/1 mask over
    its window; the central half of the box when no 68 points were fitted. None when under 16 pixels."""
    h, w = shape
    if pts68 is not None:
        p = np.asarray(pts68, np.float64)[INNER]
        x0, y0 = np.maximum(np.floor(p.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(p.max(0)).astype(int) + 2, (w, h))
        if x1 - x0 < 4 or y1 - y0 < 4:
            return None
        from anonymizer.bank.shape import hull_mask

        m = hull_mask(p, (int(y1 - y0), int(x1 - x0)), (float(x0), float(y0))) > 0
    else:
        x0, y0 = int(max(0, face.x + face.w / 4)), int(max(0, face.y + face.h / 4))
        x1, y1 = int(min(w, face.x + 3 * face.w / 4)) + 1, int(min(h, face.y + 3 * face.h / 4)) + 1
        m = np.ones((max(0, y1 - y0), max(0, x1 - x0)), bool)
    if m.sum() < 16:
        return None
    return FaceMask(int(x0), int(y0), m.astype(np.float32))


def sharpness_ratio(before: np.ndarray, after: np.ndarray, region: FaceMask | None) -> float | None:
    """Fine detail inside the inner face: the variance of the Laplacian over `region` in `after`, divided by
    the same on `before`, the real face at the same size (1: as detailed as the photo; blur and pixelate
    fall far below, a replaced face that is soft (upsampled, averaged) below too).

    How it can fail: noise, JPEG blocking and hard pixel-block edges raise it without any realism (noise and
    pixelate can score near or above 1), and a replaced face sharper than a soft photo scores above 1,
    which is a giveaway of its own: read it as "near 1", not "higher is better"."""
    if region is None:
        return None
    (ys, xs), m = region.window, region.alpha > 0
    pad = 2
    y0, x0 = max(0, ys.start - pad), max(0, xs.start - pad)
    y1, x1 = min(before.shape[0], ys.stop + pad), min(before.shape[1], xs.stop + pad)
    sel = np.zeros((y1 - y0, x1 - x0), bool)
    sel[ys.start - y0:ys.start - y0 + m.shape[0], xs.start - x0:xs.start - x0 + m.shape[1]] = m
    v = [float(cv2.Laplacian(_gray(img[y0:y1, x0:x1]), cv2.CV_32F, ksize=3)[sel].var()) for img in (before, after)]
    return v[1] / v[0] if v[0] > 1e-6 else None


def seam_ratio(before: np.ndarray, after: np.ndarray, mask: FaceMask | None) -> float | None:
    """How visible the edge of the replaced region is: the mean gradient magnitude (Sobel, grey) on a thin
    band along the operator's alpha at 0.5 (2-3 px) in `after`, divided by the same band in `before`.
    1: the edge carries what the photo had there; above: a seam (a black mask's edge is far above); below:
    the edge is smeared (a blur's feather).

    How it can fail: where the band runs along a real edge of the photo (jaw line, hairline, a collar) the
    original's gradient is high, so a seam there hides; a band in flat skin makes any texture look like a
    seam; JPEG ringing adds a little to both sides."""
    if mask is None:
        return None
    h, w = before.shape[:2]
    x0, y0 = max(0, mask.x0), max(0, mask.y0)
    x1, y1 = min(w, mask.x0 + mask.alpha.shape[1]), min(h, mask.y0 + mask.alpha.shape[0])
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    a = (mask.alpha[y0 - mask.y0:y1 - mask.y0, x0 - mask.x0:x1 - mask.x0] >= 0.5).astype(np.uint8)
    k = np.ones((3, 3), np.uint8)
    band = cv2.dilate(a, k) != cv2.erode(a, k)
    band[[0, -1], :], band[:, [0, -1]] = False, False  # the window's own edge is no seam
    if band.sum() < 8:
        return None

    def grad(img: np.ndarray) -> float:
        g = _gray(img[y0:y1, x0:x1])
        return float(np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))[band].mean())

    g0 = grad(before)
    return grad(after) / g0 if g0 > 1e-6 else None


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """Fréchet distance between two sets of embeddings (rows), each taken as a Gaussian with a *diagonal*
    covariance: |μa − μb|² + Σ (σa² + σb² − 2 σa σb). With a few hundred faces in 128 dimensions a full
    covariance is singular and its square root noise, so the cross-dimension terms are dropped. In a
    recognizer's space, faces that read as faces of people sit near the originals' cloud; blurred or masked
    faces collapse to one corner of it.

    How it can fail: the recognizer encodes identity, not realism, so a realistic set of few distinct
    people (a small bank) also scores far (its spread is too narrow), and an unrealistic set that keeps the
    originals' identity cues scores near; the value shrinks with more faces (compare sets of one size, and
    against `frechet_real_halves`)."""
    if len(a) < 2 or len(b) < 2:
        return None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.mean(0) - b.mean(0)
    sa, sb = a.std(0), b.std(0)
    return float(d @ d + np.sum(sa ** 2 + sb ** 2 - 2 * sa * sb))


def landmarks68(landmarker, image: np.ndarray, face: Face | None) -> np.ndarray | None:
    """dlib's 68 points fitted in `face` (`bank.shape.Landmarker`); None without a face or a finite fit."""
    if face is None:
        return None
    try:
        pts = landmarker(image, face)
    except ValueError:
        return None
    return pts if np.all(np.isfinite(pts)) else None


def feature68(pts68: np.ndarray | None, name: str) -> float | None:
    """One of `bank.shape.features` (`mouth_open`: the inner-lip gap over the eye distance; `yaw`) from dlib's
    68 points, or None without a fit. How it can fail: dlib's predictor returns a mean-shaped mouth on a face
    it cannot read (a blurred one), so a mouth "kept" there is weak evidence; only faces YuNet finds again on
    the output are fitted, which leaves most of those out."""
    from anonymizer.bank import shape as sh

    if pts68 is None:
        return None
    try:
        return float(getattr(sh.features(pts68), name))
    except ValueError:
        return None


def rank1_across_images(rows: list[dict], recognizer: str, threshold: float) -> dict | None:
    """The naive attacker across images, on LFW rows (keys lfw/<identity>/<file>): for each identity with at
    least two faces, each face in turn is the probe (anonymized) and another of that person's originals
    stands in the gallery, beside the first original of every other identity (single-image identities are
    distractors). Rank-1 over all probes, chance 1 / gallery, and `rank1_clean`: the same probes unanonymized
    (the attacker's ceiling). `p_chance`: how likely that many hits are by guessing."""
    from anonymizer.eval.attackers import p_chance
    from anonymizer.eval.reid import identification

    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["key"].split("/")[1], []).append(r)
    people = list(by_id.values())
    rounds = max((len(v) for v in people), default=0)
    if len(people) < 2 or rounds < 2:
        return None
    hits = clean = probes = 0
    for k in range(rounds):
        gallery = np.stack([v[(k + 1) % len(v)]["_emb"][recognizer][0] for v in people])
        probe_rows = [(i, v[k]) for i, v in enumerate(people) if len(v) >= 2 and k < len(v)]
        if not probe_rows:
            continue
        ids = np.array([i for i, _ in probe_rows])
        for which in (1, 0):
            emb = np.stack([r["_emb"][recognizer][which] for _, r in probe_rows])
            out, _, _ = identification(gallery, np.arange(len(people)), emb, ids, FAR, threshold)
            n = int(round(out["rank1"] * len(probe_rows)))
            if which:
                hits += n
            else:
                clean += n
        probes += len(probe_rows)
    return {"rank1": round(hits / probes, 4), "rank1_clean": round(clean / probes, 4),
            "chance": round(1 / len(people), 4), "gallery": len(people), "probes": probes, "hits": hits,
            "p_chance": round(p_chance(hits, probes, len(people)), 4)}


def same_virtual_person(rows: list[dict]) -> dict | None:
    """How often two photos of one LFW person show the same virtual person (the bank operator; rows keyed
    lfw/<identity>/<file>, every pair of a person's photos counted): then the two anonymized photos match
    each other however well each hides the person, which is how an attacker links them. None where no face
    shows a virtual person."""
    by_id: dict[str, list[str]] = {}
    for r in rows:
        if r.get("virtual") is not None:
            by_id.setdefault(r["key"].split("/")[1], []).append(r["virtual"])
    pairs = [pair for v in by_id.values() for pair in itertools.combinations(v, 2)]
    if not pairs:
        return None
    same = sum(a == b for a, b in pairs)
    return {"pairs": len(pairs), "same": same, "rate": round(same / len(pairs), 4)}


def twins_in_image(rows: list[dict]) -> dict | None:
    """Faces that show the same virtual person as another measured face of their image (the bank operator):
    a group photo with two faces of one bank person shows twins, which gives the replacement away. None where
    no face shows a virtual person."""
    by_image: dict[str, list[str]] = {}
    for r in rows:
        if r.get("virtual") is not None:
            by_image.setdefault(r["key"], []).append(r["virtual"])
    if not by_image:
        return None
    counts = [Counter(v) for v in by_image.values()]
    return {"faces": sum(len(v) for v in by_image.values()), "images": len(by_image),
            "twins": sum(n for c in counts for n in c.values() if n > 1),
            "images_with_twins": sum(any(n > 1 for n in c.values()) for c in counts)}


def _stats(values: Sequence[float | None], digits: int = 2) -> dict:
    v = np.abs(np.asarray([x for x in values if x is not None], np.float64))
    if not v.size:
        return {"n": 0, "median": None, "p95": None}
    return {"n": int(v.size), "median": round(float(np.median(v)), digits),
            "p95": round(float(np.percentile(v, 95)), digits)}


def age_groups_kept(rows: list[dict]) -> dict:
    """Per age group of the original: faces, and how many read in the same group after."""
    out: dict[str, list[int]] = {}
    for r in rows:
        before = age_group(r["age"])
        cell = out.setdefault(AGE_GROUP_NAMES[before], [0, 0])
        cell[0] += 1
        cell[1] += age_group(r["age"] + r["d_age"]) == before
    return {"faces": len(rows), "same_group": sum(c[1] for c in out.values()),
            "by_group": {k: {"faces": out[k][0], "same_group": out[k][1]} for k in AGE_GROUP_NAMES if k in out}}


def _median(values: Sequence[float | None], digits: int = 3) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.median(v)), digits) if v else None


# ---------------------------------------------------------------- the evaluator

@dataclass
class _Original:
    """What is measured once per scored face of a sample, whatever the operator."""

    align: list
    embeddings: np.ndarray                                  # the policy's encoder
    realigned: np.ndarray                                   # dlib, aligned by its 68 points
    recognizers: dict[str, tuple[list, np.ndarray]] = field(default_factory=dict)  # (alignment, embeddings)
    pts68: list = field(default_factory=list)               # dlib's 68 points (None where the fit failed)
    mouth: list = field(default_factory=list)
    inner: list = field(default_factory=list)               # inner_face regions
    ages: np.ndarray | None = None                          # apparent age in years (measure.apparent_age)
    ages_mirrored: np.ndarray | None = None                 # the same read on the mirrored photo: its noise
    pose_shifted: list = field(default_factory=list)        # PoseChange to the photo shifted by a pixel: its noise


class Evaluator:
    def __init__(self, policy: Policy, weights: str | None = None, bank: str | Path | None = None) -> None:
        from anonymizer.bank.shape import Landmarker
        from anonymizer.measure.encoder import build_encoder

        md = policy.model_dir
        self.policy = policy
        self.encoder = build_encoder(policy.measurement.encoder.name, policy.measurement.encoder.params, md)
        self.realigned = build_encoder("dlib_resnet", {"landmarks": 68}, md)
        enc = policy.measurement.encoder
        self.recognizers = {name: self.encoder if enc.name == name and not enc.params
                            else build_encoder(name, {}, md) for name in RECOGNIZERS}
        self.thresholds = {name: float(type(e).calibrated_distances[FAR]) for name, e in self.recognizers.items()}
        self.yunet = build_detector("yunet", {"scales": [1.0], "score_threshold": 0.5}, md)
        self.scrfd = build_detector("scrfd", {"scales": [1.0], "score_threshold": 0.5}, md)
        self.hog = build_detector("dlib_hog", {"upsample": 0}, md)
        self.pose = PoseMeter(self.yunet)
        self.landmarker = Landmarker(md)
        self.ages = AgeReader(md)
        self.weights = weights
        self.bank = None if bank is None else str(bank)
        self._originals: dict[str, _Original] = {}
        self._operators: dict[tuple[str, float], object] = {}

    def operator(self, name: str, strength: float):
        """The operator by name and strength, built once: the measures and both grids use one."""
        if (name, strength) not in self._operators:
            self._operators[name, strength] = self._build(name, strength)
        return self._operators[name, strength]

    def _build(self, name: str, strength: float):
        from anonymizer.components import build_operator

        if name in BANK_GUARD:
            own = self.policy.anonymization.operator.name == "bank"
            if self.bank is None and not own:
                raise ValueError(f"operator {name!r} needs a face bank: pass --bank DIR (a bank directory, e.g. "
                                 "from `anonymizer bank build stylegan --out DIR --n 32`) or a policy whose "
                                 "operator is bank")
            params = {"bank": self.bank} if self.bank else {}
            guard = self.policy.anonymization.operator.params.get("identity_guard", True) if own else True
            return build_operator(self.policy, "bank", None, **params,
                                  identity_guard=guard if BANK_GUARD[name] else False)
        weights = {"weights": self.weights} if name == "generated" and self.weights else {}
        return build_operator(self.policy, name, strength, **weights)

    def original(self, s: Sample) -> _Original:
        """The original side of every measure for the sample's scored faces (cached: the same per operator)."""
        if s.key in self._originals:
            return self._originals[s.key]
        scored = [s.faces[i] for i in s.scored]
        al = self.encoder.align(s.rgb, scored)
        w = s.rgb.shape[1]
        mirrored = [Face(w - f.x - f.w, f.y, f.w, f.h, f.score, f.detector) for f in scored]
        o = _Original(al, self.encoder.embed(s.rgb, al),
                      self.realigned.embed(s.rgb, self.realigned.align(s.rgb, scored)),
                      ages=self.ages.read(s.rgb, scored),
                      ages_mirrored=self.ages.read(np.ascontiguousarray(s.rgb[:, ::-1]), mirrored),
                      pose_shifted=self.pose.measure(s.rgb, _jpeg(shifted(s.rgb), self.policy.output.jpeg_quality),
                                                     scored, 0))
        for name, enc in self.recognizers.items():
            a = al if enc is self.encoder else enc.align(s.rgb, scored)
            o.recognizers[name] = (a, o.embeddings if enc is self.encoder else enc.embed(s.rgb, a))
        for f in scored:
            pts = landmarks68(self.landmarker, s.rgb, f)
            o.pts68.append(pts)
            o.mouth.append(feature68(pts, "mouth_open"))
            o.inner.append(inner_face(f, pts, s.rgb.shape[:2]))
        self._originals[s.key] = o
        return o

    def run_operator(self, op, samples: Sequence[Sample], progress=None) -> tuple[dict, list[dict]]:
        """Per-face rows; keys starting with "_" (embeddings) are for the summary, not the per-face JSON."""
        q = self.policy.output.jpeg_quality
        rows: list[dict] = []
        seconds, cpu, faces_done, bg_identical = 0.0, 0.0, 0, 0
        if samples:  # a warm-up call: lazy model loads and first-call allocations are not the operator's speed
            s = samples[0]
            op.anonymize(s.rgb, s.faces, face_rngs(self.policy.seed, s.key, len(s.faces)))
        for s in samples:
            t, c = time.perf_counter(), time.process_time()
            res = op.anonymize(s.rgb, s.faces, face_rngs(self.policy.seed, s.key, len(s.faces)))
            seconds += time.perf_counter() - t
            cpu += time.process_time() - c
            faces_done += len(s.faces)
            other = op.anonymize(s.rgb, s.faces, face_rngs(self.policy.seed + 1, s.key, len(s.faces)))
            mask = union_mask(res.masks, s.rgb.shape[:2])
            bg_identical += bool(np.array_equal(res.image[mask == 0], s.rgb[mask == 0]))
            out, out2 = _jpeg(res.image, q), _jpeg(other.image, q)
            scored = [s.faces[i] for i in s.scored]
            if not scored:
                if progress:
                    progress.update(1)
                continue
            o = self.original(s)
            e1, e2 = (self.encoder.embed(img, o.align) for img in (out, out2))
            r1 = self.realigned.embed(out, self.realigned.align(out, scored))
            rec = {name: enc.embed(out, o.recognizers[name][0]) for name, enc in self.recognizers.items()}
            changes = self.pose.measure(s.rgb, out, scored, 0)
            ages = self.ages.read(out, scored)
            for j, (i, f) in enumerate(zip(s.scored, scored)):
                ch = changes[j]
                b, a = ch.before, ch.after
                again = find_again(self.yunet, out, f, need_landmarks=True) if a is not None else None
                pts1 = landmarks68(self.landmarker, out, again)
                m1 = feature68(pts1, "mouth_open")
                y68 = [feature68(pts1, "yaw"), feature68(o.pts68[j], "yaw")]
                dist = {name: float(np.linalg.norm(o.recognizers[name][1][j] - rec[name][j])) for name in rec}
                rows.append({
                    "key": s.key, "face": i, "size": round(f.size, 1),
                    "method": res.methods[i] if res.methods else op.name,
                    "virtual": res.virtual[i] if res.virtual else None,
                    "reid_distance": float(np.linalg.norm(o.embeddings[j] - e1[j])),
                    "reid_distance_realigned": float(np.linalg.norm(o.realigned[j] - r1[j])),
                    **{f"reid_distance_{name}": d for name, d in dist.items()},
                    "seed_distance": float(np.linalg.norm(e1[j] - e2[j])),
                    "colour_delta_e": round(colour_shift(s.rgb, out, f), 2),
                    "yunet_detects": a is not None,
                    "scrfd_detects": find_again(self.scrfd, out, f) is not None,
                    "dlib_detects": find_again(self.hog, out, f) is not None,
                    **_pose_deltas(ch),
                    "d_yaw_68": None if None in y68 else y68[0] - y68[1],
                    "d_mouth_open": None if m1 is None or o.mouth[j] is None else m1 - o.mouth[j],
                    "age": round(float(o.ages[j]), 1), "d_age": round(float(ages[j] - o.ages[j]), 1),
                    "d_age_mirrored": round(float(o.ages_mirrored[j] - o.ages[j]), 1),
                    **_pose_deltas(o.pose_shifted[j], "_shifted"),
                    "sharpness_ratio": sharpness_ratio(s.rgb, out, o.inner[j]),
                    "seam_ratio": seam_ratio(s.rgb, out, res.masks[i]),
                    "_emb": {name: (o.recognizers[name][1][j], rec[name][j]) for name in rec},
                })
            if progress:
                progress.update(1)
        return {"seconds": seconds, "cpu_seconds": cpu, "faces": faces_done, "images": len(samples),
                "background_identical": bg_identical / max(1, len(samples))}, rows

    def summarise(self, rows: list[dict], timing: dict, name: str = "", set_name: str = "") -> dict:
        n = len(rows)
        calibrated = self.policy.thresholds.same_person_distance
        methods: dict[str, int] = {}
        for r in rows:
            methods[r["method"]] = methods.get(r["method"], 0) + 1
        frac = (lambda pred: round(sum(1 for r in rows if pred(r)) / n, 4)) if n else (lambda pred: None)
        reid = {rec: frac(lambda r, rec=rec, t=t: r[f"reid_distance_{rec}"] < t) for rec, t in self.thresholds.items()}
        across = {rec: rank1_across_images(rows, rec, t) for rec, t in self.thresholds.items()} \
            if set_name == "lfw_heldout" else {}
        kept = [r for r in rows if not r["method"].startswith("fallback:")]
        fd = frechet_distance(*(np.stack([r["_emb"]["mobilefacenet"][k] for r in rows]) for k in (0, 1))) \
            if n >= 2 else None
        return {
            "faces_scored": n,
            "reid_rate": frac(lambda r: r["reid_distance"] < SAME_PERSON),
            "reid_rate_calibrated": frac(lambda r: r["reid_distance"] < calibrated),
            "reid_rate_realigned": frac(lambda r: r["reid_distance_realigned"] < SAME_PERSON),
            "reid_distance_median": round(float(np.median([r["reid_distance"] for r in rows])), 3) if n else None,
            "reid_far1e-3": {"thresholds": dict(self.thresholds), **reid},
            "across_images": across,
            "same_virtual_person": same_virtual_person(rows) if set_name == "lfw_heldout" else None,
            "twins_in_image": twins_in_image(rows) if set_name == "photos" else None,
            "yaw": _stats([r["d_yaw"] for r in kept]), "pitch": _stats([r["d_pitch"] for r in kept]),
            "roll": _stats([r["d_roll"] for r in kept]), "yaw_68": _stats([r["d_yaw_68"] for r in kept]),
            "mouth_open_error": _stats([r["d_mouth_open"] for r in kept], 3),
            "age_error": _stats([r["d_age"] for r in kept], 1),
            "age_groups_kept": age_groups_kept(kept),
            "detectable_yunet": frac(lambda r: r["yunet_detects"]),
            "detectable_scrfd": frac(lambda r: r["scrfd_detects"]),
            "detectable_dlib": frac(lambda r: r["dlib_detects"]),
            "sharpness_ratio_median": _median([r["sharpness_ratio"] for r in rows]),
            "seam_ratio_median": _median([r["seam_ratio"] for r in rows]),
            "frechet_mobilefacenet": None if fd is None else round(fd, 4),
            "diversity_median": round(float(np.median([r["seed_distance"] for r in rows])), 3) if n else None,
            "diversity_new_identity": frac(lambda r: r["seed_distance"] >= SAME_PERSON),
            "colour_delta_e_median": round(float(np.median([r["colour_delta_e"] for r in rows])), 2) if n else None,
            "background_identical": round(timing["background_identical"], 4),
            "replaced": frac(lambda r: r["method"] == name) if name else None,
            "faces_per_s": round(timing["faces"] / timing["seconds"], 1) if timing["seconds"] else None,
            "faces_per_s_per_core":
                round(timing["faces"] / timing["cpu_seconds"], 1) if timing["cpu_seconds"] else None,
            "images_per_s": round(timing["images"] / timing["seconds"], 2) if timing["seconds"] else None,
            "methods": methods,
        }


def shifted(rgb: np.ndarray) -> np.ndarray:
    """The image moved one pixel right and down (edge pixels repeated): the same photo, resampled anew in
    every window a measure reads it in."""
    return np.ascontiguousarray(np.pad(rgb, ((1, 0), (1, 0), (0, 0)), mode="edge")[:-1, :-1])


def _pose_deltas(change, suffix: str = "") -> dict:
    b, a = change.before, change.after
    return {f"d_{k}{suffix}": None if a is None or b is None else getattr(a, k) - getattr(b, k)
            for k in ("yaw", "pitch", "roll")}


def reference(rows: list[dict]) -> dict:
    """The originals against themselves: the Fréchet distance between two halves of a set's original faces
    (alternate faces), the floor an anonymized set of half as many faces could reach; the age reader's
    difference between each original and its mirror image, the floor of the age error; and the pose read on
    each original and on it shifted by one pixel (and JPEG-compressed as a release is), the floor of the pose
    change."""
    emb = np.stack([r["_emb"]["mobilefacenet"][0] for r in rows]) if len(rows) >= 4 else None
    fd = None if emb is None else frechet_distance(emb[0::2], emb[1::2])
    return {"faces": len(rows), "frechet_real_halves": None if fd is None else round(fd, 4),
            "age_error_mirrored": _stats([r["d_age_mirrored"] for r in rows], 1),
            "pose_shifted": {k: _stats([r[f"d_{k}_shifted"] for r in rows]) for k in ("yaw", "pitch", "roll")}}


def tile(image: np.ndarray, f: Face, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """(a cell × cell crop of `image` around face f, 1.8 times its size; the affine map that made it)."""
    side = max(f.w, f.h) * 1.8
    cx, cy = f.x + f.w / 2, f.y + f.h / 2
    m = np.array([[cell / side, 0, cell / 2 - cx * cell / side], [0, cell / side, cell / 2 - cy * cell / side]])
    return cv2.warpAffine(image, m, (cell, cell), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT), m


def sample_grid(ev: Evaluator, samples: Sequence[Sample], operators: Sequence[tuple[str, float]], path: Path,
                n: int = 8, cell: int = 128) -> None:
    """Anonymized faces only (never the originals): rows are faces, columns three seeds of each face-replacing
    operator and the classical operators; the original's landmarks are drawn small, so pose can be compared
    by eye."""
    cols = []
    for name, strength in operators:
        op = ev.operator(name, strength)
        seeds = (0, 1, 2) if name in ("generated", "bank") else (0,)
        text = label(name, strength)
        cols += [(f"{text} seed {k}" if len(seeds) > 1 else text, op, k) for k in seeds]
    rows = []
    for s in samples[:n]:
        f = s.faces[s.scored[0]]
        tiles = []
        for _, op, k in cols:
            res = op.anonymize(s.rgb, s.faces, face_rngs(ev.policy.seed + k, s.key, len(s.faces)))
            t, m = tile(res.image, f, cell)
            if f.landmarks is not None:
                for x, y in np.asarray(f.landmarks) @ m[:, :2].T + m[:, 2]:
                    cv2.circle(t, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
            tiles.append(t)
        rows.append(np.concatenate(tiles, 1))
    header = np.full((18, cell * len(cols), 3), 255, np.uint8)
    for j, (text, _, _) in enumerate(cols):
        cv2.putText(header, text, (j * cell + 3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    grid = np.concatenate([header] + rows, 0)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def face_grid(ev: Evaluator, samples: Sequence[Sample], name: str, strength: float, path: Path, n: int = 40,
              per_row: int = 8, cell: int = 128) -> None:
    """Up to `n` measured faces of the photos that one face-replacing operator replaced (the policy's seed),
    taken from each photo in turn so that no one group photo fills it, `per_row` a row: the grid to judge
    whether a person sees photographs. Anonymized faces only."""
    op = ev.operator(name, strength)
    per_image = []
    for s in samples:
        res = op.anonymize(s.rgb, s.faces, face_rngs(ev.policy.seed, s.key, len(s.faces)))
        per_image.append([tile(res.image, s.faces[i], cell)[0] for i in s.scored if res.methods[i] == op.name])
    tiles = [t for turn in itertools.zip_longest(*per_image) for t in turn if t is not None][:n]
    if not tiles:
        return
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % per_row)
    rows = [np.concatenate(tiles[j:j + per_row], 1) for j in range(0, len(tiles), per_row)]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))


def evaluate(policy: Policy, lfw_images: Path | None, photos: Path | None, out: Path, limit: int = 300,
             operators: Sequence[tuple[str, float]] = DEFAULT_OPERATORS, weights: str | None = None,
             bank: str | Path | None = None, log=print) -> dict:
    from tqdm import tqdm

    ev = Evaluator(policy, weights, bank)
    sets: dict[str, list[Sample]] = {}
    if lfw_images:
        sets["lfw_heldout"] = lfw_samples(lfw_images, policy, limit)
    if photos:
        sets["photos"] = photo_samples(photos, policy)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"policy": policy.name, "weights": None, "bank": None, "operators": {},
                    "sets": {k: len(v) for k, v in sets.items()}, "reference": {},
                    "recognizers": {"far": FAR, "thresholds": dict(ev.thresholds)}}
    per_face: dict = {}
    for name, strength in operators:
        op = ev.operator(name, strength)
        lab = label(name, strength)
        if name == "generated":
            result["weights"] = {"file": str(op.weights_path), "sha256": op.card.get("weights_sha256"),
                                 "steps": op.card.get("steps"), "network": op.card.get("network"), "device": op.device}
        if name in BANK_GUARD:
            m = op.bank.manifest
            result["bank"] = {"path": str(op.bank.root), "source": m.get("source"), "faces": len(op.bank),
                              "identities": len(op.bank.identities), "licence": m.get("licence")}
        for set_name, samples in sets.items():
            with tqdm(total=len(samples), desc=f"{lab} on {set_name}", unit="img", disable=None) as bar:
                timing, rows = ev.run_operator(op, samples, bar)
            summary = ev.summarise(rows, timing, op.name, set_name)
            result["operators"].setdefault(lab, {})[set_name] = summary
            result["reference"].setdefault(set_name, reference(rows))
            per_face[f"{lab}|{set_name}"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
            log(json.dumps({"event": "eval_generation", "operator": lab, "set": set_name,
                            **{k: v for k, v in summary.items() if k != "methods"}}))
    if "lfw_heldout" in sets:
        sample_grid(ev, sets["lfw_heldout"], operators, out / "generation_grid.png")
    if "photos" in sets:  # in colour, several faces per image: what the harmonisation is for
        sample_grid(ev, [s for s in sets["photos"] if s.scored], operators, out / "generation_grid_photos.png")
        for name, strength in operators:
            if name in STOCHASTIC:
                face_grid(ev, sets["photos"], name, strength, out / f"generation_faces_photos_{name}.png")
    (out / "generation.json").write_text(json.dumps(result, indent=2))
    (out / "generation_faces.json").write_text(json.dumps(per_face))
    (out / "generation.md").write_text(markdown_table(result))
    return result


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def markdown_table(result: dict) -> str:
    """Two tables: privacy (re-identification, across images, detectability) and use (pose, expression,
    realism proxies, speed)."""
    t = result.get("recognizers", {}).get("thresholds", {})
    lines = [f"| operator | set | faces | reid < 0.6 | reid < calibrated | reid < 0.6 re-aligned | "
             f"dlib < {t.get('dlib_resnet', '–')} | MobileFaceNet < {t.get('mobilefacenet', '–')} | "
             "rank-1 across images dlib / MobileFaceNet (chance) | YuNet detects | SCRFD detects | dlib detects | "
             "new identity per seed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, by_set in result["operators"].items():
        for set_name, s in by_set.items():
            r, across = s.get("reid_far1e-3", {}), s.get("across_images") or {}
            if across.get("dlib_resnet") and across.get("mobilefacenet"):
                d, m = across["dlib_resnet"], across["mobilefacenet"]
                ax = f"{_pct(d['rank1'])} / {_pct(m['rank1'])} ({_pct(d['chance'])})"
            else:
                ax = "–"
            lines.append(
                f"| {name} | {set_name} | {s['faces_scored']} | {s['reid_rate']} | {s['reid_rate_calibrated']} | "
                f"{s['reid_rate_realigned']} | {_pct(r.get('dlib_resnet'))} | {_pct(r.get('mobilefacenet'))} | {ax} | "
                f"{_pct(s['detectable_yunet'])} | {_pct(s.get('detectable_scrfd'))} | {_pct(s['detectable_dlib'])} | "
                f"{s['diversity_new_identity']} |")
    lines += ["", "| operator | set | replaced | median \\|Δyaw\\| | p95 \\|Δyaw\\| | median \\|Δpitch\\| | "
              "p95 \\|Δpitch\\| | median \\|Δroll\\| | p95 \\|Δroll\\| | \\|Δyaw\\| median / p95 (dlib's points) | "
              "mouth-opening error median | age error median / p95 (years) | same age group | "
              "sharpness ratio | seam ratio | Fréchet (MobileFaceNet) | colour ΔE | background identical | faces/s | "
              "faces/s per core |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, by_set in result["operators"].items():
        for set_name, s in by_set.items():
            y, p, ro = s["yaw"], s["pitch"], s["roll"]
            mo, y68 = s.get("mouth_open_error", {}), s.get("yaw_68", {})
            ae, ag = s.get("age_error", {}), s.get("age_groups_kept") or {}
            same_age = f"{ag['same_group']} of {ag['faces']}" if ag.get("faces") else "–"
            lines.append(
                f"| {name} | {set_name} | {_pct(s.get('replaced'))} | {y['median']} | {y['p95']} | {p['median']} | "
                f"{p['p95']} | {ro['median']} | {ro['p95']} | {y68.get('median')} / {y68.get('p95')} | "
                f"{mo.get('median')} | {ae.get('median')} / {ae.get('p95')} | {same_age} | "
                f"{s.get('sharpness_ratio_median')} | "
                f"{s.get('seam_ratio_median')} | {s.get('frechet_mobilefacenet')} | {s['colour_delta_e_median']} | "
                f"{s['background_identical']} | {s['faces_per_s']} | {s.get('faces_per_s_per_core')} |")
    same = [f"{name} on {set_name} {v['same']} of {v['pairs']} ({_pct(v['rate'])})"
            for name, by_set in result["operators"].items() for set_name, s in by_set.items()
            if (v := s.get("same_virtual_person"))]
    if same:
        lines += ["", "Two photos of one person that show the same virtual person: " + ", ".join(same)]
    twins = [f"{name} on {set_name} {v['twins']} of {v['faces']} faces, in {v['images_with_twins']} of {v['images']} "
             "images" for name, by_set in result["operators"].items() for set_name, s in by_set.items()
             if (v := s.get("twins_in_image"))]
    if twins:
        lines += ["", "Faces that show the same virtual person as another face of their photo: " + ", ".join(twins)]
    groups = [f"{name} on {set_name}: " + ", ".join(f"{g} {c['same_group']} of {c['faces']}"
                                                    for g, c in ag["by_group"].items())
              for name, by_set in result["operators"].items() for set_name, s in by_set.items()
              if (ag := s.get("age_groups_kept")) and ag.get("faces")]
    if groups:
        lines += ["", "Replaced faces read in their original's age group after, by that group: " + "; ".join(groups)]
    refs = result.get("reference", {})
    if refs:
        lines += ["", "Fréchet floor (two halves of the originals): " + ", ".join(
            f"{k} {v['frechet_real_halves']} ({v['faces']} faces)" for k, v in refs.items())]
        lines += ["", "Age error floor (each original against its mirror image), median / p95 years: " + ", ".join(
            f"{k} {v['age_error_mirrored']['median']} / {v['age_error_mirrored']['p95']}" for k, v in refs.items())]
        floors = [f"{k} {p['yaw']['median']} / {p['yaw']['p95']}, {p['pitch']['median']} / {p['pitch']['p95']}"
                  for k, v in refs.items() if (p := v.get("pose_shifted"))]
        lines += ["", "Pose floor (each original against itself shifted by one pixel), median / p95 of |Δyaw|, "
                  "|Δpitch| (degrees): " + ", ".join(floors)]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from anonymizer.models import search_dirs

    shared = next((d.parent / "data" for d in search_dirs() if (d.parent / "data" / "lfw").is_dir()), None)
    p.add_argument("--lfw", type=Path, default=shared / "lfw" / "images" if shared else None,
                   help="LFW images/ folder (the held-out identities are used; 'none' to skip)")
    p.add_argument("--photos", type=Path, default=shared / "photos" if shared else None,
                   help="a folder of photos to run as well ('none' to skip)")
    p.add_argument("--policy", help="policy YAML: detection, region, seed, encoder, the generator's parameters "
                   "(default: the embedded generated profile, the one that runs the generator)")
    p.add_argument("--weights", help="generator weights name or .pt path (default: the policy's, else 'generator')")
    p.add_argument("--bank", type=Path, help="face bank directory for the operators 'bank' (identity guard on) and "
                   "'bank-noguard' (`anonymizer bank build stylegan --out DIR --n 32`)")
    p.add_argument("--limit", type=int, default=300, help="held-out LFW faces to evaluate")
    p.add_argument("--operators", default=None,
                   help="e.g. 'bank;bank-noguard;generated;blur:0.15,0.35;noise:0.8' (default: generated, blur "
                        "0.15/0.35, pixelate 0.2, noise 0.8, mask)")
    p.add_argument("--out", type=Path, default=Path("out/eval/generation"), help="folder for generation.json, "
                   "generation.md and the sample grids (not to be committed: LFW's and the photos' licences)")


def _parse_operators(text: str | None) -> list[tuple[str, float]]:
    if not text:
        return list(DEFAULT_OPERATORS)
    ops = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, strengths = part.partition(":")
        ops += [(name.strip(), float(s)) for s in strengths.split(",")] if strengths else [(name.strip(), 1.0)]
    return ops


def run(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy, profile="generated")
    lfw = None if str(args.lfw).lower() == "none" else args.lfw
    photos = None if str(args.photos).lower() == "none" else args.photos
    for what, folder in (("LFW images", lfw), ("photos", photos)):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{what} folder not found: {folder}")
    from anonymizer.exit_codes import UsageError

    operators = _parse_operators(args.operators)
    bank = getattr(args, "bank", None)
    if bank is not None and not (Path(bank) / "manifest.json").is_file():
        raise FileNotFoundError(f"face bank not found: {bank} has no manifest.json (`anonymizer bank build`)")
    wanted = sorted({n for n, _ in operators if n in BANK_GUARD})
    if wanted and bank is None and policy.anonymization.operator.name != "bank":
        raise UsageError(f"operators {wanted} need a face bank: --bank DIR "
                         "(`anonymizer bank build stylegan --out DIR --n 32`)")
    result = evaluate(policy, lfw, photos, args.out, args.limit, operators, args.weights, bank)
    print(markdown_table(result))
    print(f"wrote generation.json, generation.md and the sample grids to {args.out}")
    return 0
