"""Re-identification attacks on anonymized faces: naive, reverse and parrot protocols on LFW.

The protocols are those of Newton, Sweeney & Malin (2005), run with a modern face recognizer as the
attacker (the policy's `FaceEncoder`, dlib's 128-d ResNet by default). Conventions, fixed so that numbers
stay comparable between runs:

* Data: LFW identities with at least `min_images` images (``identities.tsv``); per identity the first
  `images_per_identity` images in file-name order. The first is the identity's gallery image, the others
  are probes (closed-set identification, one gallery entry per identity). The generator is scored only on
  the identities held out of its training (`identities="heldout"`, chosen automatically for it).
* Face: the policy's detector on the 250x250 original; the face nearest the image centre (largest on a
  tie). An original with no face is a failure to acquire of the *data* and is left out (counted).
* Anonymization: the operator as the pipeline builds it (`process.build_operator`: the policy's region
  settings; the policy's own operator keeps its params, e.g. the generator's identity guard) at strength
  `s`, the per-face RNG `face_rngs(policy.seed, key, 1)`, then a JPEG round trip at the policy's quality.
* Attacker alignment: on the image the attacker holds. For an anonymized image the landmarks are found on
  the anonymized pixels inside the original face box (the anonymized region is plainly visible, so a
  determined attacker knows where to look): this keeps every probe scored, a conservative choice.
* Failure to acquire (FTA): the policy's first detector at scale 1 finds no face overlapping the
  original box (IoU >= 0.3) in the anonymized image. Reported next to the scores; `rank1_generalized`
  counts an FTA probe as a miss.
* Protocols: naive = gallery originals, probes anonymized; reverse = gallery anonymized, probes originals;
  parrot = both anonymized (the attacker anonymizes his gallery the same way); `clean` = both originals
  (the attacker's ceiling). Scores are Euclidean embedding distances (smaller = more alike): genuine =
  probe vs its own identity's gallery image, impostor = probe vs every other gallery image.
* Metrics per protocol: EER; TAR at FAR = `far` with the threshold set on that protocol's own impostor
  scores (an attacker who re-calibrates); FMR/FNMR at the calibrated threshold; rank-1 identification;
  DET curve (FMR vs FNMR). `same_image`: the distance between an original and its own anonymized copy,
  the share under the calibrated threshold (the pipeline's naive check, with the attacker's alignment).
* Calibration: the decision threshold at FAR = `far` on all pairs of the acquired *originals* (genuine =
  same identity, impostor = different identities): the distance below which at most `far` of impostor
  pairs fall. This is what policies use as `thresholds.same_person_distance`, instead of a library default.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from anonymizer.anonymize import ANONYMIZERS, face_rngs
from anonymizer.faces import Face, iou
from anonymizer.policy import Policy, load_policy
from anonymizer.report.charts import cell, det_chart, figure_html, html_table, png

DEFAULT_SWEEP: tuple[tuple[str, float], ...] = (
    ("blur", 0.05), ("blur", 0.15), ("blur", 0.35),
    ("pixelate", 0.08), ("pixelate", 0.2),
    ("noise", 0.3), ("noise", 0.8),
    ("mask", 1.0),
)
PROTOCOLS = ("naive", "reverse", "parrot")
CALIBRATION_FARS = (1e-2, 1e-3, 1e-4)  # recorded next to the target FAR: the profiles use the first two
FTA_IOU = 0.3
IDENTITY_SETS = ("all", "heldout")


# --- data ---------------------------------------------------------------------------------------------


@dataclass
class Item:
    identity: str
    key: str          # path relative to the LFW images folder: the RNG key
    path: Path
    gallery: bool     # the identity's gallery image (else a probe)


def select(lfw: Path, min_images: int = 3, images_per_identity: int = 3, max_identities: int | None = None,
           identities: str = "all") -> list[Item]:
    """LFW identities with >= min_images images, evenly spaced over the sorted names when capped.
    `identities="heldout"`: only those the generator's training split left out (anonymizer/eval/lfw.py)."""
    from anonymizer.eval.lfw import split_of

    if identities not in IDENTITY_SETS:
        raise ValueError(f"identities must be one of {IDENTITY_SETS}, got {identities!r}")
    lfw = Path(lfw)
    table = lfw / "identities.tsv"
    names = []
    for line in table.read_text().splitlines()[1:]:
        name, n = line.split("\t")
        if int(n) >= min_images and (identities == "all" or split_of(name) == "eval"):
            names.append(name)
    names.sort()
    if max_identities and max_identities < len(names):
        step = len(names) / max_identities
        names = [names[int(i * step)] for i in range(max_identities)]
    items = []
    for name in names:
        files = sorted((lfw / "images" / name).glob("*.jpg"))[:images_per_identity]
        for i, f in enumerate(files):
            items.append(Item(name, f"{name}/{f.name}", f, i == 0))
    return items


