"""Fit the apparent-sex probe the face bank operator matches bank people by (anonymizer.bank.apparent_sex).

A logistic regression on dlib's 128-d face descriptor, which already separates men's and women's faces
linearly: no new network, and the descriptor is one the identity guard computes anyway. Labels:
training/data/lfw_apparent_sex.tsv, one LFW identity per row, labelled by looking at the photo (M or F, how
the face reads, not a fact about the person); `use` train for fitting (LFW's train split, children and
faces that read as neither left out) or heldout (LFW's evaluation split, never fitted on). One image per
identity, the first of its folder, its central face as YuNet finds it. Writes
anonymizer/weights/apparent_sex/apparent_sex.json, which is committed, with the held-out accuracy and the
five-fold accuracy on the train rows. Run again only when the labels or the recognizer change.

    python training/apparent_sex.py [--lfw ../shared/data/lfw/images]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = REPO / "training" / "data" / "lfw_apparent_sex.tsv"
OUT = REPO / "anonymizer" / "weights" / "apparent_sex" / "apparent_sex.json"
L2, STEPS, RATE = 1e-3, 5000, 0.5
UNDECIDED = 0.25  # a probability within this of 1/2 decides nothing (module doc of anonymizer.bank.apparent_sex)


def descriptors(lfw: Path, names: list[str]) -> np.ndarray:
    from anonymizer.detect import build_detector
    from anonymizer.eval.generation import _read_rgb, central_face
    from anonymizer.measure.encoder import ENCODERS

    detector, encoder = build_detector("yunet", {"scales": [1.0]}, None), ENCODERS.create("dlib_resnet")
    out = []
    for name in names:
        path = sorted((lfw / name).glob("*.jpg"))[0]
        rgb = _read_rgb(path)
        face = central_face(detector.detect(rgb), rgb.shape[:2])
        if face is None:
            raise SystemExit(f"{path}: YuNet finds no central face; drop the row from {LABELS.name}")
        out.append(encoder.embed(rgb, encoder.align(rgb, [face]))[0])
    return np.asarray(out, np.float64)


def fit(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, float]:
    """Weights and bias by gradient descent on the class-balanced logistic loss (LFW is three quarters men)."""
    w, b = np.zeros(x.shape[1]), 0.0
    weight = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))
    for _ in range(STEPS):
        g = (1 / (1 + np.exp(-(x @ w + b))) - y) * weight
        w -= RATE * (x.T @ g / len(y) + l2 * w)
        b -= RATE * float(g.mean())
    return w, b


def scores(p: np.ndarray, y: np.ndarray) -> dict:
    decided = np.abs(p - 0.5) > UNDECIDED
    right = (p > 0.5) == (y == 1)
    return {"faces": int(len(y)), "women": int(y.sum()), "accuracy": round(float(right.mean()), 4),
            "decided": round(float(decided.mean()), 4),
            "accuracy_decided": round(float(right[decided].mean()), 4) if decided.any() else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "data" / "lfw" / "images")
    args = ap.parse_args()
    rows = [line.split("\t") for line in LABELS.read_text().splitlines()[1:] if line]
    train = [(n, s) for n, s, use in rows if use == "train"]
    held = [(n, s) for n, s, use in rows if use == "heldout"]
    xt, yt = descriptors(args.lfw, [n for n, _ in train]), np.array([s == "F" for _, s in train], np.float64)
    xh, yh = descriptors(args.lfw, [n for n, _ in held]), np.array([s == "F" for _, s in held], np.float64)
    folds = np.array_split(np.random.default_rng(0).permutation(len(yt)), 5)
    cv = np.zeros(len(yt))
    for f in folds:
        w, b = fit(np.delete(xt, f, 0), np.delete(yt, f))
        cv[f] = 1 / (1 + np.exp(-(xt[f] @ w + b)))
    w, b = fit(xt, yt)
    card = {"what": "P(a face reads as a woman's) = sigmoid(weights . dlib_resnet descriptor + bias)",
            "recognizer": "dlib_resnet", "undecided": UNDECIDED,
            "labels": LABELS.name, "labels_sha256": hashlib.sha256(LABELS.read_bytes()).hexdigest(),
            "data_licence": "LFW (research data set); labels by looking at one photo per identity",
            "cross_validation": scores(cv, yt), "heldout": scores(1 / (1 + np.exp(-(xh @ w + b))), yh),
            "bias": round(b, 6), "weights": [round(float(v), 6) for v in w]}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: card[k] for k in ("cross_validation", "heldout")}, indent=1))


if __name__ == "__main__":
    main()
