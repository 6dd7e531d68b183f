"""Side by side, the photos' faces that read darkest (anonymizer.bank.tone: the descriptor probe, or ITA° with
`--order ita`) and what the `bank` operator puts there, for each bank, `tone_pool` and `tone_reading` given
(the operator otherwise as the `realistic` profile sets it): the check that numbers cannot make, whether
dark-skinned people get dark-skinned bank people. Writes the grid (kept out of the repository: the photos'
licence) and a JSON of each face's readings (skin tone, the sex the operator's probe reads) and method.

    python bench/skin_tone_grid.py --variant ita=BANK:36:ita --variant descriptor=BANK:36:descriptor
                                   [--faces 16] [--min-size 60] [--order descriptor] [--out out/skin_tone]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=BANK:TONE_POOL[:TONE_READING] (repeatable; the reading defaults to realistic's)")
    ap.add_argument("--photos", default=str(SHARED / "data" / "photos"))
    ap.add_argument("--faces", type=int, default=16, help="the darkest-reading faces shown")
    ap.add_argument("--min-size", type=float, default=60.0, help="faces smaller than this (px) are left out")
    ap.add_argument("--order", choices=["descriptor", "ita"], default="descriptor",
                    help="which reading sorts the faces")
    ap.add_argument("--out", default="out/skin_tone")
    args = ap.parse_args()

    from anonymizer.anonymize import face_rngs
    from anonymizer.bank import tone
    from anonymizer.bank.apparent_sex import ApparentSex
    from anonymizer.components import build_operator
    from anonymizer.detect import build_detector
    from anonymizer.imageio import decode
    from anonymizer.policy import load_policy

    realistic = load_policy(profile="realistic")

    variants = {}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        parts = rest.split(":")
        reading = {} if parts[-1].isdigit() else {"tone_reading": parts.pop()}
        pool = int(parts.pop())
        variants[name] = build_operator(realistic, bank=":".join(parts), tone_pool=pool, **reading)
    detector = build_detector("yunet", {"scales": [1.0], "score_threshold": 0.6})
    landmarker = next(iter(variants.values())).landmarker
    probe, sex = tone.SkinTone(), ApparentSex()
    rows = []
    for path in sorted(Path(args.photos).glob("*.jpg")):
        img = decode(path.read_bytes(), 100_000_000).rgb
        faces = detector.detect(img)
        key = f"photos/{path.name}"
        outs = {name: op.anonymize(img, faces, face_rngs(0, key, len(faces))) for name, op in variants.items()}
        for i, f in enumerate(faces):
            if f.size < args.min_size:
                continue
            reading = tone.ita(img, landmarker(img, f))
            if reading is None:
                continue
            descriptor = probe.describe(img, f)
            darkness = probe.darkness(descriptor)
            x0, y0 = int(max(0, f.x - 0.4 * f.w)), int(max(0, f.y - 0.5 * f.h))
            x1, y1 = int(min(img.shape[1], f.x + 1.4 * f.w)), int(min(img.shape[0], f.y + 1.3 * f.h))
            tiles = [cv2.resize(im[y0:y1, x0:x1], (128, 128)) for im in (img, *(o.image for o in outs.values()))]
            rows.append({"key": key, "face": i, "size": round(float(f.size), 1), "ita": round(reading, 1),
                         "band": tone.band(reading), "darkness": round(darkness, 2),
                         "reads_as": sex.decide(sex.probability(descriptor)) or "neither",
                         "methods": {name: o.methods[i] for name, o in outs.items()},
                         "_tiles": np.hstack(tiles)})
    rows.sort(key=lambda r: -r["darkness"] if args.order == "descriptor" else r["ita"])
    shown = rows[:args.faces]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    strips = []
    for r in shown:
        strip = r.pop("_tiles").copy()
        cv2.putText(strip, f"{r['ita']:.0f} {r['darkness']:.1f}", (3, 122), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 255, 0), 1)
        strips.append(strip)
    if len(strips) % 2:
        strips.append(np.zeros_like(strips[0]))
    grid = np.vstack([np.hstack(strips[j:j + 2]) for j in range(0, len(strips), 2)])
    cv2.imwrite(str(out / "skin_tone_grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    for r in rows[args.faces:]:
        r.pop("_tiles")
    (out / "skin_tone_grid.json").write_text(json.dumps({"columns": ["original", *variants], "faces": rows},
                                                        indent=1))
    print(f"{len(rows)} faces of {args.min_size:.0f} px and more; the {len(shown)} darkest-reading, left to right: "
          f"original, {', '.join(variants)}")
    for r in shown:
        print(f"  ITA {r['ita']:6.1f} ({r['band']}), darkness {r['darkness']:.2f}, sex {r['reads_as']}, {r['key']} "
              f"face {r['face']}: "
              + ", ".join(f"{n} {r['methods'][n]}" for n in variants))
    print(f"wrote {out / 'skin_tone_grid.png'} and {out / 'skin_tone_grid.json'}")


if __name__ == "__main__":
    main()
