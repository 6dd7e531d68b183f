"""Holes in a face bank's head mattes: bank faces whose matte leaves out more than MISSING of the band above the
brows (between the eyes' outer corners, up to half the brow-to-chin height). That band is hair or scalp on
every head; where the matte leaves it out, the bank operator shows the photo's surroundings there, a hole in
the head (white against a white wall). Each bank given is read as built (its manifest's `matte` method);
`--remake METHOD` also makes each face's matte by METHOD (anonymizer.bank.matte.HeadMatter) and counts those.
Prints a table, writes JSON.

    python bench/bank_mattes.py [--bank faces ...] [--remake grabcut] [--out bench/results/bank_mattes.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MISSING = 0.05
FRONTAL = 10.0


def top_cover(matte: np.ndarray, pts: np.ndarray) -> float:
    brows, chin = pts[17:27, 1].min(), pts[8, 1]
    band = matte[max(0, int(brows - 0.5 * (chin - brows))):int(brows), int(pts[36, 0]):int(pts[45, 0])]
    return float(band.mean()) if band.size else 1.0


def holes(bank, mattes) -> dict:
    """Over every bank face, and over the frontal ones (|yaw| ≤ FRONTAL°): on a turned head the band reaches past
    the head's edge on one side, so there it counts some whole heads too."""
    cover = np.array([top_cover(m, bank.landmarks(i)) for i, m in enumerate(mattes)])
    bad = cover < 1.0 - MISSING
    frontal = np.abs(bank.index["yaw"].to_numpy()) <= FRONTAL
    people = bank.index["identity"].to_numpy()
    return {"faces": int(len(cover)), "faces_with_hole": int(bad.sum()), "people": int(len(set(people))),
            "people_with_hole": int(len(set(people[bad]))), "median_cover": round(float(np.median(cover)), 3),
            "frontal_faces": int(frontal.sum()), "frontal_faces_with_hole": int((bad & frontal).sum())}


def main() -> None:
    from anonymizer.bank.matte import HeadMatter
    from anonymizer.bank.store import load_bank, locate_bank

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", nargs="+", default=["faces"], help="bank names or directories")
    ap.add_argument("--remake", help="also count the mattes this method makes (grabcut, selfie_segmentation)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bank_mattes.json")
    args = ap.parse_args()
    rows = []
    for name in args.bank:
        bank = load_bank(locate_bank(name))
        stored = bank.manifest.get("matte", "grabcut")
        rows.append({"bank": str(bank.root), "matte": f"{stored} (stored)",
                     **holes(bank, [bank.matte(i) for i in range(len(bank))])})
        if args.remake:
            matter = HeadMatter(args.remake)
            rows.append({"bank": str(bank.root), "matte": matter.method,
                         **holes(bank, [matter(bank.crop(i), bank.landmarks(i)) for i in range(len(bank))])})
    print("| bank | matte | faces with a hole above the brows | frontal ones | people | median cover of the band |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bank']} | {r['matte']} | {r['faces_with_hole']} of {r['faces']} | {r['frontal_faces_with_hole']} "
              f"of {r['frontal_faces']} | {r['people_with_hole']} of {r['people']} | {r['median_cover']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"missing": MISSING, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