def central_face(faces: Sequence[Face], shape: tuple[int, int]) -> Face | None:
    """LFW is centred on the labelled person: the face nearest the centre, largest on a tie."""
    if not faces:
        return None
    cy, cx = shape[0] / 2, shape[1] / 2

    def rank(f: Face) -> tuple[float, float]:
        inside = f.x <= cx <= f.x + f.w and f.y <= cy <= f.y + f.h
        d = np.hypot(f.x + f.w / 2 - cx, f.y + f.h / 2 - cy)
        return (0.0 if inside else 1.0, d - f.w * f.h * 1e-6)

    return min(faces, key=rank)


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _bare(face: Face) -> Face:
    """The box only: landmarks must be found again on the image the attacker holds."""
    return Face(face.x, face.y, face.w, face.h, face.score, face.detector, None)


# --- scores and metrics -------------------------------------------------------------------------------


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance matrix, len(a) x len(b)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The largest distance t with share(impostor < t) <= far: accept as "same person" below t."""
    imp = np.sort(np.asarray(impostor, np.float64))
    if not len(imp):
        raise ValueError("no impostor scores")
    k = int(np.floor(far * len(imp)))
    return float(imp[min(k, len(imp) - 1)])


def rates_at(genuine: np.ndarray, impostor: np.ndarray, t: float) -> tuple[float, float]:
    """(FMR, FNMR) when distances < t are accepted."""
    fmr = float((impostor < t).mean()) if len(impostor) else 0.0
    fnmr = float((genuine >= t).mean()) if len(genuine) else 0.0
    return fmr, fnmr


def det_curve(genuine: np.ndarray, impostor: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FMR, FNMR) over the range of observed scores."""
    g = np.sort(np.asarray(genuine, np.float64))
    i = np.sort(np.asarray(impostor, np.float64))
    lo = min(g[0] if len(g) else 0.0, i[0] if len(i) else 0.0)
    hi = max(g[-1] if len(g) else 1.0, i[-1] if len(i) else 1.0)
    ts = np.linspace(lo, hi + 1e-9, points)
    fmr = np.searchsorted(i, ts, side="left") / max(1, len(i))
    fnmr = 1.0 - np.searchsorted(g, ts, side="left") / max(1, len(g))
    return ts, fmr, fnmr


def det_points(genuine: np.ndarray, impostor: np.ndarray, points: int = 80) -> dict[str, list[float]]:
    """A compact DET curve for the JSON (and the audit report): FMR/FNMR pairs, rounded."""
    ts, fmr, fnmr = det_curve(genuine, impostor, 1000)
    idx = np.unique(np.linspace(0, len(ts) - 1, points).astype(int))
    return {"threshold": [round(float(x), 5) for x in ts[idx]], "fmr": [round(float(x), 6) for x in fmr[idx]],
            "fnmr": [round(float(x), 6) for x in fnmr[idx]]}


def eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Equal error rate: where FMR and FNMR cross (interpolated on exact score thresholds)."""
    scores = np.unique(np.concatenate([genuine, impostor]))
    g = np.sort(genuine)
    i = np.sort(impostor)
    fmr = np.searchsorted(i, scores, side="left") / len(i)
    fnmr = 1.0 - np.searchsorted(g, scores, side="left") / len(g)
    k = int(np.argmin(np.abs(fmr - fnmr)))
    return float((fmr[k] + fnmr[k]) / 2)


def verification(genuine: np.ndarray, impostor: np.ndarray, far: float, calibrated: float | None) -> dict:
    """`calibrated`: the recognizer's threshold on clean faces (None where the scores are no recognizer's)."""
    t_own = threshold_at_far(impostor, far)
    _, fnmr_own = rates_at(genuine, impostor, t_own)
    fmr_cal, fnmr_cal = (None, None) if calibrated is None else rates_at(genuine, impostor, calibrated)
    return {
        "genuine": int(len(genuine)), "impostor": int(len(impostor)),
        "eer": eer(genuine, impostor),
        "threshold_at_far": t_own, "tar_at_far": 1.0 - fnmr_own,
        "fmr_at_calibrated": fmr_cal, "tar_at_calibrated": None if fnmr_cal is None else 1.0 - fnmr_cal,
        "genuine_median": float(np.median(genuine)), "impostor_median": float(np.median(impostor)),
    }


def identification(gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray, probe_ids: np.ndarray,
                   far: float, calibrated: float | None, acquired: np.ndarray | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    d = distances(probes, gallery)
    same = probe_ids[:, None] == gallery_ids[None, :]
    genuine = d[same]
    impostor = d[~same]
    hits = gallery_ids[np.argmin(d, axis=1)] == probe_ids
    out = verification(genuine, impostor, far, calibrated)
    out["det"] = det_points(genuine, impostor)
    out["probes"] = int(len(probes))
    out["gallery"] = int(len(gallery))
    out["rank1"] = float(hits.mean())
    if acquired is not None:
        out["rank1_generalized"] = float((hits & acquired).mean())
    return out, genuine, impostor


def calibrate(embeddings: np.ndarray, ids: np.ndarray, far: float) -> dict:
    """Decision threshold at `far` on all pairs of originals (and what it costs in genuine accepts)."""
    d = distances(embeddings, embeddings)
    iu = np.triu_indices(len(ids), k=1)
    same = (ids[:, None] == ids[None, :])[iu]
    scores = d[iu]
    genuine, impostor = scores[same], scores[~same]
    t = threshold_at_far(impostor, far)
    fmr, fnmr = rates_at(genuine, impostor, t)
    fmr06, fnmr06 = rates_at(genuine, impostor, 0.6)
    return {
        "far": far, "threshold": t, "genuine_pairs": int(len(genuine)), "impostor_pairs": int(len(impostor)),
        "fmr_at_threshold": fmr, "tar_at_threshold": 1.0 - fnmr, "eer": eer(genuine, impostor),
        "library_threshold": 0.6, "fmr_at_library_threshold": fmr06, "tar_at_library_threshold": 1.0 - fnmr06,
        "identities": int(len(np.unique(ids))), "images": int(len(ids)),
        "by_far": {f"{f:g}": {"threshold": threshold_at_far(impostor, f),
                              "tar": 1.0 - rates_at(genuine, impostor, threshold_at_far(impostor, f))[1]}
                   for f in CALIBRATION_FARS},
    }, genuine, impostor


# --- the attack ---------------------------------------------------------------------------------------


@dataclass
class Originals:
    items: list[Item]
    images: list[np.ndarray]
    faces: list[Face]
    embeddings: np.ndarray
    ids: np.ndarray
    gallery: np.ndarray      # bool per item
    not_acquired: list[str]  # originals with no face (left out)


def _load_cache(path: Path | None, signature: str) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    data = json.loads(Path(path).read_text())
    return data.get("entries", {}) if data.get("signature") == signature else {}


def embed_originals(items: Sequence[Item], components, log=print, cache: Path | None = None,
                    signature: str = "") -> Originals:
    """Detect and embed every original once (optionally cached in a JSON file of numbers: boxes, landmarks,
    embeddings; never pixels)."""
    enc = components.encoder
    kept, imgs, faces, embs, missing = [], [], [], [], []
    cached = _load_cache(cache, signature)
    fresh: dict = {}
    t0 = time.perf_counter()
    for n, it in enumerate(items):
        rgb = _read_rgb(it.path)
        entry = cached.get(it.key)
        if entry is None:
            face = central_face(components.detector.detect(rgb), rgb.shape[:2])
            emb = None if face is None else enc.embed(rgb, enc.align(rgb, [face]))[0]
            entry = None if face is None else {
                "box": [float(face.x), float(face.y), float(face.w), float(face.h)], "score": float(face.score),
                "detector": face.detector,
                "landmarks": None if face.landmarks is None else np.asarray(face.landmarks, float).tolist(),
                "embedding": np.asarray(emb, float).tolist()}
        fresh[it.key] = entry
        if entry is None:
            missing.append(it.key)
            continue
        lm = entry["landmarks"]
        face = Face(*entry["box"], entry["score"], entry["detector"], None if lm is None else np.array(lm, np.float32))
        embs.append(np.array(entry["embedding"], np.float32))
        kept.append(it)
        imgs.append(rgb)
        faces.append(face)
        if log and (n + 1) % 200 == 0:
            log(f"originals: {n + 1}/{len(items)} ({time.perf_counter() - t0:.0f} s)")
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text(json.dumps({"signature": signature, "entries": {**cached, **fresh}}))
    # An identity needs its gallery image and at least one probe to take part.
    ok = set()
    by_id: dict[str, list[Item]] = {}
    for it in kept:
        by_id.setdefault(it.identity, []).append(it)
    for name, its in by_id.items():
        if len(its) >= 2:
            ok.add(name)
    sel = [i for i, it in enumerate(kept) if it.identity in ok]
    kept = [kept[i] for i in sel]
    # The first acquired image of each identity is its gallery image.
    seen: set[str] = set()
    gallery = []
    for it in kept:
        gallery.append(it.identity not in seen)
        seen.add(it.identity)
    for it, g in zip(kept, gallery):
        it.gallery = g
    return Originals(kept, [imgs[i] for i in sel], [faces[i] for i in sel],
                     np.array([embs[i] for i in sel], np.float32).reshape(len(sel), -1),
                     np.array([it.identity for it in kept]), np.array(gallery, bool), missing)


def fta_detector(policy: Policy):
    """YuNet at its deployed 0.6 and scale 1: LFW faces are ~100 px, upscaling adds nothing but time. Pinned
    rather than taken from the policy, whose detectors may run at low thresholds that only count where
    fused votes agree (a lone low-score box would make FTA look rarer than it is)."""
    from anonymizer.detect import build_detector

    return build_detector("yunet", {"score_threshold": 0.6, "scales": [1.0]}, policy.model_dir)


def attack(orig: Originals, operator: str, strength: float, policy: Policy, components, detector, far: float,
           calibrated: float) -> tuple[dict, dict]:
    """One operator at one strength through the three protocols. Returns (metrics, score arrays)."""
    from anonymizer.components import build_operator

    op = build_operator(policy, operator, strength)
    enc = components.encoder
    anon_emb, acquired = [], []
    t0 = time.perf_counter()
    for it, rgb, face in zip(orig.items, orig.images, orig.faces):
        out = op.anonymize(rgb, [face], face_rngs(policy.seed, it.key, 1)).image
        out = _jpeg(out, policy.output.jpeg_quality)
        acquired.append(any(iou(f, face) >= FTA_IOU for f in detector.detect(out)))
        anon_emb.append(enc.embed(out, enc.align(out, [_bare(face)]))[0])
    anon = np.array(anon_emb, np.float32).reshape(len(anon_emb), -1)
    acquired = np.array(acquired, bool)
    g, p = orig.gallery, ~orig.gallery
    gid, pid = orig.ids[g], orig.ids[p]
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    protocols = {}
    for name, (gal, prb, acq) in {
        "naive": (orig.embeddings[g], anon[p], acquired[p]),
        "reverse": (anon[g], orig.embeddings[p], None),
        "parrot": (anon[g], anon[p], acquired[p]),
    }.items():
        protocols[name], gen, imp = identification(gal, gid, prb, pid, far, calibrated, acq)
        scores[name] = (gen, imp)
    same_image = np.linalg.norm(orig.embeddings.astype(np.float64) - anon, axis=1)
    metrics = {
        "operator": operator, "strength": strength,
        "fta_rate": float(1.0 - acquired.mean()),
        "same_image": {"faces": int(len(same_image)), "median_distance": float(np.median(same_image)),
                       "match_rate_at_calibrated": float((same_image < calibrated).mean()),
                       "match_rate_at_library": float((same_image < enc.same_person_distance).mean())},
        "protocols": protocols,
        "seconds": time.perf_counter() - t0,
    }
    scores["same_image"] = (same_image, np.zeros(0))
    return metrics, scores


def table_rows(result: dict) -> list[dict]:
    rows = []
    for c in result["configs"]:
        pr = c["protocols"]
        rows.append({
            "operator": c["operator"], "strength": c["strength"],
            "EER naive": pr["naive"]["eer"], "TAR@FAR naive": pr["naive"]["tar_at_far"],
            "rank-1 naive": pr["naive"]["rank1"], "rank-1 reverse": pr["reverse"]["rank1"],
            "rank-1 parrot": pr["parrot"]["rank1"], "EER parrot": pr["parrot"]["eer"],
            "TAR@FAR parrot": pr["parrot"]["tar_at_far"], "FTA": c["fta_rate"],
            "same-image match": c["same_image"]["match_rate_at_calibrated"],
        })
    return rows


def run_sweep(policy: Policy, lfw: Path, sweep: Sequence[tuple[str, float]] = DEFAULT_SWEEP, far: float = 1e-3,
              min_images: int = 3, images_per_identity: int = 3, max_identities: int | None = None,
              components=None, log=print, cache: Path | None = None, identities: str = "auto") -> tuple[dict, dict]:
    """Every operator/strength through the protocols. Returns (JSON-able result, score arrays for plots).
    `identities="auto"`: the held-out identities when the sweep has the generator (it was trained on the
    others), else all."""
    from anonymizer.components import Components

    t0 = time.perf_counter()
    components = components or Components.from_policy(policy)
    detector = fta_detector(policy)
    if identities == "auto":
        identities = "heldout" if any(op == "generated" for op, _ in sweep) else "all"
    items = select(lfw, min_images, images_per_identity, max_identities, identities)
    signature = json.dumps([policy.detection.model_dump(), policy.measurement.encoder.model_dump()], sort_keys=True)
    orig = embed_originals(items, components, log, cache, signature)
    cal, cal_gen, cal_imp = calibrate(orig.embeddings, orig.ids, far)
    t = cal["threshold"]
    if log:
        log(f"calibrated threshold at FAR {far:g}: {t:.4f} ({cal['impostor_pairs']} impostor pairs)")
    g = orig.gallery
    clean, cg, ci = identification(orig.embeddings[g], orig.ids[g], orig.embeddings[~g], orig.ids[~g], far, t)
    clean_fta = float(1.0 - np.mean([any(iou(f, face) >= FTA_IOU for f in detector.detect(_jpeg(img, policy.output.jpeg_quality)))
                                     for img, face in zip(orig.images, orig.faces)]))
    scores = {"calibration": (cal_gen, cal_imp), "clean": (cg, ci)}
    configs = []
    for operator, strength in sweep:
        m, s = attack(orig, operator, strength, policy, components, detector, far, t)
        configs.append(m)
        scores[f"{operator}@{strength:g}"] = s
        if log:
            pr = m["protocols"]
            log(f"{operator} {strength:g}: rank-1 naive {pr['naive']['rank1']:.3f} parrot {pr['parrot']['rank1']:.3f} "
                f"EER naive {pr['naive']['eer']:.3f} FTA {m['fta_rate']:.3f} ({m['seconds']:.0f} s)")
    result = {
        "dataset": {"name": "LFW", "path": str(lfw), "identity_set": identities, "min_images": min_images,
                    "images_per_identity": images_per_identity, "max_identities": max_identities, "identities": int(len(np.unique(orig.ids))),
                    "images": len(orig.items), "gallery": int(g.sum()), "probes": int((~g).sum()),
                    "originals_without_face": orig.not_acquired},
        "attacker": {"encoder": policy.measurement.encoder.name, "params": policy.measurement.encoder.params,
                     "library_threshold": components.encoder.same_person_distance},
        "policy": {"name": policy.name, "sha256": policy.sha256, "seed": policy.seed,
                   "region": policy.anonymization.region.model_dump(), "jpeg_quality": policy.output.jpeg_quality},
        "far": far,
        "calibration": cal,
        "clean": {**clean, "fta_rate": clean_fta},
        "configs": configs,
        "seconds": time.perf_counter() - t0,
    }
    result["table"] = table_rows(result)
    return result, scores


# --- output -------------------------------------------------------------------------------------------


def figures(result: dict, scores: dict) -> dict[str, str]:
    """DET curves per protocol and genuine/impostor histograms, as base64 PNG (numbers only)."""
    from anonymizer.pyplot import plt

    out = {}
    names = [k for k in scores if "@" in k]
    cmap = plt.get_cmap("tab10")
    for proto in PROTOCOLS:
        curves = [("clean (no anonymization)", scores["clean"], "k")] + [
            (n, scores[n][proto], cmap(i % 10)) for i, n in enumerate(names)]
        out[f"det_{proto}"] = det_chart([(label, *det_curve(gen, imp)[1:], colour) for label, (gen, imp), colour in curves],
                                        f"DET, {proto} protocol (lower-left = attacker succeeds)", far=result["far"])
    # Genuine vs impostor scores of each protocol: every protocol has its own impostor distribution
    # (anonymized faces look alike, so parrot impostors are close too).
    t = result["calibration"]["threshold"]
    cols = ["clean"] + names
    fig, axes = plt.subplots(2, len(cols), figsize=(2.1 * len(cols), 4.4), sharex=True, squeeze=False)
    bins = np.linspace(0, 1.2, 49)
    for j, n in enumerate(cols):
        for i, proto in enumerate(("naive", "parrot")):
            ax = axes[i][j]
            gen, imp = scores["clean"] if n == "clean" else scores[n][proto]
            ax.hist(imp, bins=bins, density=True, color="#bbb", label="impostor")
            ax.hist(gen, bins=bins, density=True, histtype="step", color="#c0392b", lw=1.5, label="genuine")
            ax.axvline(t, color="#333", ls="--", lw=0.8)
            ax.set_yticks([])
            ax.set_title(f"{n}\n{proto}" if n != "clean" else "clean", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"Score distributions (distance; dashed: calibrated threshold {t:.3f})", fontsize=9)
    fig.tight_layout()
    out["score_histograms"] = png(fig)
    plt.close(fig)
    return out


def render_html(result: dict, figs: dict[str, str]) -> str:
    cal = result["calibration"]
    ds = result["dataset"]
    clean = result["clean"]
    imgs = "".join(figure_html(k, v) for k, v in figs.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Re-identification attacks on anonymized faces</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#f4f4f4}}img{{max-width:100%}}code{{background:#f4f4f4}}</style></head><body>
<h1>Re-identification attacks (naive, reverse, parrot)</h1>
<p>Attacker: <code>{html.escape(result['attacker']['encoder'])}</code>. Data: {ds['name']}, {ds['identities']} identities,
{ds['images']} images ({ds['gallery']} gallery, {ds['probes']} probes); {len(ds['originals_without_face'])} originals without a detected face left out.
Policy <code>{html.escape(result['policy']['name'])}</code> (sha256 <code>{result['policy']['sha256'][:16]}…</code>).</p>
<h2>Calibrated decision threshold</h2>
<p>Distance {cal['threshold']:.4f} at FAR {cal['far']:g} on {cal['impostor_pairs']} impostor / {cal['genuine_pairs']} genuine pairs
of originals (TAR there {cal['tar_at_threshold']:.3f}; EER {cal['eer']:.4f}). The library's {cal['library_threshold']} accepts
{cal['fmr_at_library_threshold']:.4f} of impostor pairs (TAR {cal['tar_at_library_threshold']:.3f}).</p>
<p>Clean ceiling (no anonymization): rank-1 {clean['rank1']:.3f}, EER {clean['eer']:.3f}, TAR@FAR {clean['tar_at_far']:.3f}, FTA {clean['fta_rate']:.3f}.</p>
<h2>Results</h2>
<p>Rank-1: closed-set identification among {ds['gallery']} gallery identities (chance {1 / max(1, ds['gallery']):.4f}).
TAR@FAR: threshold re-set on each protocol's own impostors at FAR {result['far']:g}. FTA: share of anonymized faces the
policy's detector no longer finds. Same-image match: share of anonymized faces within the calibrated distance of their own original.</p>
{html_table(result['table'])}
<h2>Figures</h2>{imgs}
<p>This page holds scores and charts only: no image pixels.</p>
</body></html>"""


