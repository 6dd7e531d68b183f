"""Fit the skin-tone probe the face bank operator matches bank people by (anonymizer.bank.tone.SkinTone).

A ridge regression on dlib's 128-d face descriptor of a label read by looking at the face: 0 light, 1 medium
(olive, tan, light brown), 2 dark (brown, dark brown). The descriptor is made to stay put under a photo's
light, which moves a reading of the skin's pixels. Labels: training/data/lfw_skin_tone.tsv, the identities
and splits of lfw_apparent_sex.tsv (its `use`: train for fitting, heldout never fitted on), one reader,
from the greyscale LFW photos, so two steps only where the photo shows them apart. The ridge's strength is
chosen by five-fold cross-validation on the train rows. Writes anonymizer/weights/skin_tone/skin_tone.json,
which is committed, with the held-out and cross-validated AUCs. Run again only when the labels or the
recognizer change.

    python training/skin_tone.py [--lfw ../shared/data/lfw/images]
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

from training.apparent_sex import descriptors  # noqa: E402

LABELS = REPO / "training" / "data" / "lfw_skin_tone.tsv"
OUT = REPO / "anonymizer" / "weights" / "skin_tone" / "skin_tone.json"
STEPS = {"light": 0.0, "medium": 1.0, "dark": 2.0}
STRENGTHS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def fit(x: np.ndarray, y: np.ndarray, strength: float) -> tuple[np.ndarray, float]:
    """Weights and bias of the ridge regression (the bias not shrunk)."""
    xa = np.c_[x, np.ones(len(x))]
    penalty = strength * np.eye(xa.shape[1])
    penalty[-1, -1] = 0.0
    w = np.linalg.solve(xa.T @ xa + penalty, xa.T @ y)
    return w[:-1], float(w[-1])


def auc(score: np.ndarray, y: np.ndarray, darker: float) -> float | None:
    """How often a face labelled at least `darker` scores higher than a light one."""
    hi, lo = score[y >= darker], score[y == 0]
    if not len(hi) or not len(lo):
        return None
    return round(float(((hi[:, None] > lo[None]) + 0.5 * (hi[:, None] == lo[None])).mean()), 4)


def scores(s: np.ndarray, y: np.ndarray) -> dict:
    return {"faces": int(len(y)), "medium": int((y == 1).sum()), "dark": int((y == 2).sum()),
            "auc_dark_vs_light": auc(s, y, 2), "auc_medium_or_dark_vs_light": auc(s, y, 1),
            "rmse": round(float(np.sqrt(np.mean((s - y) ** 2))), 4)}


def cross_validated(x: np.ndarray, y: np.ndarray, strength: float) -> np.ndarray:
    out = np.zeros(len(y))
    for f in np.array_split(np.random.default_rng(0).permutation(len(y)), 5):
        w, b = fit(np.delete(x, f, 0), np.delete(y, f), strength)
        out[f] = x[f] @ w + b
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "data" / "lfw" / "images")
    args = ap.parse_args()
    rows = [line.split("\t") for line in LABELS.read_text().splitlines()[1:] if line]
    train = [(n, STEPS[t]) for n, t, use in rows if use == "train"]
    held = [(n, STEPS[t]) for n, t, use in rows if use == "heldout"]
    xt, yt = descriptors(args.lfw, [n for n, _ in train]), np.array([t for _, t in train])
    xh, yh = descriptors(args.lfw, [n for n, _ in held]), np.array([t for _, t in held])
    rmse = {s: float(np.sqrt(np.mean((cross_validated(xt, yt, s) - yt) ** 2))) for s in STRENGTHS}
    strength = min(rmse, key=rmse.get)
    w, b = fit(xt, yt, strength)
    card = {"what": "darkness of the skin (0 light, 1 medium, 2 dark) = weights . dlib_resnet descriptor + bias",
            "recognizer": "dlib_resnet", "strength": strength,
            "labels": LABELS.name, "labels_sha256": hashlib.sha256(LABELS.read_bytes()).hexdigest(),
            "data_licence": "LFW (research data set); labels by looking at one greyscale photo per identity",
            "cross_validation": scores(cross_validated(xt, yt, strength), yt), "heldout": scores(xh @ w + b, yh),
            "bias": round(b, 6), "weights": [round(float(v), 6) for v in w]}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: card[k] for k in ("strength", "cross_validation", "heldout")}, indent=1))


if __name__ == "__main__":
    main()
