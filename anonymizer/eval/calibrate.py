"""Calibrate face recognizers: distance thresholds at a false-accept rate, set and tested on disjoint LFW identities.

A recognizer's "same person" distance has no universal value: it is the distance below which a chosen
share (FAR) of pairs of *different* people fall. Set on the identities it is then scored on, it flatters
itself; here it never is. Conventions:

* Identities: `anonymizer.eval.lfw.split_of`. Thresholds are set on the `calibration` identities only;
  TAR, FAR and AUC are measured on the `eval` identities (those the reid protocol and the generator's
  evaluation use). Per identity, the first `images_per_identity` images in file-name order (a few
  identities have dozens; the cap keeps them from dominating the genuine pairs).
* Face: YuNet (score 0.6, scale 1) on the 250x250 original; the face nearest the centre (LFW centres the
  named person). Originals with no face are left out and counted.
* Pairs: every pair of acquired images within a split; genuine = same identity, impostor = different.
  Distances are Euclidean on each encoder's embeddings (L2-normalised for ArcFace-style encoders, so
  d = sqrt(2 - 2 cos)); smaller = more alike.
* Threshold at FAR f: the largest distance t with share(impostor < t) <= f (`reid.threshold_at_far`).
  With n impostor pairs about f*n of them fall below t: at f = 1e-4 that is a few dozen, so its 95%
  interval matters. Intervals come from a bootstrap over identities (calibration and evaluation
  identities resampled with replacement; a pair's weight is the product of its identities' draws), which
  accounts for pairs sharing images and identities.
* Face size: the image is resized so that the face box (YuNet's, found at full size) is `width` pixels
  wide (INTER_AREA), the box and landmarks scaled with it: a perfect detector at that size. Each encoder
  then aligns as it does in the pipeline (MobileFaceNet on the scaled landmarks, dlib with its own 5-point
  predictor on the small image). At each width a threshold is set at FAR 1e-3 on calibration identities
  at that width and TAR measured on evaluation identities at that width; also recorded: TAR and FAR at
  the full-size threshold (what a fixed threshold does to small faces). Identities with >= 2 images,
  `size_images_per_identity` each.

Writes `calibration.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from anonymizer.eval.reid import central_face, distances, eer, rates_at, threshold_at_far
from anonymizer.faces import Face

FARS = (1e-3, 1e-4)
SIZE_FAR = 1e-3
DEFAULT_SIZES = (16, 24, 32, 48, 64)
DEFAULT_ENCODERS = ("dlib_resnet", "mobilefacenet")


# --- data ---------------------------------------------------------------------------------------------


def select(lfw: Path, split: str, images_per_identity: int, min_images: int = 1,
           max_identities: int | None = None) -> list[tuple[str, Path]]:
    """(identity, path) for the split's identities with >= min_images images (`identities.tsv`), first
    `images_per_identity` files of each; `max_identities`: an evenly spaced subset (quick runs)."""
    from anonymizer.eval.lfw import SPLITS, split_of

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    table = Path(lfw) / "identities.tsv"
    if not table.is_file():
        raise FileNotFoundError(f"LFW identity table not found: {table}")
    names = sorted(name for name, n in (line.split("\t") for line in table.read_text().splitlines()[1:])
                   if int(n) >= min_images and split_of(name) == split)
    if max_identities and max_identities < len(names):
        step = len(names) / max_identities
        names = [names[int(i * step)] for i in range(max_identities)]
    return [(name, f) for name in names
            for f in sorted((Path(lfw) / "images" / name).glob("*.jpg"))[:images_per_identity]]


def sized_subset(items: Sequence[tuple[str, Path]], per_identity: int) -> set[str]:
    """Keys of the size sweep's images: the first `per_identity` of each identity that has >= 2 in `items`."""
    by_id: dict[str, list[str]] = {}
    for identity, path in items:
        by_id.setdefault(identity, []).append(f"{identity}/{path.name}")
    return {k for keys in by_id.values() if len(keys) >= 2 for k in keys[:per_identity]}


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def at_width(rgb: np.ndarray, face: Face, width: int) -> tuple[np.ndarray, Face]:
    """The image resized so that `face` is `width` pixels wide, and the face (box, landmarks) scaled with it."""
    h, w = rgb.shape[:2]
    f = width / face.w
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    sx, sy = nw / w, nh / h
    lm = None if face.landmarks is None else np.asarray(face.landmarks, np.float32) * np.array([sx, sy], np.float32)
    return small, Face(face.x * sx, face.y * sy, face.w * sx, face.h * sy, face.score, face.detector, lm)


