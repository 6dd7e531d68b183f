"""Apparent ages in a StyleGAN face bank, and whether people rendered around the latent centre of a short age
group read in that group (as the build renders people around the centre of a short skin-tone band).

Each bank person's age is the median of anonymizer.measure.apparent_age over their views. For the bank's people
aged 60 and over, and under 13 (those of the first `candidates`, whose w is their truncated z's alone), the
centre is their mean w; `--renders` new people (z from seed 1) are rendered with their truncated w moved by
(centre - mean w), and the same z without the move, and each render's face read. Runs without Ray or Prefect.

    python bench/bank_ages.py --bank BANK [--renders 10] [--out bench/results/bank_ages.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def read_age(reader, crop: np.ndarray, pts: np.ndarray) -> float:
    from anonymizer.faces import Face

    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return float(reader.read(crop, [Face(float(x0), float(y0), float(x1 - x0), float(y1 - y0), 1.0, "bank")])[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bank", required=True)
    ap.add_argument("--renders", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "bank_ages.json"))
    args = ap.parse_args()

    from anonymizer.bank import load_bank
    from anonymizer.bank.stylegan import FaceReader, Renderer, person_z
    from anonymizer.measure.apparent_age import AGE_GROUP_NAMES, AgeReader, age_group

    bank, ages = load_bank(args.bank), AgeReader()
    build = bank.manifest.get("build", {})
    if build.get("kind") != "stylegan":
        raise SystemExit(f"{args.bank}: not a StyleGAN bank")
    seed, first = int(build["seed"]), int(build.get("candidates") or build["n"])
    per_face = [read_age(ages, bank.crop(i), np.asarray(bank.landmarks(i)).reshape(-1, 2)) for i in range(len(bank))]
    people = pd.Series(per_face).groupby(bank.index["identity"].to_numpy()).median()
    groups = {name: int((people.map(age_group) == g).sum()) for g, name in enumerate(AGE_GROUP_NAMES)}
    renderer, faces = Renderer(threads=args.threads, backend="openvino"), FaceReader()

    def rendered_age(w: np.ndarray) -> float | None:
        found = faces(renderer.render(w)[0])
        return None if found is None else round(read_age(ages, *found), 1)

    around = {}
    for name in ("60 and over", "under 13"):
        g = AGE_GROUP_NAMES.index(name)
        plain = [int(s[1:]) for s, a in people.items() if age_group(a) == g and int(s[1:]) < first]
        if not plain:
            continue
        move = np.mean([renderer.w(person_z(seed, p)) for p in plain], 0) - renderer.w_avg
        zs = [person_z(seed + 1, k) for k in range(args.renders)]
        moved = [rendered_age(renderer.w(z) + move) for z in zs]
        unmoved = [rendered_age(renderer.w(z)) for z in zs]
        around[name] = {"centre_of": len(plain), "moved": moved, "unmoved": unmoved,
                        "moved_in_group": sum(a is not None and age_group(a) == g for a in moved),
                        "unmoved_in_group": sum(a is not None and age_group(a) == g for a in unmoved)}
        print(f"{name}: centre of {len(plain)} bank people; {around[name]['moved_in_group']} of {args.renders} "
              f"rendered around it read {name} ({around[name]['unmoved_in_group']} without the move)")
    result = {"bank": str(args.bank), "people": len(people), "people_by_age_group": groups,
              "median_age": round(float(people.median()), 1), "around_centres": around}
    print(f"{len(people)} people by apparent age group: {groups}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