def write(result: dict, scores: dict, out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "reid.json", "html": out / "reid.html"}
    paths["json"].write_text(json.dumps(result, indent=2, default=str))
    paths["html"].write_text(render_html(result, figures(result, scores)))
    return paths


def markdown_table(result: dict) -> str:
    cols = ["operator", "strength", "EER naive", "TAR@FAR naive", "rank-1 naive", "rank-1 reverse", "rank-1 parrot",
            "EER parrot", "FTA", "same-image match"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    c = result["clean"]
    lines.append(f"| none (clean) | - | {c['eer']:.3f} | {c['tar_at_far']:.3f} | {c['rank1']:.3f} | {c['rank1']:.3f} | "
                 f"{c['rank1']:.3f} | {c['eer']:.3f} | {c['fta_rate']:.3f} | 1 |")
    for r in result["table"]:
        lines.append("| " + " | ".join(cell(r[k]) if k != "strength" else f"{r[k]:g}" for k in cols) + " |")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------


def _parse_sweep(text: str) -> list[tuple[str, float]] | str:
    """'blur:0.05,0.35;noise:0.8' -> [(blur, 0.05), (blur, 0.35), (noise, 0.8)]; 'policy': the policy's operator."""
    if text.strip() == "policy":
        return "policy"
    out = []
    for part in text.split(";"):
        if not part.strip():
            continue
        op, _, values = part.partition(":")
        if op.strip() not in ANONYMIZERS.names():
            raise ValueError(f"unknown anonymizer {op!r}; known: {', '.join(ANONYMIZERS.names())}")
        if op.strip() == "generated":
            out.append(("generated", 1.0))  # no strength: the policy's (or the default) generator params
            continue
        out += [(op.strip(), float(v)) for v in values.split(",") if v.strip()]
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from anonymizer.models import search_dirs

    default_lfw = next((d.parent / "data" / "lfw" for d in search_dirs() if (d.parent / "data" / "lfw").is_dir()), None)
    p.add_argument("--lfw", type=Path, default=default_lfw, help="LFW folder holding images/ and identities.tsv")
    p.add_argument("--policy", help="policy YAML: detector, region, seed and the attacker (encoder)")
    p.add_argument("--out", type=Path, default=Path("out/eval/reid"), help="folder for reid.json and reid.html")
    p.add_argument("--sweep", type=_parse_sweep, default=list(DEFAULT_SWEEP),
                   help="operators and strengths, e.g. 'blur:0.05,0.35;noise:0.8', or 'policy' for the policy's own "
                        "operator (default: the seed study's sweep)")
    p.add_argument("--far", type=float, default=1e-3, help="target false-accept rate for the calibrated threshold")
    p.add_argument("--min-images", type=int, default=3, help="identities with at least this many images")
    p.add_argument("--images-per-identity", type=int, default=3, help="first N images per identity (1 gallery + N-1 probes)")
    p.add_argument("--max-identities", type=int, default=None, help="evenly spaced subset of identities (quick runs)")
    p.add_argument("--identities", choices=("auto",) + IDENTITY_SETS, default="auto",
                   help="heldout: only LFW identities the generator was not trained on (auto: those when the sweep "
                        "has 'generated', else all)")
    p.add_argument("--cache", type=Path, default=None,
                   help="JSON cache of the originals' boxes and embeddings (numbers only), reused by later runs")


def policy_and_sweep(args: argparse.Namespace) -> tuple[Policy, list[tuple[str, float]]]:
    """The policy and the (operator, strength) pairs to attack; `--sweep policy`: the policy's own operator.
    Checks --lfw first: a clear error before any model loads."""
    if args.lfw is None or not Path(args.lfw).is_dir():
        raise FileNotFoundError(f"LFW folder not found: {args.lfw} (pass --lfw)")
    policy = load_policy(args.policy)
    sweep = args.sweep
    if sweep == "policy":
        op = policy.anonymization.operator
        sweep = [(op.name, float(op.params.get("strength", 1.0)))]
    return policy, sweep


def run(args: argparse.Namespace) -> int:
    policy, sweep = policy_and_sweep(args)
    result, scores = run_sweep(policy, Path(args.lfw), sweep, args.far, args.min_images, args.images_per_identity,
                               args.max_identities, cache=args.cache, identities=args.identities)
    paths = write(result, scores, args.out)
    print(markdown_table(result))
    print(json.dumps({"calibrated_threshold": result["calibration"]["threshold"], "far": result["far"],
                      **{k: str(v) for k, v in paths.items()}}, indent=2))
    return 0