@dataclass
class Embedded:
    """Per split: the acquired images' identities and each encoder's embeddings at full size and per width."""
    ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    face_widths: list[float] = field(default_factory=list)
    in_sizes: list[bool] = field(default_factory=list)  # also embedded at each width
    full: dict[str, list[np.ndarray]] = field(default_factory=dict)
    sized: dict[tuple[str, int], list[np.ndarray]] = field(default_factory=dict)
    without_face: list[str] = field(default_factory=list)


def embed_split(items: Sequence[tuple[str, Path]], sized: set[str], encoders: dict, detector, sizes: Sequence[int],
                log=print, label: str = "") -> Embedded:
    """Detect once per image, then every encoder at full size and (for keys in `sized`) at every width."""
    out = Embedded()
    t0 = time.perf_counter()
    for n, (identity, path) in enumerate(items):
        key = f"{identity}/{path.name}"
        rgb = read_rgb(path)
        face = central_face(detector.detect(rgb), rgb.shape[:2])
        if face is None:
            out.without_face.append(key)
            continue
        out.ids.append(identity)
        out.keys.append(key)
        out.face_widths.append(float(face.w))
        out.in_sizes.append(key in sized)
        for name, enc in encoders.items():
            out.full.setdefault(name, []).append(enc.embed(rgb, enc.align(rgb, [face]))[0])
            if key in sized:
                for s in sizes:
                    small, f = at_width(rgb, face, s)
                    out.sized.setdefault((name, s), []).append(enc.embed(small, enc.align(small, [f]))[0])
        if log and (n + 1) % 200 == 0:
            log(f"{label}: {n + 1}/{len(items)} images ({time.perf_counter() - t0:.0f} s)")
    return out


# --- statistics ---------------------------------------------------------------------------------------


@dataclass
class Pairs:
    """All pairs of a set of embeddings: distances, whether genuine, and each side's identity index."""
    d: np.ndarray
    same: np.ndarray
    ia: np.ndarray
    ib: np.ndarray
    identities: int

    @classmethod
    def of(cls, emb: np.ndarray, ids: Sequence[str]) -> "Pairs":
        names, codes = np.unique(np.asarray(ids), return_inverse=True)
        iu = np.triu_indices(len(codes), k=1)
        d = distances(emb, emb)[iu]
        ia, ib = codes[iu[0]], codes[iu[1]]
        return cls(d, ia == ib, ia, ib, len(names))

    @property
    def genuine(self) -> np.ndarray:
        return self.d[self.same]

    @property
    def impostor(self) -> np.ndarray:
        return self.d[~self.same]


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """P(genuine distance < impostor distance), ties counted half (the ROC's area)."""
    imp = np.sort(np.asarray(impostor, np.float64))
    g = np.asarray(genuine, np.float64)
    above = len(imp) - np.searchsorted(imp, g, side="right")
    ties = np.searchsorted(imp, g, side="right") - np.searchsorted(imp, g, side="left")
    return float((above + 0.5 * ties).sum() / (len(g) * len(imp)))


def bootstrap(cal: Pairs, ev: Pairs, fars: Sequence[float], reps: int, seed: int) -> dict[float, dict]:
    """95% intervals of the calibration threshold and of the evaluation TAR at it, resampling identities."""
    rng = np.random.default_rng(seed)
    imp = ~cal.same
    order = np.argsort(cal.d[imp], kind="stable")
    d_imp, ia, ib = cal.d[imp][order], cal.ia[imp][order], cal.ib[imp][order]
    g_d, g_id = ev.d[ev.same], ev.ia[ev.same]
    ts = {f: [] for f in fars}
    tars = {f: [] for f in fars}
    for _ in range(reps):
        cc = rng.multinomial(cal.identities, np.full(cal.identities, 1 / cal.identities))
        w = (cc[ia] * cc[ib]).astype(np.float64)
        before = np.cumsum(w) - w  # weight of the impostor pairs sorted before each one
        total = before[-1] + w[-1]
        ce = rng.multinomial(ev.identities, np.full(ev.identities, 1 / ev.identities))
        wg = ce[g_id].astype(np.float64)
        for f in fars:
            t = float(d_imp[np.searchsorted(before, f * total, side="right") - 1])  # as threshold_at_far
            ts[f].append(t)
            tars[f].append(float((wg * (g_d < t)).sum() / max(wg.sum(), 1e-12)))
    q = (2.5, 97.5)
    return {f: {"threshold_ci95": [float(x) for x in np.percentile(ts[f], q)],
                "tar_ci95": [float(x) for x in np.percentile(tars[f], q)]} for f in fars}


def _round(x: float, n: int = 4) -> float:
    return float(round(float(x), n))


