"""Bank faces from a folder of real faces: each one the average of k people (the k-Same family).

Why composites: a face recognizer links an average of k aligned faces to any one donor with probability at
most about 1/k (Newton, Sweeney & Malin 2005), and aligning shape before averaging (Gross et al. 2006)
keeps it photographic instead of ghosted. Here:

1. `scan_folder`: every image's most central face (dlib's HOG detector, whose boxes dlib's 68-point
   predictor was trained on), its 68 landmarks, pose and expression (shape.features), and each
   recognizer's embedding. Identity is an image's first folder under the root (LFW's `<Name>/x.jpg`),
   or its file name in a flat folder. Greyscale images are marked: colour faces are averaged only with
   colour faces; when fewer than k identities have one (LFW's copy here is all greyscale), every donor is
   used in grey and the bank is grey (`build.colour` false): the operator takes colour from the photo.
2. Per bank face j (its own RNG from (seed, j), so a resumed build makes the same faces): an anchor face
   drawn at random, then the nearest faces in pose and expression, one per identity, until k identities.
3. The donors' shapes, similarity-aligned on eye corners and nose, are averaged into the target shape; each
   donor is warped piecewise-affinely onto it (shape.triangles over the 68 points, the forehead and a
   ring), brought to the donors' mean colour and contrast in Lab over the inner face, and averaged.
4. Rejected when any recognizer finds the composite within its same-person distance + `margin` of any
   donor (a donor that "shows through"); those donors are swapped for the next nearest people (or, when
   the anchor shows through, another anchor is drawn), up to `tries`. The margin matters: a composite
   accepted at 0.601 by dlib reads 0.595 when its donor is aligned from a slightly different box.

The index records each composite's donors (file paths under the folder) and the recognizers' smallest
distance to them (`checks`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from anonymizer.bank import shape as sh
from anonymizer.bank.store import BankError, BankWriter
from anonymizer.bank.warp import warp
from anonymizer.faces import Face

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
DEFAULT_ENCODERS = ("dlib_resnet", "mobilefacenet")


def available_encoders(names: Sequence[str] | None = None) -> list[str]:
    """The recognizers to check with: `names`, or dlib_resnet plus mobilefacenet where it is registered."""
    from anonymizer.measure.encoder import ENCODERS

    if names is not None:
        return list(names)
    return [n for n in DEFAULT_ENCODERS if n in ENCODERS.names()]


def _identity(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _read_rgb(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class Encoders:
    """The recognizers a bank face must not match its donors (or a photo's face) with."""

    def __init__(self, names: Sequence[str], model_dir: str | None = None) -> None:
        from anonymizer.measure.encoder import build_encoder

        self.names = list(names)
        self.encoders = [build_encoder(n, {}, model_dir) for n in self.names]

    def embed(self, image: np.ndarray, face: Face) -> list[np.ndarray]:
        img = np.ascontiguousarray(image)
        return [e.embed(img, e.align(img, [face]))[0] for e in self.encoders]

    def thresholds(self) -> list[float]:
        return [float(e.same_person_distance) for e in self.encoders]


# ---------------------------------------------------------------- scan

def scan_folder(folder: str | os.PathLike, work: Path, encoders: Encoders, model_dir: str | None = None,
                part_size: int = 256, landmarks: str = "dlib_shape68") -> pd.DataFrame:
    """One row per image with a face (see the module doc), written in parts under `work` and resumed."""
    import dlib

    root = Path(folder)
    if not root.is_dir():
        raise BankError(f"face folder {root}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BankError(f"face folder {root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    work.mkdir(parents=True, exist_ok=True)
    parts = sorted(work.glob("part-*.parquet"))
    seen = set()
    for p in parts:
        seen |= set(pd.read_parquet(p, columns=["file"])["file"])
    hog = dlib.get_frontal_face_detector()
    landmarker = sh.landmarker(landmarks, model_dir)
    rows: list[dict] = []
    n_part = len(parts)

    def flush() -> None:
        nonlocal rows, n_part
        if rows:
            tmp = work / f"part-{n_part:05d}.parquet.tmp"
            pd.DataFrame(rows).to_parquet(tmp, index=False)
            os.replace(tmp, work / f"part-{n_part:05d}.parquet")
            n_part, rows = n_part + 1, []

    for path in files:
        rel = path.relative_to(root).as_posix()
        if rel in seen:
            continue
        img = _read_rgb(path)
        row: dict = {"file": rel, "identity": _identity(Path(rel)), "ok": False}
        if img is not None:
            rects = hog(img, 0) or hog(img, 1)
            pts = None
            if rects:
                h, w = img.shape[:2]
                r = min(rects, key=lambda r: (r.center().x - w / 2) ** 2 + (r.center().y - h / 2) ** 2)
                pts = landmarker(img, Face(r.left(), r.top(), r.width(), r.height(), 1.0, "dlib_hog"))
            if pts is not None and np.all(np.isfinite(pts)):  # the face mesh gives NaN where it sees no face
                f = sh.features(pts)
                embs = encoders.embed(img, sh.face_for(pts))
                spread = np.abs(img.astype(np.int16) - img.mean(2, keepdims=True)).max()
                row.update(ok=True, landmarks=pts.astype(np.float32).reshape(-1).tolist(), grey=bool(spread < 8),
                           **{c: float(getattr(f, c)) for c in sh.FEATURE_COLUMNS},
                           **{f"emb_{n}": e.astype(np.float32).tolist() for n, e in zip(encoders.names, embs)})
        rows.append(row)
        if len(rows) >= part_size:
            flush()
    flush()
    df = pd.concat([pd.read_parquet(p) for p in sorted(work.glob("part-*.parquet"))], ignore_index=True)
    return df.drop_duplicates("file", keep="last").sort_values("file").reset_index(drop=True)


# ---------------------------------------------------------------- composite

def mean_shape(shapes: Sequence[np.ndarray], size: int = sh.CROP_SIZE) -> np.ndarray:
    """The donors' mean 68 points in the crop frame: aligned on eye centres, refined twice on the stable
    points (eye corners, nose), averaged, and set back with its eye centres on shape.CROP_EYES."""
    aligned = [sh.apply(sh.crop_matrix(p, size), p) for p in shapes]
    for _ in range(2):
        ref = np.mean(aligned, 0)
        aligned = [sh.apply(sh.similarity(a[sh.STABLE], ref[sh.STABLE]), a) for a in aligned]
    m = np.mean(aligned, 0)
    return sh.apply(sh.crop_matrix(m, size), m)


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def composite(images: Sequence[np.ndarray], shapes: Sequence[np.ndarray], size: int = sh.CROP_SIZE
              ) -> tuple[np.ndarray, np.ndarray]:
    """(size² RGB uint8 composite, its 68 points): the donors warped onto their mean shape, each brought
    to the donors' mean Lab mean and spread over the inner face, and averaged."""
    target = mean_shape(shapes, size)
    tpts = sh.extend(target)
    inner = cv2.erode(sh.outline_mask(tpts, (size, size)), np.ones((5, 5), np.uint8), iterations=int(size / 64)) > 0
    tri = sh.triangles()
    labs = []
    for img, p in zip(images, shapes):
        w, _ = warp(img, sh.extend(p), tpts, tri, (size, size))
        labs.append(_lab(w))
    means = np.array([l[inner].mean(0) for l in labs])
    stds = np.array([l[inner].std(0) for l in labs])
    goal_m, goal_s = means.mean(0), stds.mean(0)
    acc = np.zeros((size, size, 3), np.float64)
    for l, m, s in zip(labs, means, stds):
        acc += (l - m) * (goal_s / np.maximum(s, 1e-3)) + goal_m
    rgb = cv2.cvtColor((acc / len(labs)).astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), target


def pick_donors(scan: pd.DataFrame, vectors: np.ndarray, anchor: int, k: int, exclude: set[str] = frozenset()
                ) -> list[int] | None:
    """The anchor, then the nearest faces in pose and expression, one per identity not in `exclude`, until k
    identities (None when too few are left)."""
    order = np.lexsort((np.arange(len(vectors)), np.linalg.norm(vectors - vectors[anchor], axis=1)))
    chosen, ids = [anchor], {scan["identity"].iat[anchor]}
    for i in order:
        if len(chosen) == k:
            break
        ident = scan["identity"].iat[i]
        if ident not in ids and ident not in exclude:
            chosen.append(int(i))
            ids.add(ident)
    return chosen if len(chosen) == k else None


def build_from_folder(folder: str | os.PathLike, out: str | os.PathLike, n: int, k: int = 8, seed: int = 0,
                      licence: str = "user-supplied", licence_class: str = "permissive",
                      encoders: Sequence[str] | None = None,
                      model_dir: str | None = None, tries: int = 8, margin: float = 0.05,
                      part_size: int = 64, landmarks: str = "dlib_shape68") -> Path:
    """A bank of `n` composites of `k` ≥ 8 identities each from the faces under `folder` (see the module
    doc); resumable. `licence` and `licence_class` describe the folder's faces (the default: the user's
    own, with the rights to use them; LFW, say, is "research"). `landmarks`: the landmarker
    (anonymizer.bank.shape.LANDMARKERS) the composites are aligned by and the operator will use with them.
    Returns the bank directory."""
    if k < 8:
        raise ValueError(f"composite bank: k must be at least 8 (a recognizer's link to a donor ~1/k), got {k}")
    folder, out = Path(folder), Path(out)
    names = available_encoders(encoders)
    enc = Encoders(names, model_dir)
    writer = BankWriter(out, source=f"composites of faces from {folder.name}", licence=licence,
                        licence_class=licence_class, part_size=part_size, model_dir=model_dir)
    scan = scan_folder(folder, out / ".build" / "scan", enc, model_dir, landmarks=landmarks)
    found = scan[scan["ok"].astype(bool)]
    in_colour = found[~found["grey"].astype(bool)]
    colour = in_colour["identity"].nunique() >= k
    usable = (in_colour if colour else found).reset_index(drop=True)
    if usable["identity"].nunique() < k:
        raise BankError(f"face folder {folder}: {usable['identity'].nunique()} identities with a usable face, "
                        f"k={k} needs at least {k}")
    vectors = np.stack([sh.Features(*(float(r[c]) for c in sh.FEATURE_COLUMNS)).vector()
                        for r in usable[list(sh.FEATURE_COLUMNS)].to_dict("records")])
    embs = {name: np.stack(usable[f"emb_{name}"].map(np.asarray).to_list()) for name in names}
    thresholds = enc.thresholds()
    seen = {frozenset(d) for d in writer.rows()["donors"]}
    rejected = 0
    for j in range(n):
        face_id = f"c{j:06d}"
        if writer.has(face_id):
            continue
        rng = np.random.default_rng([seed, j])
        anchor, exclude = int(rng.integers(len(usable))), set()
        for _ in range(tries):
            donors = pick_donors(usable, vectors, anchor, k, exclude)
            if donors is None:
                break
            files = [usable["file"].iat[i] for i in donors]
            if frozenset(files) in seen:
                anchor, exclude = int(rng.integers(len(usable))), set()
                continue
            shapes = [np.asarray(usable["landmarks"].iat[i], np.float64).reshape(68, 2) for i in donors]
            images = [_read_rgb(folder / f) for f in files]
            if not colour:
                images = [np.repeat(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)[:, :, None], 3, 2) for im in images]
            crop, pts = composite(images, shapes)
            e = enc.embed(crop, sh.face_for(pts))
            per_donor = [np.linalg.norm(embs[name][donors] - v, axis=1) for name, v in zip(names, e)]
            dists = {name: float(d.min()) for name, d in zip(names, per_donor)}
            close = {int(i) for d, t in zip(per_donor, thresholds) for i in np.nonzero(d < t + margin)[0]}
            if close:
                rejected += 1
                log.info("composite %s rejected: donors %s within the same-person distance + %.2f (%s)",
                         face_id, sorted(close), margin, dists)
                if 0 in close:  # the anchor itself shows through: start from another face
                    anchor, exclude = int(rng.integers(len(usable))), set()
                else:  # swap the donors that show through for the next nearest people
                    exclude |= {usable["identity"].iat[donors[i]] for i in close}
                continue
            seen.add(frozenset(files))
            writer.add(face_id, face_id, crop, pts, sh.features(pts), donors=files, checks=dists)
            break
        else:
            log.warning("composite %s: no donor set passed in %d tries", face_id, tries)
    build = {"kind": "composite", "folder": str(folder), "n": n, "k": k, "seed": seed, "encoders": names,
             "thresholds": dict(zip(names, thresholds)), "tries": tries, "margin": margin,
             "colour": bool(colour),
             "detector": "dlib_hog", "landmarks": landmarks, "crop_size": sh.CROP_SIZE}
    summary = {"scanned": int(len(scan)), "with_face": int(scan["ok"].sum()), "usable_donors": int(len(usable)),
               "usable_identities": int(usable["identity"].nunique()), "rejected_this_run": rejected}
    return writer.finish(k, build, summary=summary)
