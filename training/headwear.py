"""Fit the headwear probe a StyleGAN bank build leaves people out by (anonymizer.bank.headwear).

A logistic regression on a virtual person's w (MobileStyleGAN's 512-d style vector, truncated as the build truncates
it), in which what a person wears on their head is close to linear (InterFaceGAN, Shen et al. 2020): no render is
needed to read it, so a build reads every candidate for the cost of its mapping. Labels:
training/data/stylegan_headwear.tsv, one virtual person of seed 0 per row. `headwear`, by looking at their view-0
render: 1 where a hat, cap, scarf, wrap, hood or band covers the top of the head, 0 where hair (or a bald head)
shows, ? (left out) for a thin hair band. `views`, where all nine views of a default bank build were looked at: 1
where any of them shows headwear, a band or a patch on the hair (a pose edit can bring out what view 0 lacks), ?
unsure. `use`: train for fitting, heldout (never fitted on), or audit (people of a default bank looked at after the
fit, never fitted on). The probe misses some of these, so the card also lists everyone labelled 1 in either column,
and a seed-0 build leaves them out whatever the probe reads (anonymizer.bank.headwear.Headwear.labelled). People
numbered from the build's `candidates` on were moved to a skin-tone band's centre
(anonymizer.bank.stylegan.around_short_bands): their w needs that bank's candidate readings, hence `--bank`. The
threshold keeps RECALL of the train rows' headwear in five-fold cross-validation. Writes
anonymizer/weights/headwear/headwear.json, which is committed, with the cross-validated and held-out rates. Run
again only when the labels or the generator change.

    python training/headwear.py [--bank ~/.cache/anonymizer/models/banks/faces]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.apparent_sex import fit  # noqa: E402

LABELS = REPO / "training" / "data" / "stylegan_headwear.tsv"
OUT = REPO / "anonymizer" / "weights" / "headwear" / "headwear.json"
L2 = 0.1  # the logistic fit's penalty, chosen by cross-validation among 1e-3 … 1 (AUC 0.96 at 0.01 and 0.1)
RECALL = 0.9


def person_ws(people: list[int], bank: Path) -> tuple[np.ndarray, int]:
    """Each person's w as the bank at `bank` (seed 0) built it, moved where the build moved them, and the first
    person the build moved."""
    from anonymizer.bank import stylegan as sg

    build = json.loads((bank / "manifest.json").read_text())["build"]
    if build.get("kind") != "stylegan" or build["seed"] != 0 or build["truncation"] != 0.7:
        raise SystemExit(f"{bank}: not a seed-0 StyleGAN bank at truncation 0.7, which the labels are of")
    renderer = sg.Renderer(None, 0.7, backend="openvino")
    first = build["candidates"]
    cand = pd.read_parquet(bank / sg.CANDIDATES)
    tones = {int(p): float(t) for p, t, e in zip(cand["person"], cand["darkness"], cand["eye_white"])
             if p < first and np.isfinite(e)}

    def w(p: int) -> np.ndarray:
        return renderer.w(sg.person_z(0, p))

    around = sg.around_short_bands(tones, build["n"], w, renderer.w_avg, first, build["centre_min"])
    return np.stack([w(p) + around[p][1] if p in around else w(p) for p in people]).astype(np.float64), first


def rates(score: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    covered = score >= threshold
    return {"people": int(len(y)), "headwear": int(y.sum()),
            "headwear_found": round(float(covered[y == 1].mean()), 4),
            "others_left_out": round(float(covered[y == 0].mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", type=Path, default=Path.home() / ".cache" / "anonymizer" / "models" / "banks" / "faces")
    args = ap.parse_args()
    everyone = pd.read_csv(LABELS, sep="\t", dtype=str, keep_default_na=False)
    worn = (everyone["headwear"] == "1") | (everyone["views"] == "1")
    seen = sorted(everyone["person"][worn].astype(int))
    rows = everyone[(everyone["headwear"] != "?") & everyone["use"].isin(["train", "heldout"])]
    ws, first = person_ws(rows["person"].astype(int).tolist(), args.bank)
    y = (rows["headwear"] == "1").to_numpy(np.float64)
    train = (rows["use"] == "train").to_numpy()
    mu, sd = ws[train].mean(0), ws[train].std(0) + 1e-6
    x = (ws - mu) / sd
    xt, yt = x[train], y[train]
    cv = np.zeros(len(yt))
    for f in np.array_split(np.random.default_rng(0).permutation(len(yt)), 5):
        w, b = fit(np.delete(xt, f, 0), np.delete(yt, f), L2)
        cv[f] = xt[f] @ w + b
    threshold = float(np.quantile(cv[yt == 1], 1 - RECALL))
    w, b = fit(xt, yt, L2)
    from anonymizer.bank.stylegan import FILES

    card = {"what": "a person wears headwear where weights . w + bias >= threshold (w: MobileStyleGAN's truncated "
                    "style vector)",
            "mapping_network_sha256": FILES["MappingNetwork.bin"], "truncation": 0.7,
            "labels": LABELS.name, "labels_sha256": hashlib.sha256(LABELS.read_bytes()).hexdigest(),
            "data_licence": "renders of MobileStyleGAN (non-commercial); labels by looking at each person's renders",
            "cross_validation": rates(cv, yt, threshold), "heldout": rates(x[~train] @ w + b, y[~train], threshold),
            "threshold": round(threshold, 6), "bias": round(float(b - (w / sd) @ mu), 6),
            "weights": [round(float(v), 6) for v in w / sd],
            "labelled": {"seed": 0, "below": first, "headwear": [p for p in seen if p < first]}}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: card[k] for k in ("cross_validation", "heldout")}, indent=1))


if __name__ == "__main__":
    main()