def calibrate_encoder(cal: Pairs, ev: Pairs, fars: Sequence[float] = FARS, reps: int = 200, seed: int = 0) -> dict:
    """Thresholds on calibration pairs; TAR, FAR, AUC and EER at them on evaluation pairs."""
    cal_imp, ev_gen, ev_imp = cal.impostor, ev.genuine, ev.impostor
    ci = bootstrap(cal, ev, fars, reps, seed) if reps else {f: {} for f in fars}
    by_far = {}
    for f in fars:
        t = threshold_at_far(cal_imp, f)
        fmr, fnmr = rates_at(ev_gen, ev_imp, t)
        by_far[f"{f:g}"] = {
            "threshold": _round(t), "threshold_ci95": [_round(x) for x in ci[f].get("threshold_ci95", [])],
            "calibration_impostors_below": int((cal_imp < t).sum()),
            "tar": _round(1 - fnmr), "tar_ci95": [_round(x) for x in ci[f].get("tar_ci95", [])],
            "far": float(f"{fmr:.3g}"), "eval_impostors_below": int((ev_imp < t).sum()),
        }
    return {
        "calibration": {"identities": cal.identities, "genuine_pairs": int(cal.same.sum()),
                        "impostor_pairs": int((~cal.same).sum()), "auc": _round(auc(cal.genuine, cal_imp), 5)},
        "evaluation": {"identities": ev.identities, "genuine_pairs": int(len(ev_gen)),
                       "impostor_pairs": int(len(ev_imp)),
                       "auc": _round(auc(ev_gen, ev_imp), 5), "eer": _round(eer(ev_gen, ev_imp))},
        "by_far": by_far,
    }


def by_size(cal_emb: dict[int, np.ndarray], cal_ids: Sequence[str], ev_emb: dict[int, np.ndarray],
            ev_ids: Sequence[str], full_threshold: float) -> dict[str, dict]:
    """Per face width: threshold at SIZE_FAR on calibration identities at that width, TAR/FAR/AUC on evaluation
    identities at that width, and TAR/FAR there at the full-size threshold."""
    out = {}
    for s in sorted(cal_emb, key=lambda k: (k == 0, k)):
        cal, ev = Pairs.of(cal_emb[s], cal_ids), Pairs.of(ev_emb[s], ev_ids)
        t = threshold_at_far(cal.impostor, SIZE_FAR)
        fmr, fnmr = rates_at(ev.genuine, ev.impostor, t)
        fmr_full, fnmr_full = rates_at(ev.genuine, ev.impostor, full_threshold)
        out["full" if s == 0 else str(s)] = {
            "threshold": _round(t), "tar": _round(1 - fnmr), "far": float(f"{fmr:.3g}"),
            "auc": _round(auc(ev.genuine, ev.impostor), 5),
            "tar_at_full_threshold": _round(1 - fnmr_full), "far_at_full_threshold": float(f"{fmr_full:.3g}"),
            "calibration_pairs": [int(cal.same.sum()), int((~cal.same).sum())],
            "evaluation_pairs": [int(ev.same.sum()), int((~ev.same).sum())],
        }
    return out


# --- the run ------------------------------------------------------------------------------------------


def run_calibration(lfw: Path, encoders: Sequence[str] = DEFAULT_ENCODERS, model_dir: str | None = None,
                    images_per_identity: int = 10, sizes: Sequence[int] = DEFAULT_SIZES,
                    size_images_per_identity: int = 3, max_identities: int | None = None, reps: int = 200,
                    seed: int = 0, log=print) -> dict:
    from anonymizer.detect import build_detector
    from anonymizer.eval.lfw import DEFAULT_CALIBRATION, DEFAULT_HOLDOUT, SPLIT_RULE
    from anonymizer.measure.encoder import build_encoder

    if sizes and size_images_per_identity > images_per_identity:
        raise ValueError(f"size_images_per_identity ({size_images_per_identity}) must not exceed "
                         f"images_per_identity ({images_per_identity}): the size sweep reuses full-size embeddings")
    t0 = time.perf_counter()
    detector = build_detector("yunet", {"score_threshold": 0.6, "scales": [1.0]}, model_dir)
    encs = {name: build_encoder(name, {}, model_dir) for name in encoders}
    data: dict[str, Embedded] = {}
    for split in ("calibration", "eval"):
        items = select(lfw, split, images_per_identity, max_identities=max_identities)
        sized = sized_subset(items, size_images_per_identity) if sizes else set()
        data[split] = embed_split(items, sized, encs, detector, sizes, log, split)
    cal, ev = data["calibration"], data["eval"]
    cal_ids, ev_ids = np.array(cal.ids), np.array(ev.ids)
    cs, es = np.array(cal.in_sizes, bool), np.array(ev.in_sizes, bool)
    result: dict = {
        "protocol": {
            "split_rule": SPLIT_RULE, "holdout": DEFAULT_HOLDOUT, "calibration": DEFAULT_CALIBRATION,
            "images_per_identity": images_per_identity, "max_identities": max_identities,
            "detector": "yunet (score 0.6, scale 1), face nearest the centre", "fars": list(FARS),
            "bootstrap": {"replicates": reps, "seed": seed, "resampled": "identities"},
            "sizes": {"widths": list(sizes), "far": SIZE_FAR, "images_per_identity": size_images_per_identity,
                      "min_images": 2},
        },
        "data": {split: {"identities": len(set(e.ids)), "images": len(e.ids), "without_face": len(e.without_face),
                         "median_face_width": _round(float(np.median(e.face_widths)), 1) if e.face_widths else None,
                         "sized_images": int(sum(e.in_sizes))}
                 for split, e in data.items()},
        "encoders": {},
    }
    for name, enc in encs.items():
        cal_pairs = Pairs.of(np.stack(cal.full[name]), cal_ids)
        ev_pairs = Pairs.of(np.stack(ev.full[name]), ev_ids)
        r = calibrate_encoder(cal_pairs, ev_pairs, FARS, reps, seed)
        r["default_same_person_distance"] = float(enc.same_person_distance)
        if sizes:
            full_t = r["by_far"][f"{SIZE_FAR:g}"]["threshold"]
            cal_s = {0: np.stack(cal.full[name])[cs], **{s: np.stack(cal.sized[(name, s)]) for s in sizes}}
            ev_s = {0: np.stack(ev.full[name])[es], **{s: np.stack(ev.sized[(name, s)]) for s in sizes}}
            r["by_size"] = by_size(cal_s, cal_ids[cs], ev_s, ev_ids[es], full_t)
        result["encoders"][name] = r
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def markdown_table(result: dict) -> str:
    sizes = result["protocol"]["sizes"]["widths"]
    cols = (["recognizer", "threshold @FAR 1e-3", "threshold @FAR 1e-4", "TAR @1e-3 (eval)", "TAR @1e-4 (eval)",
             "AUC (eval)"]
            + [f"TAR @1e-3, {s} px" for s in sizes])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in result["encoders"].items():
        a, b = r["by_far"]["0.001"], r["by_far"]["0.0001"]

        def ci(x: list) -> str:
            return f" [{x[0]:.3f}, {x[1]:.3f}]" if x else ""
        cells = [f"`{name}`", f"{a['threshold']:.4f}{ci(a['threshold_ci95'])}",
                 f"{b['threshold']:.4f}{ci(b['threshold_ci95'])}", f"{a['tar']:.3f}{ci(a['tar_ci95'])}",
                 f"{b['tar']:.3f}{ci(b['tar_ci95'])}", f"{r['evaluation']['auc']:.4f}"]
        cells += [f"{r['by_size'][str(s)]['tar']:.3f}" for s in sizes] if "by_size" in r else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from anonymizer.models import search_dirs

    default_lfw = next((d.parent / "data" / "lfw" for d in search_dirs() if (d.parent / "data" / "lfw").is_dir()), None)
    p.add_argument("--lfw", type=Path, default=default_lfw, help="LFW folder holding images/ and identities.tsv")
    p.add_argument("--model-dir", help="model directory (default: $ANONYMIZER_MODEL_DIR and the usual places)")
    p.add_argument("--out", type=Path, default=Path("out/eval/calibrate"), help="folder for calibration.json")
    p.add_argument("--encoders", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   default=list(DEFAULT_ENCODERS), help="face encoders to calibrate, comma-separated")
    p.add_argument("--images-per-identity", type=int, default=10, help="first N images per identity")
    p.add_argument("--sizes", type=_ints, default=list(DEFAULT_SIZES),
                   help="face widths in pixels for the size sweep, comma-separated ('' for none)")
    p.add_argument("--size-images-per-identity", type=int, default=3,
                   help="first N images per identity (identities with >= 2) in the size sweep")
    p.add_argument("--max-identities", type=int, default=None, help="evenly spaced subset per split (quick runs)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates over identities (0: none)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.lfw is None or not Path(args.lfw).is_dir():
        raise FileNotFoundError(f"LFW folder not found: {args.lfw} (pass --lfw)")
    result = run_calibration(Path(args.lfw), args.encoders, args.model_dir, args.images_per_identity, args.sizes,
                             args.size_images_per_identity, args.max_identities, args.bootstrap, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "calibration.json"
    path.write_text(json.dumps(result, indent=2))
    print(markdown_table(result))
    print(json.dumps({"json": str(path), "seconds": result["seconds"]}))
    return 0
